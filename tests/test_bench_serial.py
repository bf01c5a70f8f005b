"""Smoke test of benchmarks/serial_bench.py: it still runs and produces numbers (no speed asserted),
and its wire time is the formula of the issue."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import serial_bench


def test_wire_time_is_bytes_at_11_bits_and_two_silences() -> None:
    # 100 registers: an 8-byte request and a 205-byte answer (unit, function, count, 200, CRC).
    assert serial_bench.response_bytes(100) == 205
    assert serial_bench.wire_time(8, 205, 9600) == pytest.approx((213 + 7) * 11 / 9600)
    assert serial_bench.wire_time(8, 205, 9600) == pytest.approx(0.2520833)
    assert serial_bench.wire_time(8, 25, 115_200) == pytest.approx(40 * 11 / 115_200)


def test_serial_bench_runs_and_reports_numbers() -> None:
    m = serial_bench.run_serial(seconds=1.0, warmup=0.5, bauds=(115_200,), register_counts=(10,))
    (case,) = m.cases
    assert case.transactions > 10
    assert case.errors == 0
    assert case.line_bytes_ok
    assert case.wire_s == pytest.approx(serial_bench.wire_time(8, 25, 115_200))
    for value in (case.measured_s, case.device_s, case.relay_s, case.overhead, case.cpu_s):
        assert math.isfinite(value)
    assert case.measured_s > case.wire_s  # the line is paced: no transaction beats the wire
    lines = serial_bench.report_lines(m)
    assert lines[0] == "## Serial: Modbus RTU against wire time"
    assert any(line.startswith("| 115,200 | 10 | 8 + 25 |") for line in lines)
