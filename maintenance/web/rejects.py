"""Rejects a worker counts at the end of a shift, written as the `rejected` field of the machine's
`utilization` minutes over the shift's planned time, then the hours and days re-summed.

Every planned minute of the shift gets a point (zeros too), so entering the shift again rewrites
each of them: the new figure replaces the old. The split follows the parts the machine counted
in each minute when it has a part counter (never more rejected than produced in a minute), else
the planned seconds of each minute (evenly, for shifts on whole minutes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from collector.config import Config, Machine
from collector.importer import split_count
from collector.influxql import InfluxQL, quote_ident, quote_string, time_literal
from collector.rebuild import rebuilt_points
from collector.schema import (
    TAG_FACTORY,
    TAG_MACHINE,
    TAG_SECTOR,
    TAG_SHIFT,
    UTILIZATION,
    FieldValue,
    Point,
)
from collector.shifts import ShiftCalendar, ShiftSpan

__all__ = [
    "MAX_REJECTS",
    "SETTLE_MS",
    "RejectsPlan",
    "TooManyRejects",
    "plan_rejects",
    "planned_minutes",
    "rejected_points",
    "shift_span",
    "shifts_of_day",
    "stored_produced",
    "sums_after",
]

MINUTE_MS: Final = 60_000
MAX_REJECTS: Final = 1_000_000
# The collector writes a minute once it is over (plus the state's min_duration + 2 s), with its
# own `rejected`; a minute is only given rejects once the collector is surely done with it.
SETTLE_MS: Final = 2 * MINUTE_MS


class TooManyRejects(ValueError):
    """More rejected parts than the machine counted in the shift."""

    def __init__(self, machine: str, produced: int, count: int) -> None:
        super().__init__(
            f"{machine} counted {produced} parts in that shift; {count} rejected is more than that"
        )
        self.machine, self.produced, self.count = machine, produced, count


@dataclass(frozen=True, slots=True)
class RejectsPlan:
    """The points that carry a shift's rejects and the span their sums must be rebuilt for."""

    minutes: list[Point]
    start_ms: int
    end_ms: int


def shift_span(calendar: ShiftCalendar, day: dt.date, shift: str) -> ShiftSpan | None:
    """The shift of that name that starts on the local day, or None."""
    start = calendar.local_midnight_ms(day)
    end = calendar.local_midnight_ms(day + dt.timedelta(days=1))
    return next((s for s in calendar.spans(start, end) if s.day == day and s.shift == shift), None)


def shifts_of_day(calendar: ShiftCalendar, day: dt.date) -> list[str]:
    start = calendar.local_midnight_ms(day)
    end = calendar.local_midnight_ms(day + dt.timedelta(days=1))
    return [s.shift for s in calendar.spans(start, end) if s.day == day]


def planned_minutes(span: ShiftSpan, until_ms: int) -> dict[int, int]:
    """Minute start → planned milliseconds in it, for the minutes settled before `until_ms`."""
    minutes: dict[int, int] = {}
    for begin, end in span.planned():
        minute = begin - begin % MINUTE_MS
        while minute < end:
            if minute + MINUTE_MS + SETTLE_MS > until_ms:
                return minutes
            overlap = min(end, minute + MINUTE_MS) - max(begin, minute)
            minutes[minute] = minutes.get(minute, 0) + overlap
            minute += MINUTE_MS
    return minutes


def stored_produced(
    db: InfluxQL, config: Config, machine: str, start_ms: int, end_ms: int
) -> dict[int, int]:
    """Minute start → the `produced` stored for the machine in [start_ms, end_ms)."""
    statement = (
        f"SELECT {quote_ident('produced')} FROM {quote_ident(UTILIZATION)} "
        f"WHERE {quote_ident(TAG_FACTORY)} = {quote_string(config.factory)} "
        f"AND {quote_ident(TAG_MACHINE)} = {quote_string(machine)} "
        f"AND time >= {time_literal(start_ms)} AND time < {time_literal(end_ms)}"
    )
    produced: dict[int, int] = {}
    for series in db.select(statement):
        for row in series.rows:
            if row.get("produced") is not None:
                produced[int(row["time"])] = produced.get(int(row["time"]), 0) + int(
                    row["produced"]
                )
    return produced


def rejected_points(
    config: Config,
    calendar: ShiftCalendar,
    machine: Machine,
    minutes: dict[int, int],
    count: int,
    produced: dict[int, int] | None,
) -> list[Point]:
    """One `utilization` point per planned minute with its share of `count` as `rejected`.
    `produced` (the machine counts parts): shares in proportion to it, capped by it."""
    times = sorted(minutes)
    shares: Sequence[int]
    if count == 0 or not times:
        shares = [0] * len(times)
    elif produced is not None:
        made = [produced.get(t, 0) for t in times]
        if sum(made) < count:
            raise TooManyRejects(machine.id, sum(made), count)
        shares = split_count(count, made, caps=made)
    else:
        shares = split_count(count, [minutes[t] for t in times])
    tags = {TAG_FACTORY: config.factory, TAG_SECTOR: machine.sector, TAG_MACHINE: machine.id}
    points = []
    for minute_ms, share in zip(times, shares, strict=True):
        shift = calendar.shift_at(minute_ms)
        minute_tags = tags | {TAG_SHIFT: shift} if shift is not None else tags
        fields: dict[str, FieldValue] = {"rejected": share}
        points.append(Point(UTILIZATION, minute_tags, fields, minute_ms))
    return points


def plan_rejects(
    db: InfluxQL,
    config: Config,
    calendar: ShiftCalendar,
    machine: Machine,
    span: ShiftSpan,
    count: int,
    now_ms: int,
) -> RejectsPlan:
    minutes = planned_minutes(span, now_ms)
    if not minutes:
        return RejectsPlan([], span.start_ms, span.start_ms)
    first, last = min(minutes), max(minutes) + MINUTE_MS
    counting = machine.counters.produced is not None
    produced = stored_produced(db, config, machine.id, first, last) if counting else None
    points = rejected_points(config, calendar, machine, minutes, count, produced)
    return RejectsPlan(points, first, last)


def sums_after(db: InfluxQL, config: Config, plan: RejectsPlan, machine: str) -> list[Point]:
    return rebuilt_points(db, config, plan.start_ms, plan.end_ms, [machine])
