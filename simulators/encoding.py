"""Turn engineering values into the 16-bit registers an old PLC would hold.

Written independently of the collector's decoder on purpose: the two must agree only through the
Modbus wire, so a mistake in one shows up as a failing test instead of hiding in shared code.
"""

from __future__ import annotations

import struct
from typing import Literal

__all__ = ["ORDERS", "TYPES", "ByteOrder", "ValueType", "encode", "register_count"]

ValueType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
TYPES: tuple[ValueType, ...] = (
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
)  # fmt: skip
ORDERS: tuple[ByteOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")

_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4}
_FLOAT_FORMAT = {"float32": (">f", 2), "float64": (">d", 4)}


def register_count(value_type: ValueType, string_registers: int = 0) -> int:
    """How many registers a value of this type occupies (a register bit counts as one)."""
    if value_type == "string":
        return string_registers
    if value_type == "bool":
        return 1
    return _WIDTH.get(value_type) or _FLOAT_FORMAT[value_type][1]


def encode(
    value: float | int | str | bool,
    value_type: ValueType,
    order: ByteOrder = "ABCD",
    string_registers: int = 0,
) -> list[int]:
    """Registers for `value`, most significant first before `order` is applied.

    Integers wrap modulo 2**bits like a PLC counter does (a uint16 at 65536 reads 0); strings are
    ASCII, two characters per register, first character in the high byte, padded with NUL.
    """
    if value_type == "string":
        raw = str(value).encode("ascii")[: 2 * string_registers].ljust(2 * string_registers, b"\0")
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if value_type == "bool":
        return [1 if value else 0]
    if value_type in _FLOAT_FORMAT:
        fmt, _ = _FLOAT_FORMAT[value_type]
        data = struct.pack(fmt, float(value))
    else:
        width = _WIDTH[value_type]
        number = value if isinstance(value, int) else round(float(value))
        data = (int(number) % (1 << (16 * width))).to_bytes(2 * width, "big")
    registers = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return _apply_order(registers, order)


def _apply_order(registers: list[int], order: ByteOrder) -> list[int]:
    # CDAB/DCBA reverse the words, BADC/DCBA swap the bytes inside each word: DCBA is both.
    if order in ("CDAB", "DCBA"):
        registers = registers[::-1]
    if order in ("BADC", "DCBA"):
        registers = [((r & 0xFF) << 8) | (r >> 8) for r in registers]
    return registers
