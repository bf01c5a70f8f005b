"""Turn raw Modbus registers and bits into signal values, as the config describes them."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from collector.config import Signal
from collector.schema import FieldValue

__all__ = ["DecodeError", "decode_signal", "registers_to_bytes"]

_STRUCT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}


class DecodeError(ValueError):
    """A value that cannot be stored, such as a NaN float from a sensor with no probe."""


def registers_to_bytes(registers: Sequence[int], byte_order: str, word_order: str) -> bytes:
    """Bytes most significant first, undoing the device's word and byte order."""
    words = list(registers) if word_order == "big" else list(reversed(registers))
    if byte_order == "big":
        return b"".join(w.to_bytes(2, "big") for w in words)
    return b"".join(w.to_bytes(2, "little") for w in words)


def decode_signal(
    signal: Signal, registers: Sequence[int] = (), bits: Sequence[bool] = ()
) -> FieldValue:
    """Decode one signal from exactly its registers (or its one bit for coils/discretes)."""
    if signal.type == "bool":
        if signal.wire_table in ("coil", "discrete"):
            return bool(bits[0])
        assert signal.bit is not None
        return bool((registers[0] >> signal.bit) & 1)
    byte_order, word_order = signal.orders
    if signal.type == "string":
        # Strings keep their characters in register order; only bytes within a register swap.
        raw = registers_to_bytes(registers, byte_order, "big")
        return raw.split(b"\x00", 1)[0].decode("latin-1").rstrip(" ")
    (value,) = struct.unpack(
        _STRUCT[signal.type], registers_to_bytes(registers, byte_order, word_order)
    )
    if signal.field_kind == "int":
        return int(value)
    result = float(value) * signal.scale + signal.offset
    if not math.isfinite(result):
        raise DecodeError(f"{signal.name}: {result} cannot be stored")
    return result
