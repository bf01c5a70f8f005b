"""Read coalescing: the fewest requests the protocol and each device's quirks allow."""

from __future__ import annotations

from typing import Any

import pytest

from collector.config import ModbusDevice
from collector.plan import coalesce_reads


def device(signals: list[dict[str, Any]], **overrides: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {"host": "127.0.0.1", "port": 502, "signals": signals} | overrides
    )


def registers(
    *addresses: int, kind: str = "uint16", table: str = "holding"
) -> list[dict[str, Any]]:
    return [{"name": f"{table}{a}", "table": table, "address": a, "type": kind} for a in addresses]


def spans(dev: ModbusDevice) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in coalesce_reads(dev)]


def test_100_contiguous_registers_are_one_request() -> None:
    assert spans(device(registers(*range(100)))) == [("holding", 0, 100)]


def test_a_block_over_125_registers_needs_a_second_request() -> None:
    assert spans(device(registers(*range(200)))) == [("holding", 0, 125), ("holding", 125, 75)]


def test_a_32_bit_value_is_never_split_across_requests() -> None:
    total = {"name": "total", "table": "holding", "address": 124, "type": "float32"}
    signals = [*registers(*range(124)), total]
    assert spans(device(signals)) == [("holding", 0, 124), ("holding", 124, 2)]


def test_gaps_up_to_gap_fill_are_read_through() -> None:
    assert spans(device(registers(0, 11))) == [("holding", 0, 12)]  # gap of 10
    assert spans(device(registers(0, 12))) == [("holding", 0, 1), ("holding", 12, 1)]
    assert spans(device(registers(0, 5), gap_fill=0)) == [("holding", 0, 1), ("holding", 5, 1)]


def test_tables_are_never_mixed() -> None:
    signals = registers(0, 1) + registers(0, 1, table="input")
    assert spans(device(signals)) == [("holding", 0, 2), ("input", 0, 2)]


def test_bits_coalesce_up_to_2000() -> None:
    coils = registers(*range(0, 2500, 10), kind="bool", table="coil")
    assert spans(device(coils)) == [("coil", 0, 1991), ("coil", 2000, 491)]


def test_device_quirks_are_obeyed() -> None:
    many = registers(*range(40))
    assert spans(device(many, max_registers_per_request=16)) == [
        ("holding", 0, 16),
        ("holding", 16, 16),
        ("holding", 32, 8),
    ]
    assert len(coalesce_reads(device(registers(0, 1, 2), one_request_per_signal=True))) == 3


def test_bits_of_one_register_share_its_read() -> None:
    bits = [
        {"name": f"b{i}", "table": "holding", "address": 3, "type": "bool", "bit": i}
        for i in range(4)
    ]
    plan = coalesce_reads(device(bits))
    assert [(r.address, r.count, len(r.signals)) for r in plan] == [(3, 1, 4)]


def test_scattered_registers_use_the_minimum() -> None:
    # 10 registers 30 apart: each gap is wider than the gap fill, and the span from 0 to 270
    # is over 125, so no plan can do better than one request per register here.
    assert len(coalesce_reads(device(registers(*range(0, 300, 30))))) == 10
    # ... while 10 registers 5 apart fit one request.
    assert spans(device(registers(*range(0, 50, 5)))) == [("holding", 0, 46)]


def test_a_request_decodes_registers_as_they_are_and_the_others_by_their_type() -> None:
    dev = device(
        [
            {"name": "count", "table": "holding", "address": 0, "type": "uint16"},
            {
                "name": "swapped",
                "table": "holding",
                "address": 1,
                "type": "uint16",
                "order": "BADC",
            },
            {"name": "signed", "table": "holding", "address": 2, "type": "int16"},
            {"name": "scaled", "table": "holding", "address": 3, "type": "uint16", "scale": 0.1},
            {"name": "temp", "table": "holding", "address": 4, "type": "float32"},
            {"name": "state", "table": "holding", "address": 7, "type": "uint16"},
            {"name": "bit", "table": "holding", "address": 8, "type": "bool", "bit": 3},
        ]
    )
    (request,) = coalesce_reads(dev)
    assert request.as_is == ("count", "state")  # only these skip the per-value decoders
    values: dict[str, Any] = {}
    # 0x42F6E979 is 123.456 in IEEE 754 single precision
    data = [65535, 0x3412, 0xFF38, 1234, 0x42F6, 0xE979, 0, 7, 0b1000]
    assert request.decode(data, values) == 0
    assert values == {
        "count": 65535,
        "swapped": 0x1234,
        "signed": -200,
        "scaled": 123.4,
        "temp": pytest.approx(123.456, rel=1e-6),
        "state": 7,
        "bit": True,
    }
    assert type(values["count"]) is int


def test_a_lone_register_as_is_and_none_at_all() -> None:
    (one,) = coalesce_reads(device(registers(5)))
    values: dict[str, Any] = {}
    assert one.decode([42], values) == 0 and values == {"holding5": 42}
    (floats,) = coalesce_reads(device(registers(0, kind="float32")))
    assert floats.as_is == ()
    values = {}
    assert floats.decode([0x7FC0, 0], values) == 1 and values == {}  # NaN: left out, counted
