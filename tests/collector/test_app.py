"""The collector process over in-memory sources and sink: stop, flush, restart a failed source."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import pytest

from collector.app import Collector
from collector.config import Config, parse_config
from collector.schema import COLLECTOR, READING
from collector.sinks.memory import MemorySink
from collector.sources import Consume, DeviceHealth, HealthRecord, Reading, Source, Unavailable
from tests.collector.failing_disk import FailingDisk
from tests.waiting import eventually

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

    async def run(self, consume: Consume) -> None:
        async for reading in self._readings():
            consume((reading,))

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


def collector_in(
    tmp_path: Path, config: Config, sink: MemorySink, source: Source, **options: Any
) -> Collector:
    """A collector of `source` into `sink`, its quarantine, buffer and state under `tmp_path`."""
    return Collector(
        config,
        sink=sink,
        sources=[source],
        quarantine_path=tmp_path / "q",
        buffer_path=tmp_path / "buffer",
        state_path=tmp_path / "state.json",
        **options,
    )


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
    collector = collector_in(tmp_path, config, sink, source)
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
    collector = collector_in(tmp_path, config, MemorySink(), source)
    await run_for(collector, 0.1)
    assert source.closed


async def test_a_failing_source_is_logged_and_restarted(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = ScriptedSource(fail_once=True)
    sink = MemorySink()
    collector = collector_in(tmp_path, config, sink, source, restart_delay=0.05)
    with caplog.at_level(logging.ERROR):
        await run_for(collector, 0.4)
    assert source.starts == 2
    assert "scripted: source failed; restarting in 0 s" in caplog.text
    assert any(p.measurement == READING for p in sink.points)


STATE_CONFIG = """
factory: coop
stats_interval: 0.05
influxdb: {flush_interval: 0.02}
sectors: [{id: press}]
machines:
  - id: press-1
    sector: press
    rated_per_hour: 3600
    modbus:
      host: 127.0.0.1
      port: 5020
      signals:
        - {name: cycles, table: holding, address: 0}
        - {name: motor, table: coil, address: 0, type: bool}
    state:
      running: {signal: motor, equals: true}
      min_duration: 0
    counters:
      produced: {signal: cycles}
"""
FAST = 600.0  # simulated seconds per wall second: ten minutes of plant time a second


class FastClock:
    """Plant time running FAST times quicker than the wall clock, from `start` (UTC s)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.origin = asyncio.get_running_loop().time()

    def __call__(self) -> float:
        return self.start + (asyncio.get_running_loop().time() - self.origin) * FAST


