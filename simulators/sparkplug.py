"""Sparkplug B payloads written by hand in protobuf's wire format (varints, length-delimited
fields, fixed32/fixed64), so the collector's decoder, built on the protobuf package, is checked
against an encoder that shares nothing with it.

The fields used, from Eclipse Tahu's sparkplug_b.proto:
  Payload { uint64 timestamp = 1; repeated Metric metrics = 2; uint64 seq = 3; string uuid = 4 }
  Metric  { string name = 1; uint64 alias = 2; uint64 timestamp = 3; uint32 datatype = 4;
            oneof value { uint32 int_value = 10; uint64 long_value = 11; float float_value = 12;
                          double double_value = 13; bool boolean_value = 14;
                          string string_value = 15 } }
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "DATATYPES",
    "Metric",
    "encode_metric",
    "encode_payload",
    "field_bytes",
    "field_fixed32",
    "field_fixed64",
    "field_varint",
    "varint",
]

# Sparkplug B data type codes (specification 3.0, section 6.4.16) of the types the boards use.
DATATYPES = {"Int32": 3, "Int64": 4, "UInt32": 7, "UInt64": 8, "Float": 9, "Double": 10,
             "Boolean": 11, "String": 12}  # fmt: skip

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
    """Base-128 little-endian groups, high bit set on all but the last; a negative number is
    taken modulo 2**64 (ten bytes), as protobuf writes a negative int64."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def field_varint(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return _key(number, _LENGTH) + varint(len(value)) + value


def field_fixed32(number: int, value: float) -> bytes:
    return _key(number, _FIXED32) + struct.pack("<f", value)


def field_fixed64(number: int, value: float) -> bytes:
    return _key(number, _FIXED64) + struct.pack("<d", value)


@dataclass(frozen=True)
class Metric:
    """One metric; `name` goes in births (and deaths), `alias` alone in data messages."""

    datatype: str  # a key of DATATYPES
    value: float | int | bool | str | bytes | None
    name: str | bytes | None = None  # bytes: sent as is (malformed tests use invalid UTF-8)
    alias: int | None = None
    timestamp: int | None = None  # ms since the UNIX epoch, UTC


def encode_metric(metric: Metric) -> bytes:
    out = b""
    if metric.name is not None:
        name = metric.name if isinstance(metric.name, bytes) else metric.name.encode()
        out += field_bytes(1, name)
    if metric.alias is not None:
        out += field_varint(2, metric.alias)
    if metric.timestamp is not None:
        out += field_varint(3, metric.timestamp)
    out += field_varint(4, DATATYPES[metric.datatype])
    value, kind = metric.value, metric.datatype
    if value is None:
        out += field_varint(7, 1)  # is_null
    elif kind in ("Int32", "UInt32"):
        # int_value is a uint32: a negative Int32 travels as its two's complement.
        out += field_varint(10, int(value) & 0xFFFFFFFF)
    elif kind in ("Int64", "UInt64"):
        out += field_varint(11, int(value))
    elif kind == "Float":
        out += field_fixed32(12, float(value))
    elif kind == "Double":
        out += field_fixed64(13, float(value))
    elif kind == "Boolean":
        out += field_varint(14, 1 if value else 0)
    elif kind == "String":
        out += field_bytes(15, value if isinstance(value, bytes) else str(value).encode())
    else:
        raise ValueError(f"no encoding for Sparkplug datatype {kind!r}")
    return out


def encode_payload(
    metrics: list[Metric], *, timestamp: int | None = None, seq: int | None = None
) -> bytes:
    """A Sparkplug B Payload message: timestamp (1), metrics (2), seq (3), in field order."""
    out = b"" if timestamp is None else field_varint(1, timestamp)
    for metric in metrics:
        out += field_bytes(2, encode_metric(metric))
    if seq is not None:
        out += field_varint(3, seq)
    return out
