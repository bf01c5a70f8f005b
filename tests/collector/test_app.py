"""The collector process over in-memory sources and sink: stop, flush, restart a failed source."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Self

import pytest

from collector.app import Collector
from collector.config import Config, parse_config
from collector.schema import COLLECTOR, READING
from collector.sinks.memory import MemorySink
from collector.sources import DeviceHealth, HealthRecord, Reading, Unavailable

CONFIG = """
factory: coop
stats_interval: 0.05
influxdb: {flush_interval: 0.02}
sectors: [{id: press}]
machines:
  - id: press-1
    sector: press
    modbus: {host: 127.0.0.1, port: 5020, signals: [{name: cycles, table: holding, address: 0}]}
"""


class ScriptedSource:
    """Yields readings; can swallow one cancellation (as 3.11's wait_for may) or fail once."""

    name = "scripted"
    kind = "scripted"

    def __init__(self, *, swallow_cancel: bool = False, fail_once: bool = False) -> None:
        self.swallow_cancel = swallow_cancel
        self.fail_once = fail_once
        self.starts = 0
        self.closed = False

    def health_records(self) -> list[HealthRecord]:
        return [DeviceHealth("press-1", polls=self.starts, up=True).record()]

    def unavailable(self) -> list[Unavailable]:
        return []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True

    def __aiter__(self) -> AsyncIterator[Reading]:
        return self._readings()

    async def _readings(self) -> AsyncIterator[Reading]:
        self.starts += 1
        if self.fail_once and self.starts == 1:
            raise RuntimeError("a bug in a source")
        count = 0
        while True:
            try:
                await asyncio.sleep(0.005)
            except asyncio.CancelledError:
                if not self.swallow_cancel:
                    raise
                self.swallow_cancel = False
            count += 1
            yield Reading("press-1", 1_700_000_000_000 + count, {"cycles": count})


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG, environ={})


async def run_for(collector: Collector, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_readings_and_health_reach_the_sink_and_stop_flushes(
    config: Config, tmp_path: Path
) -> None:
    sink, source = MemorySink(), ScriptedSource()
    collector = Collector(config, sink=sink, sources=[source], quarantine_path=tmp_path / "q")
    await run_for(collector, 0.3)
    readings = [p for p in sink.points if p.measurement == READING]
    assert readings and source.closed and sink.exited
    assert readings[0].tags == {"factory": "coop", "sector": "press", "machine": "press-1"}
    # Every reading given to the delivery was written: the stop flushed the last ones.
    assert [p.fields["cycles"] for p in readings] == list(range(1, len(readings) + 1))
    health = [p for p in sink.points if p.measurement == COLLECTOR]
    machines = {p.tags["machine"] for p in health}
    assert machines == {"press-1", "_buffer"}


async def test_a_swallowed_cancellation_does_not_hang_the_stop(
    config: Config, tmp_path: Path
) -> None:
    source = ScriptedSource(swallow_cancel=True)
    collector = Collector(
        config, sink=MemorySink(), sources=[source], quarantine_path=tmp_path / "q"
    )
    await run_for(collector, 0.1)
    assert source.closed


async def test_a_failing_source_is_logged_and_restarted(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = ScriptedSource(fail_once=True)
    sink = MemorySink()
    collector = Collector(
        config, sink=sink, sources=[source], quarantine_path=tmp_path / "q", restart_delay=0.05
    )
    with caplog.at_level(logging.ERROR):
        await run_for(collector, 0.4)
    assert source.starts == 2
    assert "scripted: source failed; restarting in 0 s" in caplog.text
    assert any(p.measurement == READING for p in sink.points)