class ShiftingSource:
    """A press that runs 90 s, stands 90 s, …; one cycle a second while it runs; and whose
    device is reported unreachable while `lost` is set."""

    name = "shifting"
    kind = "scripted"

    def __init__(self, clock: FastClock) -> None:
        self.clock = clock
        self.lost = False

    def health_records(self) -> list[HealthRecord]:
        return []

    def unavailable(self) -> list[Unavailable]:
        if not self.lost:
            return []
        since = round(self.clock() * 1000)
        return [Unavailable("press-1", frozenset({"cycles", "motor"}), since)]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def run(self, consume: Consume) -> None:
        async for reading in self._readings():
            consume((reading,))

    async def _readings(self) -> AsyncIterator[Reading]:
        while True:
            await asyncio.sleep(1 / FAST)
            if self.lost:
                continue
            now = self.clock()
            running = int(now // 90) % 2 == 0
            cycles = int(now // 180) * 90 + min(int(now % 180), 90)  # counts only while running
            yield Reading("press-1", round(now * 1000), {"cycles": cycles, "motor": running})


async def test_states_stops_and_minutes_survive_a_restart(tmp_path: Path) -> None:
    config = parse_config(STATE_CONFIG, environ={})
    sink = MemorySink()
    start = 1_764_000_000.0  # a whole minute
    clock = FastClock(start)
    source = ShiftingSource(clock)
    first = collector_in(tmp_path, config, sink, source, clock=clock, tick_interval=0.005)
    await run_for(first, 0.6)  # about six minutes of plant time
    assert (tmp_path / "state.json").exists()
    stopped_at = clock()

    later = FastClock(stopped_at + 150)  # down for 150 s
    source = ShiftingSource(later)
    second = collector_in(tmp_path, config, sink, source, clock=later, tick_interval=0.005)
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    await asyncio.sleep(0.3)
    source.lost = True  # the device stops answering for a while
    await asyncio.sleep(0.2)
    source.lost = False
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 10)

    minutes = [p for p in sink.points if p.measurement == "utilization"]
    times = [p.time_ms for p in minutes]
    assert times == sorted(set(times)), "a minute written twice"
    first_minute = round(start * 1000)
    assert times == list(range(first_minute, first_minute + 60_000 * len(times), 60_000))
    assert len(times) >= 12
    for minute in minutes:
        seconds = ("running_s", "idle_s", "down_s", "off_s", "unknown_s")
        assert abs(sum(float(minute.fields[s]) for s in seconds) - 60) < 1e-6
    unknown = sum(float(m.fields["unknown_s"]) for m in minutes)
    assert unknown >= 150 + 60  # the restart's gap and the lost device, at least
    produced = sum(int(m.fields["produced"]) for m in minutes)
    # Every cycle between the first and the last reading is counted once, across the restart
    # and the lost device; those of the minute still open wait in the checkpoint.
    cycles = [int(p.fields["cycles"]) for p in sink.points if p.measurement == "reading"]
    saved = json.loads((tmp_path / "state.json").read_text())["machines"]["press-1"]
    waiting = sum(counts[0] for counts in saved["minutes"].values())
    assert produced > 0 and produced + waiting == cycles[-1] - cycles[0]
    states = [p.fields["state"] for p in sink.points if p.measurement == "machine_state"]
    assert {"running", "idle", "unknown"} <= set(states)
    stops = [p for p in sink.points if p.measurement == "stop" and p.fields["open"] is False]
    assert stops and all(float(p.fields["duration_s"]) > 0 for p in stops)


class TurnSource:
    """Hands its readings over in one call, as the MQTT source hands over a turn's messages,
    then waits to be stopped."""

    name = "turn"
    kind = "scripted"

    def __init__(self, readings: list[Reading]) -> None:
        self.readings = readings
        self.starts = 0

    def health_records(self) -> list[HealthRecord]:
        return []

    def unavailable(self) -> list[Unavailable]:
        return []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def run(self, consume: Consume) -> None:
        self.starts += 1
        consume(self.readings)
        await asyncio.Event().wait()


async def test_a_counter_read_as_nan_is_stored_without_it_and_counts_no_parts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A board whose sensor failed publishes "nan" (ESPHome, Tasmota); a float32 register can
    # hold one too. Neither may cost the other readings, restart the source or count parts.
    config = parse_config(STATE_CONFIG, environ={})
    start = 1_764_000_000_000
    values: list[float] = [100, 101, float("nan"), float("inf"), 104]
    readings = [
        Reading("press-1", start + n * 1000, {"cycles": v, "motor": True})
        for n, v in enumerate(values)
    ]
    sink, source = MemorySink(), TurnSource(readings)
    collector = collector_in(
        tmp_path, config, sink, source, clock=lambda: start / 1000 + 5, restart_delay=0.05
    )
    with caplog.at_level(logging.WARNING):
        await run_for(collector, 0.3)
    assert source.starts == 1, caplog.text
    assert "machine state could not take a reading" not in caplog.text  # no bug to report
    stored = [p.fields.get("cycles") for p in sink.points if p.measurement == READING]
    assert stored == [100, 101, None, None, 104]
    assert collector.capacity is not None
    saved = collector.capacity.trackers["press-1"]
    assert sum(m.produced for m in saved.minutes.values()) == 4


class ReplayingSource(TurnSource):
    """Hands its turn over again each time `again` is set, as a broker sends unacknowledged
    messages again after a reconnection."""

    def __init__(self, readings: list[Reading]) -> None:
        super().__init__(readings)
        self.again = asyncio.Event()
        self.turns = 0

    async def run(self, consume: Consume) -> None:
        self.starts += 1
        while True:
            consume(self.readings)
            self.turns += 1
            await self.again.wait()
            self.again.clear()


def counted_parts(collector: Collector) -> int:
    assert collector.capacity is not None
    return sum(m.produced for m in collector.capacity.trackers["press-1"].minutes.values())


@pytest.mark.parametrize("acknowledged", [True, False], ids=["mqtt-like", "modbus-like"])
async def test_readings_the_buffer_refuses_are_counted_once_and_acknowledged_only_when_kept(
    tmp_path: Path, acknowledged: bool
) -> None:
    # A full disk refuses a turn. Messages that wait for their acknowledgement come back from
    # the broker, so the machine states count them then; readings that never come back
    # (Modbus, QoS 0) the states count at once, though they could not be stored.
    config = parse_config(STATE_CONFIG, environ={})
    start = 1_764_000_000_000
    acks: list[int] = []
    readings = [
        Reading(
            "press-1",
            start + n * 1000,
            {"cycles": 100 + n, "motor": True},
            (lambda n=n: acks.append(n)) if acknowledged else None,
        )
        for n in range(4)
    ]
    sink, source, disk = MemorySink(), ReplayingSource(readings), FailingDisk()
    disk.fail_put = True
    collector = collector_in(
        tmp_path, config, sink, source, clock=lambda: start / 1000 + 5, buffer=disk
    )
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await eventually(lambda: source.turns == 1)
        assert acks == []
        assert counted_parts(collector) == (0 if acknowledged else 3)
        disk.fail_put = False
        if acknowledged:  # the broker sends the messages again
            source.again.set()
            await eventually(lambda: source.turns == 2)
            await eventually(lambda: any(p.measurement == READING for p in sink.points))
        await eventually(lambda: any(p.measurement == COLLECTOR for p in sink.points))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert acks == ([0, 1, 2, 3] if acknowledged else [])
    assert counted_parts(collector) == 3  # counted once either way
    stored = [p.fields["cycles"] for p in sink.points if p.measurement == READING]
    assert stored == ([100, 101, 102, 103] if acknowledged else [])
    assert collector.delivery is not None
    # the readings of the refused turn, and whatever else came while the disk was full
    assert collector.delivery.stats().dropped >= 4
