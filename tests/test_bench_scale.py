"""Smoke test of benchmarks/scale_bench.py: the scale and memory benchmarks still run, at a tiny
size, and produce numbers. Nothing about speed is asserted (that is `make bench`'s job)."""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import pyspy  # noqa: E402
import scale_bench  # noqa: E402

pytestmark = pytest.mark.integration


def _children() -> set[int]:
    import os

    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        children = task / "children"
        if children.exists():
            found |= {int(pid) for pid in children.read_text().split()}
    return found


def test_scale_runs_and_measures() -> None:
    children, threads = _children(), threading.active_count()
    m = scale_bench.run_scale(5, 10, 4.0, warmup=3.0, profile_seconds=2.0)
    assert m.devices == 5 and m.sim_processes == 1
    assert m.window_s > 3.5
    assert m.polls > 0 and m.poll_rate > 0
    assert m.requests > 0
    assert len(m.spacing_jitter_ms) == 3 and len(m.schedule_jitter_ms) == 3
    assert 0 < m.phase_busiest_100ms <= 1 and m.phase_span_99_ms > 0
    assert m.probes > 0 and m.latency_points > 0 and len(m.latency_upper_ms) == 3
    assert all(lo <= up for lo, up in zip(m.latency_lower_ms, m.latency_upper_ms, strict=True))
    assert m.rss_mib > 0 and m.peak_rss_mib >= m.rss_mib * 0.9
    assert not math.isnan(m.cpu_share)
    if pyspy.py_spy() is not None:
        assert m.profile_samples >= 0  # a nearly idle collector may give few samples
    lines = scale_bench.report_lines(m, None)
    assert "## Scale: 1,000 Modbus devices on one core" in lines
    assert any("poll jitter" in line for line in lines)
    # Every process and thread it started is gone.
    assert _children() <= children
    assert threading.active_count() == threads


def test_memory_runs_and_measures() -> None:
    children = _children()
    m = scale_bench.run_memory(4.0, devices=3, registers=10)
    assert m.example_machines > 0 and m.example_signals > 0
    assert m.example_rss_mib > 0 and m.example_peak_rss_mib > 0
    assert m.example_values > 0
    assert m.hundred_devices == 3 and m.hundred_rss_mib > 0
    assert m.imports_rss_mib > 0 and len(m.import_stages) == len(scale_bench.IMPORT_STAGES)
    assert m.config_bytes > 0 and not math.isnan(m.config_load_mib)
    lines = scale_bench.report_lines(None, m)
    assert "## Memory" in lines
    assert _children() <= children


def test_poll_jitter_and_percentiles() -> None:
    times = {"a": [0, 1000, 2010, 3000, 5000], "b": [500, 1500, 2500]}
    jitter = scale_bench.poll_jitter(times, 1000.0, expected=3)
    assert sorted(jitter.spacing) == [0, 0, 0, 10, 10]
    assert jitter.missed == 1 and jitter.devices_ok == 1
    assert scale_bench.percentiles([]) == []
    assert scale_bench.percentiles([float(n) for n in range(1, 101)]) == [50.0, 99.0, 100.0]


def test_profile_summary() -> None:
    raw = (
        "process 1:python;thread 1;run (asyncio/base_events.py);"
        "execute (pymodbus/transaction.py) 3\n"
        "process 1:python;thread 1;run (asyncio/base_events.py) 1\n"
    )
    samples, top, areas = pyspy.summarize_profile(raw)
    assert samples == 4
    assert top[0] == ("execute (pymodbus/transaction.py)", 75.0, 75.0)
    assert dict(areas) == {"pymodbus": 75.0, "asyncio": 25.0}


def test_phase_spread() -> None:
    together = {str(n): [n * 1000 + 500 for n in range(10)] for n in range(20)}
    busiest, span = scale_bench.phase_spread(together, 1000)
    assert busiest == 1.0 and span == 1.0
    even = {str(n): [k * 1000 + n * 10 for k in range(5)] for n in range(100)}
    busiest, span = scale_bench.phase_spread(even, 1000)
    assert busiest == 0.1 and span == 981.0
