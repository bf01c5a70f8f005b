"""One machine's state, stops and minute rollups, fed readings and ticks at chosen times."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import Config, parse_config
from collector.machine_state import MINUTE_MS, MachineTracker
from collector.schema import (
    MACHINE_STATE,
    STOP,
    UTILIZATION,
    UTILIZATION_DAILY,
    UTILIZATION_HOURLY,
    FieldValue,
    Point,
)
from collector.shifts import ShiftCalendar

CONFIG = """
factory: coop
timezone: America/Argentina/Buenos_Aires
calendar:
  shifts:
    - {name: morning, days: [mon, tue, wed, thu, fri], start: "06:00", end: "14:00"}
sectors: [{id: press}]
machines:
  - id: press-1
    sector: press
    rated_per_hour: 1200
    modbus:
      host: 127.0.0.1
      port: 5020
      poll_interval: 1
      signals:
        - {name: current, table: holding, address: 0, type: uint16, scale: 0.1}
        - {name: fault, table: coil, address: 0, type: bool}
        - {name: strokes, table: holding, address: 1, type: uint16}
        - {name: rejects, table: holding, address: 2, type: uint32}
    state:
      running: {signal: current, above: 5, clear_below: 3}
      down: {signal: fault, equals: true}
      min_duration: 5
      micro_stop: 120
    counters:
      produced: {signal: strokes}
      rejected: {signal: rejects}
