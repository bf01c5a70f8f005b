"""KPIs of a plant over local dates, by machine, sector, shift, day, week or month, read from the
`utilization` rollup in InfluxDB.

Days, weeks (from Monday) and months are cut here, at local midnights of the plant's time zone,
and sent as one statement each in one request: InfluxQL's `GROUP BY time()` has no months and
time zones are not served alike by InfluxDB 1.x, 2.x and 3.x. Every statement groups by machine
(and shift), so a machine's capacity use is parts-based or time-based by what it is
(dashboards/kpi.py), then the machines are added up per label.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from collector.config import Config, Machine
from collector.influxql import (
    InfluxQL,
    QueryError,
    quote_ident,
    quote_string,
    regex_any,
    time_literal,
)
from collector.rebuild import split_by_source
from collector.schema import (
    TAG_FACTORY,
    TAG_MACHINE,
    TAG_SHIFT,
    UTILIZATION,
    UTILIZATION_COUNTS,
    UTILIZATION_SECONDS,
)
from collector.shifts import ShiftCalendar
from dashboards.kpi import Totals

__all__ = [
    "GROUPINGS",
    "Grouping",
    "KpiRow",
    "SelectionError",
    "Window",
    "kpis",
    "select_machines",
    "utilization_statement",
    "windows",
]

Grouping = Literal["machine", "sector", "shift", "day", "week", "month"]
GROUPINGS: tuple[Grouping, ...] = ("machine", "sector", "shift", "day", "week", "month")

_FIELDS = UTILIZATION_SECONDS + UTILIZATION_COUNTS
HOUR_MS = 3_600_000
# The collector writes an hour's (a day's) sums once its last minute is rolled up: at most
# min_duration (600 s) + 2 s after it ends, plus the buffer's flush. Younger ones: from minutes.
HOURLY_SETTLED_MS = 15 * 60_000


class SelectionError(ValueError):
    """The machines, sector or dates asked for do not fit the config: the message says why."""


@dataclass(frozen=True, slots=True)
class Window:
    """[start_ms, end_ms) in UTC milliseconds, labelled by its local start date (or "")."""

    label: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class KpiRow:
    """One line of a KPI table: a label, its time span (local, end excluded) and its sums.

    The label is the machine id, the sector id, the shift name ("" for minutes outside every
    shift), the local start date (ISO) of a day, week or month window, or "" for the whole set.
    """

    label: str
    start: dt.datetime
    end: dt.datetime
    totals: Totals


def select_machines(
    config: Config, machines: Sequence[str] | None = None, sector: str | None = None
) -> list[Machine]:
    """The config's machines asked for (all of them by default), in config order."""
    known = {m.id: m for m in config.machines}
    if machines:
        unknown = [m for m in machines if m not in known]
        if unknown:
            raise SelectionError(
                f"unknown machine(s) {', '.join(unknown)}; the config has {', '.join(known)}"
            )
    if sector is not None and sector not in {s.id for s in config.sectors}:
        raise SelectionError(
            f"unknown sector {sector}; the config has {', '.join(s.id for s in config.sectors)}"
        )
    wanted = set(machines) if machines else set(known)
    chosen = [m for m in config.machines if m.id in wanted and sector in (None, m.sector)]
    if not chosen:
        raise SelectionError(f"none of the machines {', '.join(sorted(wanted))} is in {sector}")
    return chosen


def windows(
    calendar: ShiftCalendar, start_ms: int, end_ms: int, by: Grouping | None = None
) -> list[Window]:
    """[start_ms, end_ms) cut at the plant's local midnights into days, weeks (Monday first) or
    months; the first and last windows are clipped. One window labelled "" for other groupings."""
    if by not in ("day", "week", "month"):
        return [Window("", start_ms, end_ms)]
    found = []
    day = calendar.local_day(start_ms)
    if by == "week":
        day -= dt.timedelta(days=day.weekday())
    elif by == "month":
        day = day.replace(day=1)
    while (begin := calendar.local_midnight_ms(day)) < end_ms:
        if by == "day":
            following = day + dt.timedelta(days=1)
        elif by == "week":
            following = day + dt.timedelta(days=7)
        else:
            following = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        end = min(end_ms, calendar.local_midnight_ms(following))
        begin = max(begin, start_ms)
        if begin < end:
            found.append(Window(calendar.local_day(begin).isoformat(), begin, end))
        day = following
    return found


