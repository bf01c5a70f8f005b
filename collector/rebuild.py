"""Hourly and daily sums of `utilization` (`utilization_1h`, `utilization_1d`) rebuilt from the
stored minutes.

The collector writes each hour's and each local day's sums itself as they end. Minutes written
any other way — imported from paper, corrected by hand — are summed again here for the hours and
days they touched, with plain InfluxQL queries and a write: no continuous query, so every
InfluxDB version serves. Hours are cut in UTC (as `GROUP BY time(1h)` does), days at the plant's
local midnights (one statement per day).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from collector.config import Config
from collector.influxql import (
    InfluxQL,
    Series,
    quote_ident,
    quote_string,
    regex_any,
    time_literal,
)
from collector.schema import (
    TAG_MACHINE,
    TAG_SECTOR,
    TAG_SHIFT,
    UTILIZATION,
    UTILIZATION_COUNTS,
    UTILIZATION_DAILY,
    UTILIZATION_HOURLY,
    UTILIZATION_SECONDS,
    FieldValue,
    Point,
)
from collector.shifts import ShiftCalendar

__all__ = [
    "HOUR_MS",
    "LocalDays",
    "day_span",
    "hour_span",
    "rebuilt_points",
    "split_by_source",
    "sums_statement",
]

HOUR_MS = 3_600_000
_INTEGERS = frozenset({"produced", "rejected", "micro_stops"})
_FIELDS = (*UTILIZATION_SECONDS, *UTILIZATION_COUNTS)


def hour_span(start_ms: int, end_ms: int) -> tuple[int, int]:
    """The whole hours (UTC, as the collector cuts them) that [start_ms, end_ms) touches."""
    return start_ms - start_ms % HOUR_MS, -(-end_ms // HOUR_MS) * HOUR_MS


def day_span(calendar: ShiftCalendar, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """The plant's local days that [start_ms, end_ms) touches, as [midnight, next midnight)."""
    days = []
    day = calendar.local_day(start_ms)
    while (begin := calendar.local_midnight_ms(day)) < end_ms:
        following = day + dt.timedelta(days=1)
        days.append((begin, calendar.local_midnight_ms(following)))
        day = following
    return days


class LocalDays(Protocol):
    """Where the plant's days begin (a ShiftCalendar is one)."""

    def local_day(self, time_ms: int) -> dt.date: ...

    def local_midnight_ms(self, day: dt.date) -> int: ...


def split_by_source(
    start_ms: int, end_ms: int, settled_until_ms: int, calendar: LocalDays | None = None
) -> list[tuple[str, int, int]]:
    """Where to read [start_ms, end_ms) from, as (measurement, start, end) parts: whole local
    days settled before `settled_until_ms` from the daily sums (given a calendar), whole settled
    hours around them from the hourly sums, the minutes around those from `utilization`."""
    if calendar is not None:
        first_day = calendar.local_day(start_ms)
        if calendar.local_midnight_ms(first_day) < start_ms:
            first_day += dt.timedelta(days=1)
        first = calendar.local_midnight_ms(first_day)
        last = calendar.local_midnight_ms(calendar.local_day(min(end_ms, settled_until_ms)))
        if first < last:
            return [
                *split_by_source(start_ms, first, settled_until_ms),
                (UTILIZATION_DAILY, first, last),
                *split_by_source(last, end_ms, settled_until_ms),
            ]
    if start_ms >= end_ms:
        return []
    first = -(-start_ms // HOUR_MS) * HOUR_MS
    last = min(end_ms - end_ms % HOUR_MS, settled_until_ms - settled_until_ms % HOUR_MS)
    if last <= first:
        return [(UTILIZATION, start_ms, end_ms)]
    parts = [(UTILIZATION, start_ms, first)] if start_ms < first else []
    parts.append((UTILIZATION_HOURLY, first, last))
    if last < end_ms:
        parts.append((UTILIZATION, last, end_ms))
    return parts


def sums_statement(
    config: Config,
    start_ms: int,
    end_ms: int,
    machines: Sequence[str] | None = None,
    *,
    by_hour: bool = False,
) -> str:
    sums = ", ".join(f"sum({quote_ident(f)}) AS {quote_ident(f)}" for f in _FIELDS)
    where = [
        f"time >= {time_literal(start_ms)}",
        f"time < {time_literal(end_ms)}",
        f"factory = {quote_string(config.factory)}",
    ]
    if machines:
        where.append(f"machine =~ {regex_any(list(machines))}")
    group = f"{TAG_SECTOR}, {TAG_MACHINE}, {TAG_SHIFT}"
    if by_hour:
        group = f"time(1h), {group}"
    return (
        f"SELECT {sums} FROM {quote_ident(UTILIZATION)} WHERE {' AND '.join(where)} "
        f"GROUP BY {group}" + (" fill(none)" if by_hour else "")
    )


def rebuilt_points(
    db: InfluxQL, config: Config, start_ms: int, end_ms: int, machines: Sequence[str] | None = None
) -> list[Point]:
    """The `utilization_1h` and `utilization_1d` points of the whole hours and local days that
    [start_ms, end_ms) touches, summed from the stored minutes."""
    first, last = hour_span(start_ms, end_ms)
    points = _points(
        db.select(sums_statement(config, first, last, machines, by_hour=True)),
        config,
        UTILIZATION_HOURLY,
        None,
    )
    days = day_span(ShiftCalendar(config.calendar, config.timezone), start_ms, end_ms)
    statements = [sums_statement(config, b, e, machines) for b, e in days]
    for (begin, _), answer in zip(days, db.query_each(statements), strict=True):
        points += _points(answer, config, UTILIZATION_DAILY, begin)
    return points


def _points(
    answer: list[Series], config: Config, measurement: str, time_ms: int | None
) -> list[Point]:
    points = []
    for series in answer:
        tags = {"factory": config.factory}
        tags |= {k: v for k, v in series.tags.items() if v}  # no shift tag outside shifts
        for row in series.rows:
            fields: dict[str, FieldValue] = {}
            for name in _FIELDS:
                value = row.get(name)
                if value is None:
                    continue
                # JSON gives 60 for the float 60.0: the field's own type decides.
                fields[name] = int(value) if name in _INTEGERS else float(value)
            if fields:
                at = int(row["time"]) if time_ms is None else time_ms
                points.append(Point(measurement, tags, fields, at))
    return points
