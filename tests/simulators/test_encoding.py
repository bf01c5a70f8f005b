"""Register encodings checked against vectors worked out by hand."""

from __future__ import annotations

import pytest

from simulators.encoding import encode


@pytest.mark.parametrize(
    ("value", "value_type", "order", "registers"),
    [
        (1.0, "float32", "ABCD", [0x3F80, 0x0000]),
        (1.0, "float32", "CDAB", [0x0000, 0x3F80]),
        (1.0, "float32", "BADC", [0x803F, 0x0000]),
        (1.0, "float32", "DCBA", [0x0000, 0x803F]),
        (-2.5, "float32", "ABCD", [0xC020, 0x0000]),
        (0x12345678, "uint32", "ABCD", [0x1234, 0x5678]),
        (0x12345678, "uint32", "CDAB", [0x5678, 0x1234]),
        (0x12345678, "uint32", "BADC", [0x3412, 0x7856]),
        (0x12345678, "uint32", "DCBA", [0x7856, 0x3412]),
        (-1, "int32", "ABCD", [0xFFFF, 0xFFFF]),
        (-2, "int32", "CDAB", [0xFFFE, 0xFFFF]),
        (-1, "int16", "ABCD", [0xFFFF]),
        (-300, "int16", "ABCD", [0xFED4]),
        (65536, "uint16", "ABCD", [0]),  # a 16-bit counter wraps
        (65537, "uint16", "ABCD", [1]),
        (0x0102030405060708, "uint64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708]),
        (0x0102030405060708, "uint64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102]),
        (0x0102030405060708, "uint64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807]),
        (0x0102030405060708, "uint64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201]),
        (-1, "int64", "ABCD", [0xFFFF] * 4),
        (-(2**32), "int64", "ABCD", [0xFFFF, 0xFFFF, 0x0000, 0x0000]),
        (1.0, "float64", "ABCD", [0x3FF0, 0, 0, 0]),
        (1.0, "float64", "CDAB", [0, 0, 0, 0x3FF0]),
        (True, "bool", "ABCD", [1]),
    ],
)
def test_vectors(value: float, value_type: str, order: str, registers: list[int]) -> None:
    assert encode(value, value_type, order) == registers  # type: ignore[arg-type]


def test_string_high_byte_first_and_nul_padded() -> None:
    assert encode("AB-1", "string", string_registers=3) == [0x4142, 0x2D31, 0x0000]
    assert encode("ABCDEFG", "string", string_registers=2) == [0x4142, 0x4344]  # truncated
