"""End to end for capacity use: the simulated metalworks → the collector's machine states →
a real InfluxDB, where states, stops and minute rollups must agree with one another and with
what the collector computed in memory.

The simulation runs 30 times faster than the wall clock, so its machines change state every
few seconds; the collector runs until the first minute is rolled up.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from collector.app import Collector
from collector.config import Config
from collector.influxql import InfluxQL
from collector.lineprotocol import decode_line
from collector.schema import MACHINE_STATE, STOP, UTILIZATION, Point
from collector.shifts import ShiftCalendar
from collector.sinks.influxdb import InfluxDBSink
from dashboards.kpi import RATIOS, Totals
from dashboards.kpi_query import kpis
from simulators import Simulator, load_scenario, run_scenario
from tests.conftest import InfluxDBDatabase
from tests.simulation import MONDAY_MORNING, free_port_base, with_pty_dir
from tests.test_end_to_end import eventually, example_config, port_base_of, running

pytestmark = pytest.mark.integration

STATES = ("running", "idle", "down", "off", "unknown")


class RecordingSink(InfluxDBSink):
    """The real sink, also keeping every point it wrote: the collector's view in memory."""

    written: list[Point]

    async def write_lines(self, lines: Sequence[str]) -> None:
        await super().write_lines(lines)
        self.written = getattr(self, "written", []) + [decode_line(line) for line in lines]


@pytest.fixture
async def fast_sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    scenario = with_pty_dir(load_scenario("metalworks"), tmp_path)
    async with run_scenario(
        scenario, port_base=free_port_base(8), seed=5, start=MONDAY_MORNING, speed=30.0
    ) as simulator:
        yield simulator


def capacity_config(sim: Simulator, tmp_path: Path, influxdb: InfluxDBDatabase) -> Config:
    config = example_config(port_base_of(sim), tmp_path, influxdb.url, influxdb.database)
    machines = []
    for machine in config.machines:
        if machine.state is not None:
            rules = machine.state.model_copy(update={"min_duration": 1.0, "micro_stop": 5.0})
            machine = machine.model_copy(update={"state": rules})
        machines.append(machine)
    return config.model_copy(update={"machines": machines})


def state_seconds(changes: list[dict[str, Any]], start: int, end: int) -> dict[str, float]:
    """Seconds in each state within [start, end), from the stored state changes (before the
    first change a machine is unknown: the collector had just started)."""
    seconds = dict.fromkeys(STATES, 0.0)
    timeline = [(0, "unknown")] + [(int(c["time"]), str(c["state"])) for c in changes]
    for index, (begin, state) in enumerate(timeline):
        until = timeline[index + 1][0] if index + 1 < len(timeline) else end
        overlap = min(until, end) - max(begin, start)
        if overlap > 0:
            seconds[state] += overlap / 1000
    return seconds