"""

ZONE = ZoneInfo("America/Argentina/Buenos_Aires")
# Tuesday 2026-11-24 at 08:00 in Buenos Aires: inside the morning shift.
T0 = round(dt.datetime(2026, 11, 24, 8, 0, tzinfo=ZONE).timestamp() * 1000)
S = 1000


def make(config_text: str = CONFIG, start: int = T0) -> tuple[Config, MachineTracker]:
    config = parse_config(config_text, environ={})
    calendar = ShiftCalendar(config.calendar, config.timezone)
    return config, MachineTracker.create(config, config.machines[0], calendar, start)


class Plant:
    """Drives a tracker second by second and keeps every point it gives."""

    def __init__(self, tracker: MachineTracker, now: int = T0) -> None:
        self.tracker = tracker
        self.now = now
        self.points: list[Point] = []
        self.values: dict[str, FieldValue] = {
            "current": 0.0,
            "fault": False,
            "strokes": 100,
            "rejects": 0,
        }

    def run(self, seconds: int, **values: FieldValue) -> None:
        """Readings every second for `seconds` seconds with these values."""
        self.values.update(values)
        for _ in range(seconds):
            self.points += self.tracker.observe(self.now, dict(self.values))
            self.points += self.tracker.tick(self.now)
            self.now += S

    def silent(self, seconds: int) -> None:
        for _ in range(seconds):
            self.points += self.tracker.tick(self.now)
            self.now += S

    def of(self, measurement: str) -> list[Point]:
        return [p for p in self.points if p.measurement == measurement]

    def states(self) -> list[tuple[int, FieldValue]]:
        return [((p.time_ms - T0) // S, p.fields["state"]) for p in self.of(MACHINE_STATE)]

    def minutes(self) -> list[Point]:
        return self.of(UTILIZATION)


def total(points: Iterable[Point], name: str) -> float:
    return sum(float(p.fields[name]) for p in points)


def test_hysteresis_keeps_a_machine_running_between_the_two_thresholds() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(10, current=6.0)  # above 5: running
    plant.run(10, current=4.0)  # between 3 and 5: still running
    plant.run(10, current=2.0)  # below 3: idle
    assert plant.states() == [(0, "running"), (20, "idle")]


def test_each_hour_begins_with_the_state_in_force_even_without_a_change() -> None:
    # A chart of 09:00-10:00 must start with a state, though the press has run since 08:00;
    # and a change settled just before the hour wins over the state it replaced.
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(3600 - 3, current=6.0)  # running from 08:00 until 08:59:57
    plant.run(3600, current=1.0)  # idle from 08:59:57, confirmed at 09:00:02
    hour = 3600
    assert plant.states() == [(0, "running"), (hour - 3, "idle"), (hour, "idle")]
    plant.run(60, current=6.0)  # running again from 09:59:57
    codes = {(p.time_ms - T0) // S: p.fields["code"] for p in plant.of(MACHINE_STATE)}
    assert codes == {0: 3, hour - 3: 2, hour: 2, 2 * hour - 3: 3, 2 * hour: 3}


def test_a_blip_shorter_than_min_duration_changes_nothing() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(20, current=6.0)
    plant.run(3, current=1.0)  # three seconds idle: noise
    plant.run(20, current=6.0)
    plant.run(8, current=1.0)  # eight seconds: a real stop, from its first second
    assert plant.states() == [(0, "running"), (43, "idle")]


def test_a_short_stop_is_a_micro_stop_and_a_long_one_is_written_while_open() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(10, current=6.0)
    plant.run(30, current=0.0)  # 30 s idle: a micro-stop
    plant.run(10, current=6.0)
    plant.run(200, current=0.0)  # 200 s: a stop, announced at 120 s while open
    plant.run(10, current=6.0)
    plant.silent(120)
    stops = plant.of(STOP)
    micro = [p for p in stops if p.fields["micro"]]
    assert [(p.time_ms - T0) // S for p in micro] == [10]
    assert micro[0].fields["duration_s"] == 30.0 and micro[0].fields["reason"] == ""
    long = [p for p in stops if p.time_ms == T0 + 50 * S]
    assert long[0].fields["open"] is True and long[0].fields["reason"] == ""
    assert long[-1].fields == {
        "duration_s": 200.0,
        "lost_s": 200.0,  # all inside the morning shift
        "state": "idle",
        "open": False,
        "micro": False,
    }  # no reason on later writes: one given meanwhile is kept
    assert total(plant.minutes(), "micro_stops") == 1


def test_a_fault_during_a_stop_continues_the_same_stop() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(10, current=6.0)
    plant.run(150, current=0.0)
    plant.run(100, fault=True)  # the idle machine turns out broken
    plant.run(10, fault=False, current=6.0)
    assert [s for _, s in plant.states()] == ["running", "idle", "down", "running"]
    closed = [p for p in plant.of(STOP) if not p.fields["open"]]
    assert len(closed) == 1
    assert closed[0].time_ms == T0 + 10 * S and closed[0].fields["duration_s"] == 250.0
    assert closed[0].fields["state"] == "idle"


def test_idle_then_down_within_min_duration_stops_at_the_first() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(10, current=6.0)
    plant.run(2, current=0.0)
    plant.run(10, fault=True)
    assert plant.states() == [(0, "running"), (10, "down")]


def test_silence_turns_the_state_unknown_and_a_fresh_value_ends_it_at_once() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(10, current=6.0)
    plant.silent(30)  # stale after 3 polls + 2 s = 5 s
    plant.run(5, current=6.0)
    assert plant.states() == [(0, "running"), (14, "unknown"), (40, "running")]
    assert plant.of(STOP) == []  # no data is not a stop


def test_a_device_its_source_declares_down_is_unknown_from_that_moment() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(10, current=0.0)
    tracker.set_unavailable({"current": T0 + 9 * S, "fault": T0 + 9 * S, "strokes": T0})
    plant.silent(3)
    assert plant.states() == [(0, "idle"), (9, "unknown")]
    tracker.set_unavailable({})
    plant.run(3, current=0.0)
    assert plant.states()[-1] == (13, "idle")


def test_minutes_add_up_and_count_parts_across_a_16_bit_wrap() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    strokes = 65_500
    plant.run(1, current=6.0, strokes=strokes)
    for _ in range(100):  # one stroke a second, through 65535 → 0
        strokes = (strokes + 1) % 65_536
        plant.run(1, strokes=strokes)
    plant.silent(70)
    minutes = plant.minutes()
    assert [p.time_ms for p in minutes] == [T0 + i * MINUTE_MS for i in range(len(minutes))]
    for minute in minutes:
        seconds = sum(float(minute.fields[f"{s}_s"]) for s in ("running", "idle", "down", "off"))
        assert seconds + float(minute.fields["unknown_s"]) == 60.0
        assert minute.tags["shift"] == "morning"
        assert minute.fields["planned_s"] == 60.0
        assert minute.fields["capacity"] == 20.0
    assert total(minutes, "produced") == 100
    assert total(minutes, "running_capacity") == total(minutes, "running_s") / 3


def test_a_counter_that_restarts_from_zero_counts_what_was_made_since() -> None:
    _, tracker = make()
    plant = Plant(tracker)
    plant.run(5, current=6.0, strokes=30_000)
    plant.run(5, strokes=30_010)
    plant.run(5, strokes=4)  # the PLC restarted and counted 4 since
    plant.run(5, strokes=60_000)  # a bad frame: far more than 1200/h allows in a second
    plant.run(5, strokes=60_003)
    plant.silent(70)
    assert total(plant.minutes(), "produced") == 10 + 4 + 3
    assert tracker.tallies["produced"].resets == 1
    assert tracker.tallies["produced"].glitches == 1


# Parts counted from the fault input's pulses instead (and no down condition on it).
PULSE_CONFIG = CONFIG.replace(
    "produced: {signal: strokes}", "produced: {signal: fault, kind: pulse}"
).replace("      down: {signal: fault, equals: true}\n", "")


def test_a_pulse_input_counts_rising_edges() -> None:
    _, tracker = make(PULSE_CONFIG)
    plant = Plant(tracker)
    for _ in range(7):
        plant.run(1, current=6.0, fault=True)
        plant.run(1, fault=False)
    plant.silent(70)
    assert total(plant.minutes(), "produced") == 6  # the first high is not an edge seen


def test_a_counter_or_pulse_read_as_nan_counts_nothing() -> None:
    # A board whose sensor failed publishes "nan": not a part, and not an edge either.
    nan = float("nan")
    _, tracker = make(PULSE_CONFIG)
    plant = Plant(tracker)
    for _ in range(5):
        plant.run(1, current=6.0, fault=0.0)
        plant.run(1, fault=nan)
    _, counting = make()
    counted = Plant(counting)
    for strokes in (100.0, 101.0, nan, float("inf"), 103.0):
        counted.run(1, current=6.0, strokes=strokes)
    plant.silent(70)
    counted.silent(70)
    assert total(plant.minutes(), "produced") == 0
    assert total(counted.minutes(), "produced") == 3


def test_running_outside_a_shift_is_planned_and_a_stop_loses_only_shift_time() -> None:
    start = round(dt.datetime(2026, 11, 24, 13, 58, tzinfo=ZONE).timestamp() * 1000)
    _, tracker = make(start=start)
    plant = Plant(tracker, now=start)
    plant.run(60, current=6.0)  # 13:58-13:59 running
    plant.run(180, current=0.0)  # 13:59-14:02 idle; the shift ends at 14:00
    plant.run(60, current=6.0)  # 14:02-14:03 running, overtime
    plant.silent(80)
    by_minute = {(p.time_ms - start) // MINUTE_MS: p for p in plant.minutes()}
    assert by_minute[0].fields["planned_s"] == 60.0
    assert by_minute[1].tags["shift"] == "morning"
    assert by_minute[2].fields["planned_s"] == 0.0 and "shift" not in by_minute[2].tags
    assert by_minute[4].fields["planned_s"] == 60.0  # running overtime was planned, de facto
    (stop,) = [p for p in plant.of(STOP) if not p.fields["open"]]
    assert stop.fields["duration_s"] == 180.0 and stop.fields["lost_s"] == 60.0


def test_a_restart_neither_double_counts_nor_leaves_a_hole() -> None:
    config, first = make()
    plant = Plant(first)
    plant.run(95, current=6.0, strokes=100)
    plant.run(10, strokes=110)
    plant.points += first.close(plant.now)
    saved = first.checkpoint()
    down_until = plant.now + 130 * S  # the collector was down for 130 s
    calendar = ShiftCalendar(config.calendar, config.timezone)
    second = MachineTracker.create(config, config.machines[0], calendar, down_until)
    again = Plant(second, now=down_until)
    again.points += second.resume(saved, down_until, max_gap_ms=7 * 86_400_000)
    again.run(60, current=6.0, strokes=125)  # 15 strokes made while nobody watched
    again.silent(70)
    minutes = plant.minutes() + again.minutes()
    times = [p.time_ms for p in minutes]
    assert times == sorted(set(times)), "a minute written twice or out of order"
    assert times == [T0 + i * MINUTE_MS for i in range(len(times))], "a hole"
    assert total(minutes, "produced") == 10 + 15
    unknown = total(minutes, "unknown_s")
    assert 130 <= unknown <= 131  # the time it was down, and (at start) nothing more
    assert total(minutes, "running_s") + unknown == 60 * len(minutes)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=90),
            st.floats(min_value=0, max_value=10),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_every_minute_sums_to_sixty_seconds_whatever_the_signals_do(
    steps: list[tuple[int, float, bool, bool]],
) -> None:
    _, tracker = make()
    plant = Plant(tracker)
    for seconds, current, fault, quiet in steps:
        if quiet:
            plant.silent(seconds)
        else:
            plant.run(seconds, current=current, fault=fault)
    plant.silent(70)
    minutes = plant.minutes()
    assert [p.time_ms for p in minutes] == [T0 + i * MINUTE_MS for i in range(len(minutes))]
    for minute in minutes:
        states = sum(float(minute.fields[f"{s}_s"]) for s in ("running", "idle", "down", "off"))
        assert abs(states + float(minute.fields["unknown_s"]) - 60.0) < 1e-6
        assert 0 <= float(minute.fields["planned_s"]) <= 60.0
    changes = plant.of(MACHINE_STATE)
    assert all(a.fields["state"] != b.fields["state"] for a, b in itertools.pairwise(changes))
    assert all(a.time_ms <= b.time_ms for a, b in itertools.pairwise(changes))


def test_each_hour_is_the_sum_of_its_minutes_across_a_restart() -> None:
    config, first = make()
    plant = Plant(first)
    for _ in range(40):  # forty minutes of 40 s running, 20 s stopped, one stroke a second
        for _ in range(40):
            plant.run(1, current=6.0, strokes=int(plant.values["strokes"]) + 1)
        plant.run(20, current=0.0)
    plant.points += first.close(plant.now)
    saved = first.checkpoint()
    back = plant.now + 300 * S
    calendar = ShiftCalendar(config.calendar, config.timezone)
    second = MachineTracker.create(config, config.machines[0], calendar, back)
    again = Plant(second, now=back)
    again.values = dict(plant.values)
    again.points += second.resume(saved, back, max_gap_ms=86_400_000)
    again.run(80 * 60, current=6.0)  # to past the end of the second hour
    points = plant.points + again.points
    hours = [p for p in points if p.measurement == UTILIZATION_HOURLY]
    minutes = [p for p in points if p.measurement == UTILIZATION]
    assert [h.time_ms for h in hours] == [T0, T0 + 3_600_000]
    for hour in hours:
        inside = [m for m in minutes if hour.time_ms <= m.time_ms < hour.time_ms + 3_600_000]
        assert len(inside) == 60
        for name, value in hour.fields.items():
            assert value == pytest.approx(total(inside, name)), name
            assert type(value) is type(inside[0].fields[name]), name  # ints stay ints
    assert total(hours, "unknown_s") == pytest.approx(300)


def test_each_local_day_is_the_sum_of_its_minutes_across_a_restart() -> None:
    # From 23:30 to 00:40 in Buenos Aires (UTC-3): the day ends at 03:00 UTC, not at 00:00.
    start = round(dt.datetime(2026, 11, 24, 23, 30, tzinfo=ZONE).timestamp() * 1000)
    config, first = make(start=start)
    plant = Plant(first, now=start)
    plant.run(15 * 60, current=6.0)
    plant.points += first.close(plant.now)
    saved = first.checkpoint()
    back = plant.now + 120 * S
    calendar = ShiftCalendar(config.calendar, config.timezone)
    second = MachineTracker.create(config, config.machines[0], calendar, back)
    again = Plant(second, now=back)
    again.points += second.resume(saved, back, max_gap_ms=86_400_000)
    again.run(55 * 60, current=0.0)
    points = plant.points + again.points
    (day,) = [p for p in points if p.measurement == UTILIZATION_DAILY]
    midnight = round(dt.datetime(2026, 11, 24, tzinfo=ZONE).timestamp() * 1000)
    assert day.time_ms == midnight
    inside = [
        p
        for p in points
        if p.measurement == UTILIZATION and midnight <= p.time_ms < midnight + 86_400_000
    ]
    assert len(inside) == 30  # the tracker started at 23:30
    for name, value in day.fields.items():
        assert value == pytest.approx(total(inside, name)), name
    assert day.fields["running_s"] == 15 * 60 and day.fields["unknown_s"] == 120
