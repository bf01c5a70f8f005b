"""Turn raw Modbus registers and bits into signal values, as the config describes them.

Each signal's decoder is compiled once (struct formats, orders, scale) so polling does no per-value
work beyond unpacking: a plant of hundreds of devices decodes every second.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from collector.config import Signal
from collector.schema import FieldValue

__all__ = [
    "DecodeError",
    "Decoder",
    "compile_decoder",
    "decode_signal",
    "is_register_as_is",
    "registers_to_bytes",
]

# (the whole answer of a read, where the signal starts in it) → value: no slice per value.
Decoder = Callable[[Sequence[int], int], FieldValue]

_INT64_MAX = 2**63 - 1

_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


class DecodeError(ValueError):
    """A value that cannot be stored, such as a NaN float from a sensor with no probe."""


def registers_to_bytes(registers: Sequence[int], byte_order: str, word_order: str) -> bytes:
    """Bytes most significant first, undoing the device's word and byte order."""
    words = list(registers) if word_order == "big" else list(reversed(registers))
    return struct.pack(f"{'>' if byte_order == 'big' else '<'}{len(words)}H", *words)


def is_register_as_is(signal: Signal) -> bool:
    """A signal whose value is its one register unchanged: uint16, bytes in wire order, stored
    as an integer (no scale or offset)."""
    return (
        signal.type == "uint16"
        and signal.wire_table in ("holding", "input")
        and signal.orders[0] == "big"
        and signal.field_kind == "int"
    )


def compile_decoder(signal: Signal) -> Decoder:
    """A function from a read's answer and the signal's index in it to the signal's value."""
    if signal.type == "bool":
        if signal.wire_table in ("coil", "discrete"):
            return lambda data, at: bool(data[at])
        assert signal.bit is not None
        mask = 1 << signal.bit
        return lambda data, at: bool(data[at] & mask)
    byte_order, word_order = signal.orders
    count = signal.register_count
    if signal.type == "string":
        # Strings keep their characters in register order; only bytes within a register swap.
        return lambda data, at: (
            registers_to_bytes(data[at : at + count], byte_order, "big")
            .split(b"\x00", 1)[0]
            .decode("latin-1")
            .rstrip(" ")
        )
    raw = _raw_decoder(signal.type, signal.register_count, byte_order, word_order)
    if signal.field_kind == "int":
        if signal.type != "uint64":
            return raw
        name = signal.name

        def int64(data: Sequence[int], at: int) -> FieldValue:
            # InfluxDB integers are signed 64-bit; meters answer 0xFFFF… for "not available".
            value = int(raw(data, at))
            if value > _INT64_MAX:
                raise DecodeError(f"{name}: {value} does not fit InfluxDB's 64-bit integers")
            return value

        return int64
    scale, offset, name = signal.scale, signal.offset, signal.name

    def scaled(data: Sequence[int], at: int) -> FieldValue:
        result = raw(data, at) * scale + offset
        if not math.isfinite(result):
            raise DecodeError(f"{name}: {result} cannot be stored")
        return float(result)

    return scaled


def _raw_decoder(
    kind: str, count: int, byte_order: str, word_order: str
) -> Callable[[Sequence[int], int], int | float]:
    if kind == "uint16" and byte_order == "big":
        return lambda data, at: data[at]
    if kind == "int16" and byte_order == "big":
        return lambda data, at: data[at] - 0x10000 if data[at] & 0x8000 else data[at]
    # Packing the registers little-endian swaps the two bytes of each: that is the byte order.
    words = struct.Struct(f"{'>' if byte_order == 'big' else '<'}{count}H")
    value = struct.Struct(">" + _STRUCT[kind])
    if word_order == "little":
        return lambda data, at: value.unpack(words.pack(*reversed(data[at : at + count])))[0]
    return lambda data, at: value.unpack(words.pack(*data[at : at + count]))[0]


def decode_signal(
    signal: Signal, registers: Sequence[int] = (), bits: Sequence[bool] = ()
) -> FieldValue:
    """Decode one signal from exactly its registers (or its one bit for coils/discretes)."""
    data: Sequence[int] = bits if signal.wire_table in ("coil", "discrete") else registers
    return compile_decoder(signal)(data, 0)