async def test_states_stops_and_minutes_agree_in_influxdb(
    fast_sim: Simulator, influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    influxdb.create()
    config = capacity_config(fast_sim, tmp_path, influxdb)
    sink = RecordingSink.from_config(config.influxdb)
    collector = Collector(
        config,
        sink=sink,
        quarantine_path=tmp_path / "q.jsonl",
        buffer_path=tmp_path / "buffer",
        state_path=tmp_path / "s.json",
    )
    tracked = sorted(m.id for m in config.machines if m.state is not None)

    def welder_states() -> list[str]:
        rows = influxdb.query(f"SELECT state FROM {MACHINE_STATE} WHERE machine = 'welder-1'")
        return [row["state"] for row in rows]

    def rolled_up_since(minute: int) -> int:
        rows = influxdb.query(
            f"SELECT count(running_s) FROM utilization WHERE time >= {minute}ms GROUP BY machine"
        )
        return len(rows)

    async with running(collector):
        await eventually(lambda: bool(welder_states()), within=20)
        # The welding cell goes silent for a while: its state must turn unknown, not stopped.
        await fast_sim.set_fault("welder-plc", "drop")
        dropped_minute = int(time.time()) // 60 * 60_000
        await eventually(lambda: "unknown" in welder_states(), within=15)
        await fast_sim.clear_fault("welder-plc")
        await eventually(lambda: welder_states()[-1] != "unknown", within=15)
        await eventually(lambda: rolled_up_since(dropped_minute) == len(tracked), within=80)

    minutes = influxdb.query("SELECT * FROM utilization GROUP BY machine")
    shifts = ShiftCalendar(config.calendar, config.timezone)
    assert sorted({m["machine"] for m in minutes}) == tracked
    for minute in minutes:
        assert sum(minute[f"{s}_s"] for s in STATES) == pytest.approx(60.0)
        # Readings are stamped by the collector's clock: the shift is the one in force now (no
        # shift tag at all between shifts, when the test runs at night in the plant's zone).
        assert minute.get("shift") == shifts.shift_at(minute["time"])

    # What InfluxDB holds is what the collector computed, point for point.
    written = {
        (p.tags["machine"], p.time_ms): p.fields
        for p in sink.written
        if p.measurement == UTILIZATION
    }
    for minute in minutes:
        fields = written[(minute["machine"], minute["time"])]
        for name, value in fields.items():
            assert minute[name] == pytest.approx(value), (minute["machine"], name)

    # The minutes agree with the state changes stored next to them.
    changed: set[str] = set()
    for machine in tracked:
        changes = influxdb.query(
            f"SELECT state, code FROM {MACHINE_STATE} WHERE machine = '{machine}'"
        )
        changed |= {c["state"] for c in changes}
        for minute in (m for m in minutes if m["machine"] == machine):
            expected = state_seconds(changes, minute["time"], minute["time"] + 60_000)
            for state in STATES:
                assert minute[f"{state}_s"] == pytest.approx(expected[state], abs=0.002), (
                    machine,
                    state,
                )
    assert {"running", "unknown"} <= changed
    welder = influxdb.query(f"SELECT state FROM {MACHINE_STATE} WHERE machine = 'welder-1'")
    assert "unknown" in [c["state"] for c in welder[1:]], "the silent device was not unknown"

    # Every closed stop lasts from its start to the next running or unknown state.
    stops = influxdb.query(f"SELECT * FROM {STOP} WHERE open = false GROUP BY machine")
    for stop in stops:
        changes = influxdb.query(
            f"SELECT state FROM {MACHINE_STATE} WHERE machine = '{stop['machine']}' "
            f"AND time > {stop['time']}ms"
        )
        end = next(c["time"] for c in changes if c["state"] in ("running", "unknown"))
        assert stop["duration_s"] == pytest.approx((end - stop["time"]) / 1000)
        assert stop["reason"] == ""

    # The KPIs read back from InfluxDB are those of the minutes the collector computed.
    zone = ShiftCalendar(config.calendar, config.timezone).zone
    first = min(minute["time"] for minute in minutes)
    day = dt.datetime.fromtimestamp(first / 1000, zone).date()
    with InfluxQL.from_config(config.influxdb) as db:
        rows = kpis(db, config, day, day + dt.timedelta(days=2), by="machine", hourly=False)
    by_machine = {row.label: row.totals for row in rows}
    for machine in tracked:
        summed: dict[str, float] = {}
        for (owner, _), fields in written.items():
            if owner == machine:
                for name, value in fields.items():
                    summed[name] = summed.get(name, 0) + float(value)
        config_machine = next(m for m in config.machines if m.id == machine)
        expected = Totals.from_row(
            summed,
            machine=machine,
            counted=config_machine.counters.produced is not None,
            calendar_s=by_machine[machine].calendar_s,
        )
        for ratio in RATIOS:
            got, want = getattr(by_machine[machine], ratio), getattr(expected, ratio)
            assert (got is None) == (want is None), (machine, ratio)
            if want is not None:
                assert got == pytest.approx(want, abs=1e-9), (machine, ratio)
    assert any(by_machine[m].availability for m in tracked)