def utilization_statement(
    config: Config,
    machine_ids: Iterable[str],
    window: Window,
    *,
    by_shift: bool = False,
    measurement: str = UTILIZATION,
) -> str:
    """One SELECT of the `utilization` (or `utilization_1h`) sums of these machines over a
    window, per machine (and shift), in the InfluxQL that InfluxDB 1.6+, 2.x (v1 API) and 3.x
    all serve."""
    sums = ", ".join(
        f"sum({quote_ident(name)}) AS {quote_ident(name)}"
        for name in UTILIZATION_SECONDS + UTILIZATION_COUNTS
    )
    source = quote_ident(measurement)
    policy = config.influxdb.retention_policy
    if measurement != UTILIZATION and config.influxdb.rollup_retention_policy is not None:
        policy = config.influxdb.rollup_retention_policy  # where the collector puts the sums
    if policy:
        source = f"{quote_ident(policy)}.{source}"
    group = quote_ident(TAG_MACHINE)
    if by_shift:
        group += f", {quote_ident(TAG_SHIFT)}"
    return (
        f"SELECT {sums} FROM {source}"
        f" WHERE time >= {time_literal(window.start_ms)} AND time < {time_literal(window.end_ms)}"
        f" AND {quote_ident(TAG_FACTORY)} = {quote_string(config.factory)}"
        f" AND {quote_ident(TAG_MACHINE)} =~ {regex_any(sorted(machine_ids))}"
        f" GROUP BY {group}"
    )


