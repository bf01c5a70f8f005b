"""Decoding against vectors worked out by hand from the IEEE 754 and two's-complement layouts."""

from __future__ import annotations

import math

import pytest

from collector.config import Signal
from collector.decode import DecodeError, decode_signal


def signal(**fields: object) -> Signal:
    base: dict[str, object] = {"name": "s", "table": "holding", "address": 0}
    return Signal.model_validate(base | fields)


# (type, order, registers as the device sends them, expected value)
VECTORS = [
    ("int16", "ABCD", [0xFF38], -200),
    ("int16", "BADC", [0x38FF], -200),
    ("uint16", "ABCD", [0xFF38], 65336),
    ("uint16", "BADC", [0x38FF], 65336),
    ("int16", "CDAB", [0xFF38], -200),  # one register: the word order changes nothing
    ("int16", "DCBA", [0x38FF], -200),
    ("uint16", "CDAB", [0xFF38], 65336),
    ("uint16", "DCBA", [0x38FF], 65336),
    ("int32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("int32", "CDAB", [0xFFFE, 0xFFFF], -2),
    ("int32", "BADC", [0xFFFF, 0xFEFF], -2),
    ("int32", "DCBA", [0xFEFF, 0xFFFF], -2),
    ("int32", "CDAB", [0x5678, 0x1234], 0x12345678),
    ("uint32", "ABCD", [0x1234, 0x5678], 0x12345678),
    ("uint32", "CDAB", [0x5678, 0x1234], 0x12345678),
    ("uint32", "BADC", [0x3412, 0x7856], 0x12345678),
    ("uint32", "DCBA", [0x7856, 0x3412], 0x12345678),
    ("float32", "ABCD", [0x42F6, 0xE979], 123.456),
    ("float32", "CDAB", [0xE979, 0x42F6], 123.456),
    ("float32", "BADC", [0xF642, 0x79E9], 123.456),
    ("float32", "DCBA", [0x79E9, 0xF642], 123.456),
    ("float32", "ABCD", [0xC020, 0x0000], -2.5),
    ("int64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    ("int64", "CDAB", [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    ("int64", "BADC", [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], -2),
    ("int64", "DCBA", [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    ("int64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    ("uint64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    ("uint64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    ("uint64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    ("uint64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    ("float64", "ABCD", [0x3FF0, 0, 0, 0], 1.0),
    ("float64", "ABCD", [0xBFB9, 0x9999, 0x9999, 0x999A], -0.1),
    ("float64", "CDAB", [0x999A, 0x9999, 0x9999, 0xBFB9], -0.1),
    ("float64", "BADC", [0xB9BF, 0x9999, 0x9999, 0x9A99], -0.1),
    ("float64", "DCBA", [0x9A99, 0x9999, 0x9999, 0xB9BF], -0.1),
]


@pytest.mark.parametrize(("kind", "order", "registers", "expected"), VECTORS)
def test_numbers_in_every_order(
    kind: str, order: str, registers: list[int], expected: float
) -> None:
    value = decode_signal(signal(type=kind, order=order), registers=registers)
    if kind.startswith("float"):
        assert isinstance(value, float)
        assert value == pytest.approx(expected, rel=1e-7)
    else:
        assert value == expected
        assert isinstance(value, int)


def test_byte_and_word_order_fields_equal_the_shorthand() -> None:
    long_form = signal(type="uint32", byte_order="little", word_order="little")
    assert decode_signal(long_form, registers=[0x7856, 0x3412]) == 0x12345678


def test_scale_and_offset_make_a_float() -> None:
    temperature = signal(type="int16", scale=0.1, offset=-40)
    value = decode_signal(temperature, registers=[0x0384])  # 900
    assert value == pytest.approx(50.0)
    assert temperature.field_kind == "float"


def test_string_high_byte_first_and_padding_removed() -> None:
    serial = signal(type="string", count=5)
    registers = [0x4C41, 0x5448, 0x452D, 0x3031, 0x0000]  # "LATHE-01" and a NUL register
    assert decode_signal(serial, registers=registers) == "LATHE-01"
    swapped = signal(type="string", count=4, order="BADC")
    assert decode_signal(swapped, registers=[0x414C, 0x4854, 0x2D45, 0x3130]) == "LATHE-01"


def test_bits_from_a_register_and_from_a_coil() -> None:
    status = [0b0000_0000_0010_0100]
    assert decode_signal(signal(type="bool", bit=2), registers=status) is True
    assert decode_signal(signal(type="bool", bit=3), registers=status) is False
    assert decode_signal(signal(type="bool", bit=15), registers=[0x8000]) is True
    coil = Signal.model_validate({"name": "run", "table": "coil", "address": 7, "type": "bool"})
    assert decode_signal(coil, bits=[True]) is True


def test_nan_is_refused_not_stored() -> None:
    with pytest.raises(DecodeError, match="cannot be stored"):
        decode_signal(signal(type="float32"), registers=[0x7FC0, 0x0000])
    inf = decode_signal(signal(type="float32"), registers=[0x7F7F, 0xFFFF])
    assert math.isfinite(float(inf))  # the largest finite float32 is still a value


def test_a_uint64_beyond_influxdbs_integers_is_refused_not_the_whole_reading() -> None:
    with pytest.raises(DecodeError, match="does not fit InfluxDB's 64-bit integers"):
        decode_signal(signal(type="uint64"), registers=[0xFFFF] * 4)
    assert decode_signal(signal(type="uint64"), registers=[0x7FFF] + [0xFFFF] * 3) == 2**63 - 1
