"""Running a dashboard's queries as Grafana would, without Grafana: for `aguante dashboards
show` (the dashboards' figures in a terminal, and a check that every panel has data) and for the
tests.

Grafana's InfluxQL data source substitutes `$timeFilter`, `$__interval`, `$__range_s` and the
template variables before it sends a query (several values of a variable as a regex group, for
`=~ /^$var$/`), over the dashboard's time range or the panel's own relative time and time shift.
The same is done here, in the dashboard's time zone.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from collector.influxql import InfluxQL, QueryError, Series
from dashboards.grafana import panels_of

__all__ = [
    "PanelAnswer",
    "TargetAnswer",
    "answer_dashboard",
    "expected_columns",
    "grafana_time",
    "panel_range",
    "regex_value",
    "resolve_variables",
    "substituted",
]

_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE: Final = re.compile(r"now(?:-(\d+)([smhdwMy]))?(?:/([smhdwMy]))?")
_SHIFT: Final = re.compile(r"(\d+)([smhdwMy])(?:/([smhdwMy]))?")


_WEEKDAYS: Final = {"monday": 0, "saturday": 5, "sunday": 6}


def _round_down(moment: dt.datetime, unit: str, week_start: int = 0) -> dt.datetime:
    if unit == "y":
        return moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == "M":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == "w":  # from the dashboard's weekStart (aguante's say monday)
        start = moment - dt.timedelta(days=(moment.weekday() - week_start) % 7)
        return start.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "d":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "h":
        return moment.replace(minute=0, second=0, microsecond=0)
    if unit == "m":
        return moment.replace(second=0, microsecond=0)
    return moment.replace(microsecond=0)


def _round_up(moment: dt.datetime, unit: str, week_start: int = 0) -> dt.datetime:
    return _add(_round_down(moment, unit, week_start), 1, unit) - dt.timedelta(milliseconds=1)


def _add(moment: dt.datetime, amount: int, unit: str) -> dt.datetime:
    if unit in ("M", "y"):
        months = amount * (12 if unit == "y" else 1)
        index = moment.year * 12 + moment.month - 1 + months
        year, month = divmod(index, 12)
        day = min(moment.day, calendar.monthrange(year, month + 1)[1])
        return moment.replace(year=year, month=month + 1, day=day)
    return moment + dt.timedelta(**{_UNITS[unit]: amount})


def grafana_time(text: str, now: dt.datetime, *, end: bool, week_start: int = 0) -> dt.datetime:
    """A Grafana relative time (`now`, `now-7d`, `now/d`, `now-12w/w`) in `now`'s zone; `end`
    rounds up, as Grafana does for the end of a range; weeks begin on `week_start` (0 Monday)."""
    found = _RELATIVE.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a relative time this tool reads (now-7d, now/d, …)")
    moment = now
    if found[1]:
        moment = _add(moment, -int(found[1]), found[2])
    if found[3]:
        moment = (_round_up if end else _round_down)(moment, found[3], week_start)
    return moment


def panel_range(
    dashboard: Mapping[str, Any], panel: Mapping[str, Any], now: dt.datetime
) -> tuple[int, int]:
    """The range Grafana queries a panel over, in UTC ms: the dashboard's, or the panel's
    relative time up to now, then moved back by its time shift — rounded after the move (with
    the panel's "now/M", a shift of "1M/M" is the whole month before)."""
    week = _WEEKDAYS[dashboard.get("weekStart") or "monday"]
    relative = panel.get("timeFrom")
    start = grafana_time(relative or dashboard["time"]["from"], now, end=False, week_start=week)
    finish = (
        now if relative else grafana_time(dashboard["time"]["to"], now, end=True, week_start=week)
    )
    shift = panel.get("timeShift")
    if shift:
        found = _SHIFT.fullmatch(shift)
        if found is None:
            raise ValueError(f"{shift!r} is not a time shift this tool reads (1d, 1M/M, …)")
        start, finish = (_add(m, -int(found[1]), found[2]) for m in (start, finish))
        if found[3]:
            start = _round_down(start, found[3], week)
            finish = _round_up(finish, found[3], week)
    return round(start.timestamp() * 1000), round(finish.timestamp() * 1000)


def regex_value(values: Sequence[str]) -> str:
    """A variable inside `/^$var$/`, as Grafana writes it: one value escaped, several as a
    group."""
    escaped = [re.sub(r"([\\/^$.|?*+()\[\]{}])", r"\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substituted(query: str, variables: Mapping[str, str], span: tuple[int, int]) -> str:
    """`query` with Grafana's macros and the variables put in (`variables`: name → its text,
    as `resolve_variables` formats it)."""
    start, end = span
    interval_s = max(10, (end - start) // 1000 // 1000)  # about 1,000 points, at least 10 s
    text = query.replace("$timeFilter", f"time >= {start}ms and time <= {end}ms")
    text = text.replace("$__interval", f"{interval_s}s")
    text = text.replace("$__range_s", str((end - start) // 1000))
    for name, value in variables.items():
        text = text.replace(f"${name}", value)
    left = re.search(r"\$\w+", text)
    if left is not None:
        raise ValueError(f"{left[0]} has no value in: {text}")
    return text


def resolve_variables(
    db: InfluxQL,
    dashboard: Mapping[str, Any],
    now_ms: int,
    chosen: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Each template variable's text from its own query, in order (machine after sector):
    Grafana's "All" for a multi-value one (its `allValue`, else every value as a group),
    `chosen[name]` (or the first value) for a single-value one; and the problems met."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for variable in dashboard["templating"]["list"]:
        name = variable["name"]
        query = substituted(variable["query"], values, (now_ms - 3_600_000, now_ms))
        try:
            answer = db.select(query)
        except QueryError as exc:
            problems.append(f"variable {name}: {exc}")
            continue
        found = sorted({str(row["value"]) for one in answer for row in one.rows})
        if not found:
            problems.append(f"variable {name}: no values\n    {query}")
            continue
        if not variable["multi"]:
            wanted = (chosen or {}).get(name)
            values[name] = regex_value([wanted] if wanted in found else found[:1])
        else:
            values[name] = variable.get("allValue") or regex_value(found)
    return values, problems


def expected_columns(panel: Mapping[str, Any]) -> set[str]:
    """The columns a panel renames or styles (its transformations and overrides): each must
    come back from InfluxDB with a value."""
    names: set[str] = set()
    made: set[str] = set()  # columns a transformation makes out of others
    for step in panel.get("transformations", []):
        options = step.get("options", {})
        names |= set(options.get("renameByName", {}))
        if step["id"] == "groupBy":
            for name, how in options["fields"].items():
                names.add(name)
                made |= {f"{name} ({aggregation})" for aggregation in how["aggregations"]}
    for override in panel["fieldConfig"].get("overrides", []):
        names.add(override["matcher"]["options"])
    return names - made - {"Time"}


@dataclass
class TargetAnswer:
    """One query of a panel: as sent, what came back, and what is wrong with it."""

    query: str
    series: list[Series] = field(default_factory=list)
    problem: str = ""  # the query failed
    empty: bool = False  # no value at all: nothing to show (no stop going on, say)
    missing: set[str] = field(default_factory=set)  # columns the panel shows, without a value


@dataclass
class PanelAnswer:
    """A panel (or an annotation) and the answers to its queries."""

    title: str
    panel: Mapping[str, Any]
    span: tuple[int, int]
    targets: list[TargetAnswer] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Queries that failed, or answered without a column the panel shows."""
        return [f"{self.title}: {t.problem}\n    {t.query}" for t in self.targets if t.problem]

    @property
    def empty(self) -> list[str]:
        """Queries that answered nothing (which may be right: no stop going on)."""
        return [f"{self.title}: no data\n    {t.query}" for t in self.targets if t.empty]

    @property
    def missing(self) -> list[str]:
        """Queries that answered without a value in a column the panel shows (which may be
        right: no MTTR before the first repair)."""
        return [
            f"{self.title}: no value in column(s) {', '.join(sorted(t.missing))}\n    {t.query}"
            for t in self.targets
            if t.missing
        ]


def _columns_with_values(series: Sequence[Series]) -> set[str]:
    columns: set[str] = set()
    for one in series:
        columns |= set(one.tags)
        for row in one.rows:
            columns |= {name for name, value in row.items() if value is not None}
    return columns


def _answer(db: InfluxQL, query: str, expect: set[str]) -> TargetAnswer:
    answer = TargetAnswer(query)
    try:
        answer.series = db.select(query)
    except QueryError as exc:
        answer.problem = str(exc)
        return answer
    if not _columns_with_values(answer.series) - {"time"} - _tag_names(answer.series):
        answer.empty = True
        return answer
    answer.missing = expect - _columns_with_values(answer.series)
    return answer


def _tag_names(series: Sequence[Series]) -> set[str]:
    return {name for one in series for name in one.tags}


def answer_dashboard(
    db: InfluxQL,
    dashboard: Mapping[str, Any],
    now: dt.datetime,
    chosen: Mapping[str, str] | None = None,
) -> tuple[list[PanelAnswer], list[str]]:
    """Every panel's and annotation's queries run as Grafana would run them at `now` (aware,
    in the dashboard's zone); and the problems with the template variables."""
    now_ms = round(now.timestamp() * 1000)
    variables, problems = resolve_variables(db, dashboard, now_ms, chosen)
    if problems:
        return [], problems
    answers = []
    for panel in panels_of(dashboard):
        span = panel_range(dashboard, panel, now)
        expect = expected_columns(panel)
        found = PanelAnswer(panel["title"], panel, span)
        for target in panel.get("targets", []):
            found.targets.append(_answer(db, substituted(target["query"], variables, span), expect))
        answers.append(found)
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("builtIn"):
            continue
        span = panel_range(dashboard, {}, now)
        expect = {annotation["textColumn"], annotation["tagsColumn"]}
        found = PanelAnswer(annotation["name"], annotation, span)
        found.targets.append(_answer(db, substituted(annotation["query"], variables, span), expect))
        answers.append(found)
    return answers, problems