def kpis(
    db: InfluxQL,
    config: Config,
    start: dt.date | dt.datetime,
    end: dt.date | dt.datetime,
    *,
    machines: Sequence[str] | None = None,
    sector: str | None = None,
    by: Grouping | None = None,
    now: dt.datetime | None = None,
    hourly: bool = True,
) -> list[KpiRow]:
    """KPI rows of the machines asked for over [start, end).

    A date means its local midnight in the plant's zone; a naive datetime is local time there.
    Rows come in config order (machines, sectors, shifts, then "" for time outside shifts) or in
    time order, one for every machine, sector or window even without data. Each row's
    `calendar_s` is its time up to `now` (the current minute is not expected yet) × machines,
    so minutes never written count in its unknown share. Raises SelectionError for unknown
    machines or sectors and an empty span, QueryError when InfluxDB cannot answer.

    Whole local days and hours that ended a quarter of an hour ago or more are read from the
    daily and hourly sums the collector keeps (`utilization_1d`, `utilization_1h`: 1,440 and 60
    times fewer points), the rest from the minutes; `hourly=False` reads minutes only.
    """
    if by is not None and by not in GROUPINGS:
        raise SelectionError(f"cannot group by {by!r}; choose one of {', '.join(GROUPINGS)}")
    calendar = ShiftCalendar(config.calendar, config.timezone)
    start_ms, end_ms = _moment_ms(calendar, start), _moment_ms(calendar, end)
    if start_ms >= end_ms:
        raise SelectionError(f"the span is empty: {start} is not before {end}")
    chosen = select_machines(config, machines, sector)
    cut = windows(calendar, start_ms, end_ms, by)
    now_ms = round((now or dt.datetime.now(dt.UTC)).timestamp() * 1000)
    hourly_until = now_ms - HOURLY_SETTLED_MS if hourly else start_ms
    ids = [m.id for m in chosen]
    parts = [
        (window, measurement, Window(window.label, begin, finish))
        for window in cut
        for measurement, begin, finish in split_by_source(
            window.start_ms, window.end_ms, hourly_until, calendar
        )
    ]
    statements = [
        utilization_statement(config, ids, part, by_shift=by == "shift", measurement=measurement)
        for _, measurement, part in parts
    ]
    try:
        answers = db.query_each(statements)
    except QueryError as exc:
        if not hourly or "retention policy not found" not in str(exc):
            raise
        # No sums written yet (a new plant: the collector creates their policy as it starts).
        return kpis(
            db, config, start, end, machines=machines, sector=sector, by=by, now=now, hourly=False
        )

    counted = {m.id: m.counters.produced is not None for m in chosen}
    sector_of = {m.id: m.sector for m in chosen}
    # label → machine → summed fields, so each machine is judged parts- or time-based once per
    # label, over all of its minutes there.
    sums: dict[str, dict[str, dict[str, float]]] = {}
    for (window, _, _), answer in zip(parts, answers, strict=True):
        for series in answer:
            machine = series.tags.get(TAG_MACHINE, "")
            if machine not in counted:
                continue  # the regex matched exactly these; a server that disagrees is ignored
            label = _label(by, machine, sector_of[machine], series.tags.get(TAG_SHIFT, ""), window)
            summed = sums.setdefault(label, {}).setdefault(machine, {})
            for row in series.rows:
                for name in _FIELDS:
                    value = row.get(name)
                    if value is not None:
                        summed[name] = summed.get(name, 0) + value

    horizon = min(end_ms, now_ms - now_ms % 60_000)

    def seconds(begin: int, finish: int) -> float:
        return max(0, min(finish, horizon) - begin) / 1000

    spans = {w.label: (w.start_ms, w.end_ms) for w in cut}
    if by == "shift":
        shift_s: dict[str, float] = {}
        for span in calendar.spans(start_ms, end_ms):
            within = seconds(max(span.start_ms, start_ms), min(span.end_ms, end_ms))
            shift_s[span.shift] = shift_s.get(span.shift, 0) + within
        shift_s[""] = seconds(start_ms, end_ms) - sum(shift_s.values())
    rows = []
    for label in _labels(by, config, calendar, chosen, cut, sums):
        begin, finish = spans.get(label, (start_ms, end_ms))
        if by == "shift":
            each_s = shift_s.get(label, 0)
            if not label and not each_s and label not in sums:
                continue  # no time outside shifts, and no minute tagged so
        else:
            each_s = seconds(begin, finish)
        members = [
            m.id
            for m in chosen
            if (by != "machine" or m.id == label) and (by != "sector" or m.sector == label)
        ]
        totals = Totals()
        for machine in members:
            totals += Totals.from_row(
                sums.get(label, {}).get(machine, {}),
                machine=machine,
                counted=counted[machine],
                calendar_s=each_s,
            )
        rows.append(
            KpiRow(
                label,
                dt.datetime.fromtimestamp(begin / 1000, calendar.zone),
                dt.datetime.fromtimestamp(finish / 1000, calendar.zone),
                totals,
            )
        )
    return rows


def _labels(
    by: Grouping | None,
    config: Config,
    calendar: ShiftCalendar,
    chosen: list[Machine],
    cut: list[Window],
    found: Iterable[str],
) -> list[str]:
    """Every row's label in table order: those the config expects, then any others found."""
    if by == "machine":
        return [m.id for m in chosen]
    if by == "sector":
        sectors = {m.sector for m in chosen}
        return [s.id for s in config.sectors if s.id in sectors]
    if by != "shift":
        return [w.label for w in cut]
    first, last = calendar.local_day(cut[0].start_ms), calendar.local_day(cut[-1].end_ms - 1)
    names = [s.name for s in config.calendar.shifts]
    for change in config.calendar.changes:
        if change.start <= last and change.end >= first:
            names += [s.name for s in change.shifts]
    # Shifts renamed since, then the time outside every shift, last.
    names += sorted(name for name in found if name)
    return [*dict.fromkeys(names), ""]


def _label(by: Grouping | None, machine: str, sector: str, shift: str, window: Window) -> str:
    if by == "machine":
        return machine
    if by == "sector":
        return sector
    if by == "shift":
        return shift
    return window.label


def _moment_ms(calendar: ShiftCalendar, moment: dt.date | dt.datetime) -> int:
    if isinstance(moment, dt.datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=calendar.zone)
        return round(moment.timestamp() * 1000)
    return calendar.local_midnight_ms(moment)
