"""One machine's state, stops and per-minute rollups, from its readings (docs/capacity.md).

Pure and clock-free: readings and ticks bring the time (UTC milliseconds), and every method
returns the points to write. A change between known states counts only after it held
`min_duration`, and then from when it began; so a minute is rolled up only once that long has
passed after its end, and what was rolled up is never rewritten. "No data" is `unknown`, never
a stop.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.config import Condition, Config, Machine, Signal, StateName, StateRules
from collector.counters import PartTally, default_wrap
from collector.schema import (
    MACHINE_STATE,
    STATE_CODES,
    STOP,
    TAG_SHIFT,
    UTILIZATION,
    UTILIZATION_DAILY,
    UTILIZATION_HOURLY,
    FieldValue,
    Point,
)
from collector.shifts import ShiftCalendar

__all__ = ["MINUTE_MS", "MachineTracker", "stale_after_ms"]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
STOPPED: frozenset[str] = frozenset({"idle", "down", "off"})
SETTLE_MS = 2_000  # beyond min_duration, before a minute is rolled up: ticks are 1 s apart
MAX_ROLLUPS_PER_TICK = 1440
CHECKPOINT_VERSION = 1


class _Check:
    """One condition and its hysteresis memory."""

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        equals = condition.equals
        self._targets = tuple(equals) if isinstance(equals, list) else (equals,)
        self.active = False
        self._last_value: FieldValue | None = None
        self._changed_ms: int | None = None

    def update(self, value: FieldValue, time_ms: int) -> None:
        c = self.condition
        if c.advanced_within is not None:
            if self._last_value is not None and value != self._last_value:
                self._changed_ms = time_ms
            self._last_value = value
        elif c.equals is not None:
            self.active = any(value == target for target in self._targets)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            self.active = False
        elif c.above is not None:
            release = c.clear_below if c.clear_below is not None else c.above
            self.active = value > c.above or (self.active and value >= release)
        elif c.below is not None:
            release = c.clear_above if c.clear_above is not None else c.below
            self.active = value < c.below or (self.active and value <= release)

    def holds(self, now_ms: int) -> bool:
        within = self.condition.advanced_within
        if within is not None:
            return self._changed_ms is not None and now_ms - self._changed_ms <= within * 1000
        return self.active


def stale_after_ms(rules: StateRules, signal: object, poll_interval: float | None) -> int:
    """How long a signal may go without a value before the state is unknown; 0 = never by time."""
    if rules.stale_after is not None:
        return round(rules.stale_after * 1000)
    if isinstance(signal, Signal) and poll_interval is not None:
        return round((3 * poll_interval + 2) * 1000)
    return 0  # MQTT boards that publish on change: only their availability tells


@dataclass
class _Stop:
    start_ms: int
    state: str
    announced: bool = False


@dataclass
class _Minute:
    produced: int = 0
    rejected: int = 0
    micro_stops: int = 0


@dataclass
class MachineTracker:
    """States, stops and rollups of one machine with a `state` block."""

    machine: Machine
    tags: Mapping[str, str]
    calendar: ShiftCalendar
    stale_ms: dict[str, int]  # signal → stale after (ms; 0 = only when its source says so)
    tallies: dict[str, PartTally]  # "produced"/"rejected" → tally of its counter
    rules: StateRules
    state: StateName = "unknown"
    since_ms: int = 0
    final_ms: int = 0  # minutes before this are rolled up and written
    segments: list[tuple[int, StateName]] = field(default_factory=list)
    minutes: dict[int, _Minute] = field(default_factory=dict)
    # Sums of the rolled-up minutes of the hour under way, by (hour start, shift or "").
    hours: dict[tuple[int, str], dict[str, int | float]] = field(default_factory=dict)
    # … and of the plant's local day under way, by (local midnight, shift or "").
    days: dict[tuple[int, str], dict[str, int | float]] = field(default_factory=dict)
    open_stop: _Stop | None = None
    checks: dict[str, _Check] = field(default_factory=dict)
    seen_ms: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    clock_ms: int = 0
    counted_ms: int | None = None  # when a counter was last read
    _candidate: tuple[StateName, int] | None = None

    @classmethod
    def create(
        cls, config: Config, machine: Machine, calendar: ShiftCalendar, start_ms: int
    ) -> MachineTracker:
        rules = machine.state
        if rules is None:
            raise ValueError(f"{machine.id}: no state block to track")
        signals = config.signals_of(machine)
        poll = machine.modbus.poll_interval if machine.modbus is not None else None
        checks = {state: _Check(c) for state, c in rules.conditions.items()}
        stale = {
            c.signal: stale_after_ms(rules, signals.get(c.signal), poll)
            for c in rules.conditions.values()
        }
        tallies = {}
        for role in ("produced", "rejected"):
            counter = getattr(machine.counters, role)
            if counter is not None:
                wrap = default_wrap(counter, signals.get(counter.signal))
                tallies[role] = PartTally(machine.id, role, counter, wrap)
        first = start_ms - start_ms % MINUTE_MS
        tags = {
            "factory": config.factory,
            "sector": machine.sector,
            "machine": machine.id,
        }
        return cls(
            machine,
            tags,
            calendar,
            stale,
            tallies,
            rules,
            since_ms=start_ms,
            final_ms=first,
            segments=[(first, "unknown")],
            checks=checks,
            clock_ms=start_ms,
        )

    # -- input ---------------------------------------------------------------------------------

    def observe(self, time_ms: int, values: Mapping[str, FieldValue]) -> list[Point]:
        """A reading of this machine; the points it causes (state changes, stops)."""
        at = max(time_ms, self.clock_ms)  # a late sensor time stamp never rewinds the state
        self.clock_ms = at
        for check in self.checks.values():
            value = values.get(check.condition.signal)
            if value is not None:
                check.update(value, at)
        for name in values:
            if name in self.stale_ms:
                self.seen_ms[name] = at
        counted = False
        for role, tally in self.tallies.items():
            value = values.get(tally.counter.signal)
            if value is None:
                continue
            counted = True
            parts = tally.update(value, max_plausible=self._plausible_step(tally, at))
            if parts:
                minute = self._minute(at)
                if role == "produced":
                    minute.produced += parts
                else:
                    minute.rejected += parts
        if counted:
            self.counted_ms = at
        return self._evaluate(at)

    def set_unavailable(self, signals: Mapping[str, int]) -> None:
        """Signals their source cannot see now, with the time since when (replaces the last)."""
        self.unavailable = {s: t for s, t in signals.items() if s in self.stale_ms}

    def tick(self, now_ms: int) -> list[Point]:
        """The time passes: staleness, pending changes, open stops, finished minutes."""
        now_ms = max(now_ms, self.clock_ms)
        self.clock_ms = now_ms
        points = self._evaluate(now_ms)
        stop = self.open_stop
        micro_ms = self.rules.micro_stop * 1000
        if stop is not None and not stop.announced and now_ms - stop.start_ms >= micro_ms:
            stop.announced = True
            points.append(self._stop_point(stop, now_ms, open_=True, first=True))
        horizon = now_ms - round(self.rules.min_duration * 1000) - SETTLE_MS
        rolled = 0
        # After a long gap the minutes are caught up a day per tick, not all at once.
        while self.final_ms + MINUTE_MS <= horizon and rolled < MAX_ROLLUPS_PER_TICK:
            points += self._rollup(self.final_ms)
            rolled += 1
        if rolled and stop is not None and stop.announced:
            points.append(self._stop_point(stop, now_ms, open_=True, first=False))
        return points

    def close(self, now_ms: int) -> list[Point]:
        """The collector stops: what is known up to now, without waiting for pending changes."""
        now_ms = max(now_ms, self.clock_ms)
        self.clock_ms = now_ms
        points = self._evaluate(now_ms)
        while self.final_ms + MINUTE_MS <= now_ms:
            points += self._rollup(self.final_ms)
        return points

    # -- state ---------------------------------------------------------------------------------

    def _raw_state(self, at: int) -> tuple[StateName, int]:
        """The state the signals say now, and (for unknown) since when it is so."""
        stale_since = None
        for signal, after in self.stale_ms.items():
            since = self.unavailable.get(signal)
            if since is None:
                seen = self.seen_ms.get(signal)
                if seen is None:
                    since = self.since_ms  # never seen: unknown as long as we have been
                elif after and at - seen > after:
                    since = seen + after
            if since is not None:
                stale_since = since if stale_since is None else min(stale_since, since)
        if stale_since is not None:
            return "unknown", stale_since
        states: tuple[StateName, ...] = ("off", "down", "running")
        for state in states:
            check = self.checks.get(state)
            if check is not None and check.holds(at):
                return state, at
        return "idle", at

    def _evaluate(self, at: int) -> list[Point]:
        raw, since = self._raw_state(at)
        if raw == self.state:
            self._candidate = None
            return []
        if raw == "unknown" or self.state == "unknown" or self.rules.min_duration == 0:
            # Losing the data counts at once; so does the first fresh value after it.
            return self._commit(raw, since)
        candidate = self._candidate
        if candidate is None or candidate[0] != raw:
            began = at
            if candidate is not None and candidate[0] in STOPPED and raw in STOPPED:
                began = candidate[1]  # idle then down: the machine stopped at the first
            candidate = self._candidate = (raw, began)
        if at - candidate[1] >= self.rules.min_duration * 1000:
            return self._commit(raw, candidate[1])
        return []

    def _commit(self, state: StateName, since: int) -> list[Point]:
        since = max(since, self.since_ms, self.final_ms)
        before = self.state
        self.state, self.since_ms, self._candidate = state, since, None
        if self.segments and self.segments[-1][0] == since:
            self.segments[-1] = (since, state)
        else:
            self.segments.append((since, state))
        points = [
            Point(
                MACHINE_STATE,
                self.tags,
                {"state": state, "code": STATE_CODES[state]},
                since,
            )
        ]
        stop = self.open_stop
        if stop is not None and state not in STOPPED:
            points.append(self._end_stop(stop, since))
        elif stop is None and state in STOPPED and before not in STOPPED:
            self.open_stop = _Stop(since, state)
        return points

    # -- stops ---------------------------------------------------------------------------------

    def _end_stop(self, stop: _Stop, end_ms: int) -> Point:
        self.open_stop = None
        micro = end_ms - stop.start_ms < self.rules.micro_stop * 1000
        if micro:
            self._minute(end_ms).micro_stops += 1
        return self._stop_point(stop, end_ms, open_=False, first=not stop.announced, micro=micro)

    def _stop_point(
        self, stop: _Stop, end_ms: int, *, open_: bool, first: bool, micro: bool = False
    ) -> Point:
        fields: dict[str, FieldValue] = {
            "duration_s": (end_ms - stop.start_ms) / 1000,
            "lost_s": self.calendar.planned_ms(stop.start_ms, end_ms) / 1000,
            "state": stop.state,
            "open": open_,
            "micro": micro,
        }
        if first:
            fields["reason"] = ""  # only the first write: a reason given since must survive
        return Point(STOP, self.tags, fields, stop.start_ms)

    # -- rollups -------------------------------------------------------------------------------

    def _minute(self, at: int) -> _Minute:
        start = max(at - at % MINUTE_MS, self.final_ms)  # late parts go to the first open minute
        minute = self.minutes.get(start)
        if minute is None:
            minute = self.minutes[start] = _Minute()
        return minute

    def _rollup(self, start: int) -> list[Point]:
        """The minute from `start`, and the sums of its hour (UTC) and of its day (the plant's
        local day) when it is their last minute."""
        minute = self._minute_point(start)
        shift = minute.tags.get(TAG_SHIFT, "")
        end = start + MINUTE_MS
        day = self.calendar.local_day(start)
        day_start = self.calendar.local_midnight_ms(day)
        points = [minute]
        if end % HOUR_MS == 0:
            # The state in force as each hour begins, though it did not change: a chart of any
            # range starts with a state, and a state older than an hour means no collector.
            # Settled (rolled up past min_duration), so no pending change can contradict it.
            state = self.segments[0][1]
            points.append(
                Point(MACHINE_STATE, self.tags, {"state": state, "code": STATE_CODES[state]}, end)
            )
        for store, period_start, ends, measurement in (
            (self.hours, start - start % HOUR_MS, end % HOUR_MS == 0, UTILIZATION_HOURLY),
            (
                self.days,
                day_start,
                end == self.calendar.local_midnight_ms(day + dt.timedelta(days=1)),
                UTILIZATION_DAILY,
            ),
        ):
            sums = store.setdefault((period_start, shift), {})
            for name, value in minute.fields.items():
                assert isinstance(value, int | float)
                # Integers stay integers (InfluxDB keeps one type per field).
                sums[name] = sums.get(name, 0) + value
            if ends:
                for key in sorted(k for k in store if k[0] == period_start):
                    fields: dict[str, FieldValue] = dict(store.pop(key))
                    tags = dict(self.tags) | ({TAG_SHIFT: key[1]} if key[1] else {})
                    points.append(Point(measurement, tags, fields, period_start))
        return points

    def _minute_point(self, start: int) -> Point:
        end = start + MINUTE_MS
        seconds = dict.fromkeys(STATE_CODES, 0)
        running: list[tuple[int, int]] = []
        segments = self.segments
        for index, (begin, state) in enumerate(segments):
            until = segments[index + 1][0] if index + 1 < len(segments) else end
            lo, hi = max(begin, start), min(until, end)
            if lo < hi:
                seconds[state] += hi - lo
                if state == "running":
                    running.append((lo, hi))
        # Keep the segment in force at the minute's end, and those after it.
        keep = max((i for i, (begin, _) in enumerate(segments) if begin <= end), default=0)
        del segments[:keep]
        planned = self.calendar.planned(start, end)
        overlap = sum(max(0, min(e, re) - max(b, rb)) for b, e, _ in planned for rb, re in running)
        planned_ms = sum(e - b for b, e, _ in planned) + seconds["running"] - overlap
        counts = self.minutes.pop(start, _Minute())
        rate = (self.machine.rated_per_hour or 0.0) / 3600
        fields: dict[str, FieldValue] = {
            "planned_s": planned_ms / 1000,
            **{f"{state}_s": ms / 1000 for state, ms in seconds.items()},
            "produced": counts.produced,
            "rejected": counts.rejected,
            "capacity": rate * 60,
            "running_capacity": rate * seconds["running"] / 1000,
            "micro_stops": counts.micro_stops,
        }
        tags = dict(self.tags)
        shift = self.calendar.shift_at(start)
        if shift is not None:
            tags[TAG_SHIFT] = shift
        self.final_ms = end
        return Point(UTILIZATION, tags, fields, start)

    def _plausible_step(self, tally: PartTally, at: int) -> int | None:
        # At most three times the rated speed over the time since the last value, plus slack.
        rated = self.machine.rated_per_hour
        if rated is None or tally.counter.kind == "pulse":
            return None
        elapsed = max(at - (self.counted_ms if self.counted_ms is not None else at), 1000)
        return round(3 * rated * elapsed / 3_600_000 / tally.counter.parts_per_count) + 10

    # -- restarts ------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """What a restart needs to go on without double counting or a hole."""
        return {
            "version": CHECKPOINT_VERSION,
            "saved_ms": self.clock_ms,
            "final_ms": self.final_ms,
            "segments": [[t, s] for t, s in self.segments],
            "minutes": {
                str(t): [m.produced, m.rejected, m.micro_stops] for t, m in self.minutes.items()
            },
            "open_stop": (
                None
                if self.open_stop is None
                else [self.open_stop.start_ms, self.open_stop.state, self.open_stop.announced]
            ),
            "counters": {role: tally.last for role, tally in self.tallies.items()},
            "counted_ms": self.counted_ms,
            "hours": [[h, shift, fields] for (h, shift), fields in self.hours.items()],
            "days": [[d, shift, fields] for (d, shift), fields in self.days.items()],
        }

    def resume(self, saved: Mapping[str, Any], now_ms: int, *, max_gap_ms: int) -> list[Point]:
        """Go on from a checkpoint: the time since it was saved is unknown."""
        if saved.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {saved.get('version')!r}")
        saved_ms = int(saved["saved_ms"])
        final_ms = int(saved["final_ms"])
        oldest = now_ms - now_ms % MINUTE_MS - max_gap_ms
        points: list[Point] = []
        if final_ms < oldest:
            log.warning(
                "%s: last checkpoint is %.1f days old; rolling up only the last %.0f days",
                self.machine.id,
                (now_ms - final_ms) / 86_400_000,
                max_gap_ms / 86_400_000,
            )
            final_ms, saved_ms = oldest, max(saved_ms, oldest)
            self.segments = [(oldest, "unknown")]
        else:
            self.segments = [(int(t), s) for t, s in saved["segments"]] or [(final_ms, "unknown")]
            self.minutes = {int(t): _Minute(*map(int, m)) for t, m in saved["minutes"].items()}
            self.hours = {
                (int(h), str(shift)): dict(fields) for h, shift, fields in saved.get("hours", [])
            }
            self.days = {
                (int(d), str(shift)): dict(fields) for d, shift, fields in saved.get("days", [])
            }
        self.final_ms = final_ms
        self.since_ms = saved_ms
        self.clock_ms = max(saved_ms, final_ms)
        stop = saved.get("open_stop")
        if stop is not None:
            points.append(
                self._end_stop(_Stop(int(stop[0]), str(stop[1]), bool(stop[2])), saved_ms)
            )
        self.segments.append((saved_ms, "unknown"))
        self.state = "unknown"
        for role, last in saved.get("counters", {}).items():
            if role in self.tallies and last is not None:
                self.tallies[role].last = int(last)
        # Parts made while the collector was down count when it is back, judged against that time.
        counted = saved.get("counted_ms")
        self.counted_ms = None if counted is None else int(counted)
        return points
