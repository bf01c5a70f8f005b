"""Maintenance rules evaluated over the data stored in InfluxDB: each cycle, one verdict (fire,
clear or hold) per rule and machine it watches, from the stored windows alone.

Nothing is remembered between cycles that could change a verdict, so a restart of the
maintenance service or of a collector changes nothing: hysteresis comes from the levels and
windows of each rule (a value between the clear level and the limit holds), not from memory.
The one thing kept across cycles, `BaselineCache`, holds the hourly medians of past settled
hours that drift rules read; it is a pure function of the stored data and only saves queries.

All rules of a cycle go to InfluxDB as a few multi-statement requests, each statement covering
every machine of a rule (`GROUP BY machine`), in the InfluxQL that 1.6+, 2.x (v1 API) and 3.x
all serve: aggregates (min, max, count, mean, median, sum, last), `GROUP BY time()`, and raw
selections with `ORDER BY time DESC LIMIT 1`. Statistics that InfluxQL cannot compute portably
(least squares, MAD, counter increases across resets) are computed here from small answers.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.config import Config, Drift, Machine, Rule
from collector.influxql import (
    InfluxQL,
    QueryError,
    Series,
    quote_ident,
    quote_string,
    regex_any,
    time_literal,
)
from collector.rebuild import split_by_source
from collector.schema import (
    COLLECTOR,
    READING,
    TAG_FACTORY,
    TAG_MACHINE,
    UTILIZATION,
    UTILIZATION_DAILY,
    UTILIZATION_HOURLY,
)
from maintenance.model import Finding, Reading, Verdict

__all__ = ["BaselineCache", "LastService", "evaluate"]

# When the last service of a kind was completed on a machine (UTC ms), or None: the meters count
# from there. (machine id, rule id) → time.
LastService = Callable[[str, str], int | None]

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# The collector writes a minute, an hour's or a day's sums at most min_duration (600 s) + a
# flush after it ends: older ones are taken as final (dashboards/kpi_query.py does the same).
SETTLED_MS = 15 * MINUTE_MS
# An hour found empty may still be delivered by a collector's durable buffer after a network
# cut: it is read again until it is this old.
EMPTY_FINAL_MS = DAY_MS
# Drift rules with only_running: an hour (or the recent window) counts when the machine ran for
# at least this share of it; its median then lies between the 33rd and 67th percentile of the
# values while running, whatever the others were.
RUNNING_SHARE = 0.75
# Drift: a baseline needs this many hourly medians, the oldest more than a day before the
# newest (values from two days at least), or the rule holds.
BASELINE_MIN_HOURS = 12
# Drift: a MAD below this share of the baseline median (or below the signal's resolution) is
# raised to it, so a signal that never varied does not fire on the first tiny change.
MAD_FLOOR_SHARE = 0.01
_MAD_FLOOR_ABSOLUTE = 1e-9
# Readings kept with a finding, and buckets of rate and threshold windows.
MAX_READINGS = 20
RATE_BUCKETS = 20
# A value stored this long (or one window, if longer) before a threshold window began is still
# taken as the one in force at its start; anything older is too little data.
IN_FORCE_LOOKBACK_MS = 15 * MINUTE_MS
_STATEMENTS_PER_REQUEST = 200
# Hours × machines of raw values a request of baseline medians may cover (a day of 50 machines
# at 1 Hz: about 4 s on InfluxDB 1.6 and two cores).
_BASELINE_BUDGET = 24 * 50
_NO_POLICY = "retention policy not found"
_UNKNOWN: Any = object()


class BaselineCache:
    """Hourly medians (and running seconds) of settled hours, kept across cycles so a drift rule
    reads its N days of baseline once and then one new hour at a time. Pass the same instance
    to every `evaluate` call of a service (by default they share one of the process); a fresh
    one only costs queries, never verdicts.

    An hour is kept once it ended 15 minutes ago; one found empty is read again until it is a
    day old, since a collector's buffer may still deliver it after a network cut. (Points
    delivered later still, into an hour that had some, are seen after a restart only.)"""

    def __init__(self) -> None:
        self._hours: dict[tuple[str, ...], dict[int, float | None]] = {}

    def __len__(self) -> int:
        return sum(len(hours) for hours in self._hours.values())

    def _get(self, key: tuple[str, ...]) -> dict[int, float | None]:
        return self._hours.setdefault(key, {})

    def _unknown(
        self, key: tuple[str, ...], start_h: int, end_h: int, now_ms: int
    ) -> list[tuple[int, int]]:
        """The stretches [begin, end) of hours in [start_h, end_h) not known for good."""
        known = self._get(key)
        stretches: list[tuple[int, int]] = []
        for hour in range(start_h, end_h, HOUR_MS):
            value = known.get(hour, _UNKNOWN)
            if value is _UNKNOWN or (value is None and hour + HOUR_MS > now_ms - EMPTY_FINAL_MS):
                if stretches and stretches[-1][1] == hour:
                    stretches[-1] = (stretches[-1][0], hour + HOUR_MS)
                else:
                    stretches.append((hour, hour + HOUR_MS))
        return stretches

    def _prune(self, before_ms: int) -> None:
        # Snapshots (list() copies atomically): a cycle in another thread may be storing hours.
        for hours in list(self._hours.values()):
            for hour in [h for h in list(hours) if h < before_ms]:
                hours.pop(hour, None)


# What `evaluate` uses unless told otherwise: keyed by server, database and plant, so every
# caller of the process can share it.
_SHARED_BASELINES = BaselineCache()


def evaluate(
    db: InfluxQL,
    config: Config,
    now_ms: int,
    *,
    last_service: LastService,
    baselines: BaselineCache | None = None,
) -> list[Finding]:
    """One Finding per rule of `config.maintenance.rules` and machine it watches, in config
    order, judged on the data stored up to `now_ms`. Raises QueryError when InfluxDB cannot
    answer. Drift rules keep the hourly medians of their past days in `baselines` (by default
    a cache shared by the whole process) and read only the hours it lacks."""
    cache = baselines if baselines is not None else _SHARED_BASELINES
    cache._prune(now_ms - 366 * DAY_MS)
    rollups = config.influxdb.rollup_retention_policy is not None
    try:
        return _evaluate(db, config, now_ms, last_service, cache, rollups=rollups)
    except _NoRollups:
        # No hourly and daily sums on this server yet (their policy is created by the
        # collector's sink): everything from the minutes.
        return _evaluate(db, config, now_ms, last_service, cache, rollups=False)


# -- planning: statements per rule, and how their answers become findings -----------------------

Answers = list[list[Series]]
Finisher = Callable[[Answers], list[Finding]]


@dataclass
class _Cycle:
    """What every rule's planner needs: the config, the moment, and the statements so far."""

    db: InfluxQL
    config: Config
    now_ms: int
    last_service: LastService
    cache: BaselineCache
    rollups: bool
    statements: list[str] = field(default_factory=list)

    def add(self, statement: str) -> int:
        self.statements.append(statement)
        return len(self.statements) - 1

    def source(self, measurement: str) -> str:
        """The measurement with its retention policy: the sums in theirs (kpi_query does so)."""
        policy = self.config.influxdb.retention_policy
        if measurement in (UTILIZATION_HOURLY, UTILIZATION_DAILY):
            policy = self.config.influxdb.rollup_retention_policy or policy
        name = quote_ident(measurement)
        return f"{quote_ident(policy)}.{name}" if policy else name

    def where(self, machines: Iterable[str], start_ms: int | None, end_ms: int) -> str:
        """This plant's series of these machines, within (start, end] (start None: all past)."""
        text = (
            f"{quote_ident(TAG_FACTORY)} = {quote_string(self.config.factory)}"
            f" AND {quote_ident(TAG_MACHINE)} =~ {regex_any(sorted(machines))}"
        )
        if start_ms is not None:
            text += f" AND time > {time_literal(start_ms)}"
        return text + f" AND time <= {time_literal(end_ms)}"

    def key(self, kind: str, name: str, machine: str) -> tuple[str, ...]:
        """A machine's hourly values of one kind in the BaselineCache."""
        db = self.db
        return (db.url, db.database, self.config.factory, kind, name, machine)

    def where_span(self, machines: Iterable[str], start_ms: int, end_ms: int) -> str:
        """As `where`, over [start, end): sums stamped at the start of what they add up."""
        return (
            f"{quote_ident(TAG_FACTORY)} = {quote_string(self.config.factory)}"
            f" AND {quote_ident(TAG_MACHINE)} =~ {regex_any(sorted(machines))}"
            f" AND time >= {time_literal(start_ms)} AND time < {time_literal(end_ms)}"
        )


def _evaluate(
    db: InfluxQL,
    config: Config,
    now_ms: int,
    last_service: LastService,
    cache: BaselineCache,
    *,
    rollups: bool,
) -> list[Finding]:
    cycle = _Cycle(db, config, now_ms, last_service, cache, rollups)
    _fill_baselines(cycle)
    finishers: list[Finisher] = []
    for rule in config.maintenance.rules:
        machines = config.rule_machines(rule)
        if machines:
            finishers.append(_PLANNERS[rule.test](cycle, rule, machines))
    answers = _run(db, cycle.statements)
    return [finding for finish in finishers for finding in finish(answers)]


class _NoRollups(Exception):
    """The retention policy of the hourly and daily sums is not on this server."""


def _run(db: InfluxQL, statements: Sequence[str]) -> Answers:
    """Every statement's answer (InfluxQL.query_each); a missing policy of the sums says so."""
    try:
        return db.query_each(statements, per_request=_STATEMENTS_PER_REQUEST)
    except QueryError as exc:
        if _NO_POLICY in str(exc):
            raise _NoRollups from exc
        raise


def _by_machine(answer: list[Series]) -> dict[str, list[dict[str, Any]]]:
    """Rows per machine tag, series of one machine (several sectors or shifts) merged."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for series in answer:
        rows.setdefault(series.tags.get(TAG_MACHINE, ""), []).extend(series.rows)
    return rows


def _one_row(answer: list[Series]) -> dict[str, dict[str, Any]]:
    """The single row of an aggregate per machine."""
    return {machine: rows[0] for machine, rows in _by_machine(answer).items() if rows}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _nice(value: float) -> float | int:
    """A number for a title: one decimal, or three significant digits below 1."""
    if not math.isfinite(value):
        return value
    magnitude = abs(value)
    digits = 1 if magnitude >= 1 or magnitude == 0 else 2 - math.floor(math.log10(magnitude))
    rounded = round(value, digits)
    if rounded == int(rounded):
        return int(rounded)
    return rounded


def _base_values(
    config: Config, machine: Machine, signal: str | None
) -> dict[str, str | int | float]:
    values: dict[str, str | int | float] = {
        "machine": machine.id,
        "name": machine.name or machine.id,
        "sector": machine.sector,
        "signal": signal or "",
        "unit": "",
    }
    if signal is not None:
        found = config.signals_of(machine).get(signal)
        if found is not None and found.unit:
            values["unit"] = found.unit
    return values


def _finding(
    rule: Rule,
    machine: Machine,
    verdict: Verdict,
    now_ms: int,
    values: Mapping[str, str | int | float],
    readings: Sequence[Reading] = (),
) -> Finding:
    kept = tuple(sorted(readings, key=lambda r: r.time_ms)[-MAX_READINGS:])
    return Finding(rule.id, machine.id, verdict, now_ms, dict(values), kept)


def _bucket_ms(window_ms: int, buckets: int) -> int:
    """A GROUP BY time() interval in whole seconds cutting the window into about `buckets`."""
    return max(1000, -(-window_ms // buckets // 1000) * 1000)


def _bucket_readings(
    rows: Sequence[Mapping[str, Any]], column: str, signal: str, start_ms: int, end_ms: int
) -> list[Reading]:
    """The non-empty buckets of a GROUP BY time() answer as readings at their start times."""
    found = []
    for row in rows:
        value = _number(row.get(column))
        if value is not None:
            found.append(Reading(max(int(row["time"]), start_ms), signal, value))
    return [r for r in found if r.time_ms <= end_ms]


# -- threshold ----------------------------------------------------------------------------------


def _plan_threshold(cycle: _Cycle, rule: Rule, machines: list[Machine]) -> Finisher:
    """Fire when every value stored over the last `for_minutes` is past the limit, the one in
    force when that window began included (so the values span the window); clear when every
    value over the last `clear_minutes` is back past the clear level, likewise; hold otherwise.
    A value between the clear level and the limit keeps whatever the ticket is."""
    spec = rule.threshold
    assert spec is not None
    now = cycle.now_ms
    ids = [m.id for m in machines]
    signal = quote_ident(spec.signal)
    fire_ms, clear_ms = round(spec.for_minutes * MINUTE_MS), round(spec.clear_minutes * MINUTE_MS)

    def window(span_ms: int) -> tuple[int, int]:
        stats = cycle.add(
            f"SELECT min({signal}) AS low, max({signal}) AS high, count({signal}) AS n"
            f" FROM {cycle.source(READING)} WHERE {cycle.where(ids, now - span_ms, now)}"
            f" GROUP BY {quote_ident(TAG_MACHINE)}"
        )
        lookback = max(span_ms, IN_FORCE_LOOKBACK_MS)
        in_force = cycle.add(
            f"SELECT last({signal}) AS value FROM {cycle.source(READING)}"
            f" WHERE {cycle.where(ids, now - span_ms - lookback, now - span_ms)}"
            f" GROUP BY {quote_ident(TAG_MACHINE)}"
        )
        return stats, in_force

    fire_at = window(fire_ms)
    clear_at = fire_at if clear_ms == fire_ms else window(clear_ms)
    shown_ms = max(fire_ms, clear_ms)
    bucket = _bucket_ms(shown_ms, MAX_READINGS)
    shown = cycle.add(
        f"SELECT last({signal}) AS value FROM {cycle.source(READING)}"
        f" WHERE {cycle.where(ids, now - shown_ms, now)}"
        f" GROUP BY time({bucket // 1000}s), {quote_ident(TAG_MACHINE)}"
    )
    above = spec.above is not None
    limit = spec.above if spec.above is not None else spec.below
    assert limit is not None
    clear_level = spec.clear_below if above else spec.clear_above
    if clear_level is None:
        clear_level = limit

    def past_limit(value: float) -> bool:
        return value > limit if above else value < limit

    def back(value: float) -> bool:
        return value < clear_level if above else value > clear_level

    def every(
        answers: Answers, at: tuple[int, int], machine: str, test: Callable[[float], bool]
    ) -> bool:
        stats = _one_row(answers[at[0]]).get(machine, {})
        start = _one_row(answers[at[1]]).get(machine, {})
        low, high, count = (_number(stats.get(k)) for k in ("low", "high", "n"))
        in_force = _number(start.get("value"))
        if low is None or high is None or not count or in_force is None:
            return False  # too little data: no value in the window, or none in force at its start
        return test(low) and test(high) and test(in_force)

    def finish(answers: Answers) -> list[Finding]:
        buckets = _by_machine(answers[shown])
        findings = []
        for machine in machines:
            readings = _bucket_readings(
                buckets.get(machine.id, []), "value", spec.signal, now - shown_ms, now
            )
            verdict: Verdict = "hold"
            if every(answers, fire_at, machine.id, past_limit):
                verdict = "fire"
            elif every(answers, clear_at, machine.id, back):
                verdict = "clear"
            values = _base_values(cycle.config, machine, spec.signal)
            values.update(limit=_nice(limit), clear=_nice(clear_level))
            values["value"] = _nice(readings[-1].value) if readings else ""
            findings.append(_finding(rule, machine, verdict, now, values, readings))
        return findings

    return finish


# -- rate of change -----------------------------------------------------------------------------


def _plan_rate(cycle: _Cycle, rule: Rule, machines: list[Machine]) -> Finisher:
    """The slope over the window by least squares, per hour: over the means of about 20 time
    buckets, each weighted by its number of values (the same line as over the raw values when
    they are evenly spread, at a twentieth of the data). Rising (falling) faster than the rate
    fires; slower than half of it clears; in between holds. Fewer than three buckets with
    values, or values covering less than half the window, hold."""
    spec = rule.rate
    assert spec is not None
    now = cycle.now_ms
    window_ms = round(spec.window_minutes * MINUTE_MS)
    start = now - window_ms
    bucket = _bucket_ms(window_ms, RATE_BUCKETS)
    signal = quote_ident(spec.signal)
    index = cycle.add(
        f"SELECT mean({signal}) AS mean, count({signal}) AS n FROM {cycle.source(READING)}"
        f" WHERE {cycle.where([m.id for m in machines], start, now)}"
        f" GROUP BY time({bucket // 1000}s), {quote_ident(TAG_MACHINE)}"
    )
    rising = spec.rising_per_hour is not None
    limit = spec.rising_per_hour if spec.rising_per_hour is not None else spec.falling_per_hour
    assert limit is not None

    def finish(answers: Answers) -> list[Finding]:
        rows = _by_machine(answers[index])
        findings = []
        for machine in machines:
            points: list[tuple[float, float, float]] = []  # (centre ms, mean, weight)
            readings = []
            for row in rows.get(machine.id, []):
                mean, weight = _number(row.get("mean")), _number(row.get("n"))
                if mean is None or not weight:
                    continue
                begin = max(int(row["time"]), start)
                end = min(int(row["time"]) + bucket, now)
                centre = (begin + end) / 2
                points.append((centre, mean, weight))
                readings.append(Reading(round(centre), spec.signal, mean))
            slope = _slope_per_hour(points)
            covered = points[-1][0] - points[0][0] if points else 0
            verdict: Verdict = "hold"
            values = _base_values(cycle.config, machine, spec.signal)
            values["limit"] = _nice(limit)
            values["value"] = ""
            if slope is not None and len(points) >= 3 and covered >= window_ms / 2:
                speed = slope if rising else -slope  # in the rule's direction
                if speed > limit:
                    verdict = "fire"
                elif speed < limit / 2:
                    verdict = "clear"
                values.update(value=_nice(speed), slope=_nice(slope))
            findings.append(_finding(rule, machine, verdict, now, values, readings))
        return findings

    return finish


def _slope_per_hour(points: Sequence[tuple[float, float, float]]) -> float | None:
    """Weighted least squares slope of (time ms, value, weight), in value units per hour."""
    total = sum(w for _, _, w in points)
    if len(points) < 2 or total <= 0:
        return None
    mean_t = sum(t * w for t, _, w in points) / total
    mean_v = sum(v * w for _, v, w in points) / total
    spread = sum(w * (t - mean_t) ** 2 for t, _, w in points)
    if spread <= 0:
        return None
    slope = sum(w * (t - mean_t) * (v - mean_v) for t, v, w in points) / spread
    return slope * HOUR_MS


# -- drift from the machine's own baseline ------------------------------------------------------


def _plan_drift(cycle: _Cycle, rule: Rule, machines: list[Machine]) -> Finisher:
    """The recent median against the machine's own baseline: the median and MAD of the hourly
    medians of the signal over the past `baseline_days` (whole UTC hours, settled, before the
    recent window). Hourly medians keep the baseline robust — one odd day is 24 of 336 values
    and moves neither median nor MAD much — and they are the right yardstick for a median over
    the recent window, whose own spread is that of medians, not of single values. Each settled
    hour is read once (`BaselineCache`, filled by `_fill_baselines` before the cycle).

    only_running (machines with a `state` block): an hour counts only when the machine ran for
    3/4 of it or more (its hourly `utilization` sums), and the recent window only when it did
    so over the minutes stored for it; otherwise the rule holds, so a machine cooling down
    while idle never looks drifted. Such an hour's median lies between the 33rd and 67th
    percentile of its values while running, whatever it read the rest of the time: not as exact
    as picking running values one by one against `machine_state`, but robust, and it needs the
    values of no stretch of time twice.

    |recent − median| > mads × MAD fires, < clear_mads × MAD clears, else holds. The MAD is
    floored at the larger of the signal's resolution (1 for an integer register, its scale when
    scaled; 0 for floats) and 1 % of |median|, so a signal that never varied must move by
    mads % of its level before it counts, and nothing is divided by zero. Fewer than 12 hourly
    values, or none more than a day older than the newest, hold."""
    spec = rule.drift
    assert spec is not None
    now = cycle.now_ms
    recent_ms = round(spec.recent_minutes * MINUTE_MS)
    start_h, end_h = _baseline_hours(spec, now)
    signal = quote_ident(spec.signal)
    ids = [m.id for m in machines]
    running_ids = _running_ids(spec, machines)
    recent = cycle.add(
        f"SELECT median({signal}) AS median, count({signal}) AS n FROM {cycle.source(READING)}"
        f" WHERE {cycle.where(ids, now - recent_ms, now)} GROUP BY {quote_ident(TAG_MACHINE)}"
    )
    recent_running = -1
    if running_ids:
        first_minute = (now - recent_ms) // MINUTE_MS * MINUTE_MS
        recent_running = cycle.add(
            f'SELECT sum("running_s") AS running, count("running_s") AS minutes'
            f" FROM {cycle.source(UTILIZATION)}"
            f" WHERE {cycle.where_span(running_ids, first_minute, now)}"
            f" GROUP BY {quote_ident(TAG_MACHINE)}"
        )

    def finish(answers: Answers) -> list[Finding]:
        now_rows = _one_row(answers[recent])
        running_rows = _one_row(answers[recent_running]) if recent_running >= 0 else {}
        findings = []
        for machine in machines:
            medians = cycle.cache._get(cycle.key("median", spec.signal, machine.id))
            watch_running = machine.id in running_ids
            running = cycle.cache._get(cycle.key("running", "running_s", machine.id))
            samples: list[tuple[int, float]] = []
            for hour in range(start_h, end_h, HOUR_MS):
                value = medians.get(hour)
                if value is None:
                    continue
                ran = running.get(hour) if watch_running else None
                if watch_running and (ran is None or ran < RUNNING_SHARE * HOUR_MS / 1000):
                    continue
                samples.append((hour, value))
            values = _base_values(cycle.config, machine, spec.signal)
            values.update(value="", limit="", baseline="", mad="")
            readings = [Reading(hour, spec.signal, value) for hour, value in samples]
            row = now_rows.get(machine.id, {})
            current = _number(row.get("median")) if row.get("n") else None
            verdict: Verdict = "hold"
            if current is not None:
                values["value"] = _nice(current)
                readings.append(Reading(now, spec.signal, current))
            ran_now = True
            if watch_running:
                stored = running_rows.get(machine.id, {})
                seconds, minutes = _number(stored.get("running")), _number(stored.get("minutes"))
                ran_now = bool(minutes) and (seconds or 0) >= RUNNING_SHARE * 60 * (minutes or 0)
            enough = len(samples) >= BASELINE_MIN_HOURS and samples[-1][0] - samples[0][0] > DAY_MS
            if enough:
                level = statistics.median(v for _, v in samples)
                mad = statistics.median(abs(v - level) for _, v in samples)
                floor = max(
                    _resolution(cycle.config, machine, spec.signal),
                    MAD_FLOOR_SHARE * abs(level),
                    _MAD_FLOOR_ABSOLUTE,
                )
                mad = max(mad, floor)
                values.update(baseline=_nice(level), mad=_nice(mad))
                side = 1 if current is None or current >= level else -1
                values["limit"] = _nice(level + side * spec.mads * mad)
                if current is not None and ran_now:
                    distance = abs(current - level)
                    values["mads"] = _nice(distance / mad)
                    if distance > spec.mads * mad:
                        verdict = "fire"
                    elif distance < spec.clear_mads * mad:
                        verdict = "clear"
            findings.append(_finding(rule, machine, verdict, now, values, readings))
        return findings

    return finish


def _baseline_hours(spec: Drift, now_ms: int) -> tuple[int, int]:
    """[start, end) of a drift baseline's hours: the past days, up to the recent window and the
    last settled hour."""
    recent_ms = round(spec.recent_minutes * MINUTE_MS)
    end_h = min(now_ms - recent_ms, now_ms - SETTLED_MS) // HOUR_MS * HOUR_MS
    start_h = -(-(now_ms - spec.baseline_days * DAY_MS) // HOUR_MS) * HOUR_MS
    return start_h, end_h


def _running_ids(spec: Drift, machines: Sequence[Machine]) -> list[str]:
    """The machines whose running time a drift rule looks at: those with a `state` block."""
    return [m.id for m in machines if spec.only_running and m.state is not None]


def _fill_baselines(cycle: _Cycle) -> None:
    """Read the hours of drift baselines the cache lacks, before the rules are planned. A first
    cycle over weeks of 1 Hz data scans millions of values (InfluxDB's median sorts each hour),
    so they go a day of 50 machines per request at most, each answer kept at once: no request
    runs into the client's timeout, and what was read stays read if a later one fails."""
    reads: list[tuple[float, str, Callable[[list[Series]], None]]] = []
    now = cycle.now_ms

    def want(
        span: tuple[int, int],
        kind: str,
        name: str,
        ids: Sequence[str],
        select: str,
        source: str,
        weight: float,
    ) -> None:
        # Machines alike (all of them, but for those off or unplugged a while) read together.
        groups: dict[tuple[int, int], list[str]] = {}
        for machine in ids:
            for stretch in cycle.cache._unknown(cycle.key(kind, name, machine), *span, now):
                groups.setdefault(stretch, []).append(machine)
        for (first, last), group in groups.items():
            for begin in range(first, last, DAY_MS):
                end = min(begin + DAY_MS, last)
                statement = (
                    f"SELECT {select} AS value FROM {source}"
                    f" WHERE {cycle.where_span(group, begin, end)}"
                    f" GROUP BY time(1h), {quote_ident(TAG_MACHINE)}"
                )
                cost = weight * len(group) * (end - begin) / HOUR_MS
                reads.append((cost, statement, _storer(cycle, kind, name, group, begin, end)))

    for rule in cycle.config.maintenance.rules:
        spec = rule.drift
        if spec is None:
            continue
        machines = cycle.config.rule_machines(rule)
        span = _baseline_hours(spec, now)
        median = f"median({quote_ident(spec.signal)})"
        want(
            span, "median", spec.signal, [m.id for m in machines], median, cycle.source(READING), 1
        )
        # Hourly sums (or minutes) are a sixtieth of the raw values or less.
        hourly = cycle.source(UTILIZATION_HOURLY if cycle.rollups else UTILIZATION)
        running = _running_ids(spec, machines)
        want(span, "running", "running_s", running, 'sum("running_s")', hourly, 1 / 60)
    batch: list[tuple[str, Callable[[list[Series]], None]]] = []
    spent = 0.0

    def read_batch() -> None:
        answers = _run(cycle.db, [statement for statement, _ in batch])
        for (_, store), answer in zip(batch, answers, strict=True):
            store(answer)
        batch.clear()

    for cost, statement, store in reads:
        if batch and spent + cost > _BASELINE_BUDGET:
            read_batch()
            spent = 0.0
        batch.append((statement, store))
        spent += cost
    if batch:
        read_batch()


def _storer(
    cycle: _Cycle, kind: str, name: str, machines: Sequence[str], begin: int, end: int
) -> Callable[[list[Series]], None]:
    def store(answer: list[Series]) -> None:
        rows = _by_machine(answer)
        for machine in machines:
            found = {int(r["time"]): _number(r.get("value")) for r in rows.get(machine, [])}
            known = cycle.cache._get(cycle.key(kind, name, machine))
            for hour in range(begin, end, HOUR_MS):
                known[hour] = found.get(hour)

    return store


def _resolution(config: Config, machine: Machine, signal: str) -> float:
    """The smallest step a signal's stored value can take: 1 for integers, the scale of scaled
    integer registers, 0 (unknown) for floats."""
    found = config.signals_of(machine).get(signal)
    if found is None:
        return 0.0
    if found.field_kind == "int":
        return 1.0
    return abs(found.scale) if found.type.startswith(("int", "uint")) else 0.0


# -- meters for preventive maintenance ----------------------------------------------------------


def _plan_meter(cycle: _Cycle, rule: Rule, machines: list[Machine]) -> Finisher:
    """Run-hours (sum of `running_s`), cycles (sum of `produced`) and days since the last
    completed service of this rule on the machine — or the rule's `since` date (local midnight),
    or the machine's first stored minute. Fires once any reaches its limit and stays so (a meter
    never runs back by itself); a completed service moves its start and the meter restarts,
    below every limit: "clear". Whole local days and hours settled 15 minutes ago are read from
    the daily and hourly sums, the rest from the minutes."""
    spec = rule.meter
    assert spec is not None
    now = cycle.now_ms
    zone = zoneinfo.ZoneInfo(cycle.config.timezone)
    fixed = _local_midnight(spec.since, zone) if spec.since is not None else None
    starts: dict[str, int | None] = {}
    for machine in machines:
        served = cycle.last_service(machine.id, rule.id)
        starts[machine.id] = served if served is not None else fixed
    groups: dict[int | None, list[str]] = {}
    for machine_id, since in starts.items():
        groups.setdefault(since, []).append(machine_id)
    sums: list[int] = []
    first_minutes: list[int] = []
    for since, group in groups.items():
        begin = 0 if since is None else since  # from the first minute stored, whenever
        if cycle.rollups:
            parts = _split(begin, now, now - SETTLED_MS, zone)
        else:
            parts = [(UTILIZATION, begin, now)] if begin < now else []
        for measurement, start, end in parts:
            sums.append(
                cycle.add(
                    f'SELECT sum("running_s") AS running, sum("produced") AS produced'
                    f" FROM {cycle.source(measurement)}"
                    f" WHERE {cycle.where_span(group, start, end)}"
                    f" GROUP BY {quote_ident(TAG_MACHINE)}"
                )
            )
        if since is None:
            first_minutes.append(
                cycle.add(
                    f'SELECT "running_s" FROM {cycle.source(UTILIZATION)}'
                    f" WHERE {cycle.where(group, None, now)}"
                    f" GROUP BY {quote_ident(TAG_MACHINE)} LIMIT 1"
                )
            )
    limits = {"run_hours": spec.run_hours, "cycles": spec.cycles, "days": spec.days}

    def finish(answers: Answers) -> list[Finding]:
        running: dict[str, float] = {}
        produced: dict[str, float] = {}
        for index in sums:
            for machine_id, row in _one_row(answers[index]).items():
                running[machine_id] = running.get(machine_id, 0) + (
                    _number(row.get("running")) or 0
                )
                produced[machine_id] = produced.get(machine_id, 0) + (
                    _number(row.get("produced")) or 0
                )
        first_seen: dict[str, int] = {}
        for index in first_minutes:
            for machine_id, rows in _by_machine(answers[index]).items():
                if rows:
                    first_seen[machine_id] = int(rows[0]["time"])
        findings = []
        for machine in machines:
            since = starts[machine.id]
            if since is None:
                since = first_seen.get(machine.id)
            values = _base_values(cycle.config, machine, None)
            if since is None:  # nothing stored, no date given: nothing to count from
                values.update(value="", limit="", reached="")
                findings.append(_finding(rule, machine, "hold", now, values))
                continue
            measured = {
                "run_hours": running.get(machine.id, 0) / 3600,
                "cycles": produced.get(machine.id, 0),
                "days": max(0, now - since) / DAY_MS,
            }
            values.update(
                run_hours=_nice(measured["run_hours"]),
                cycles=int(measured["cycles"]),
                days=_nice(measured["days"]),
                since=dt.datetime.fromtimestamp(since / 1000, zone).date().isoformat(),
            )
            # The meter nearest its limit (the one reached, once one is) names value and limit.
            due = max(
                ((measured[k] / v, k) for k, v in limits.items() if v is not None),
                key=lambda pair: pair[0],
            )
            name = due[1]
            limit = limits[name]
            assert limit is not None
            # `progress` (the largest share of a limit) is for the dashboards' gauges
            # (maintenance/status.py); templates may show it too.
            values.update(value=values[name], limit=_nice(limit), reached="", progress=due[0])
            verdict: Verdict = "clear"
            if due[0] >= 1:
                verdict = "fire"
                values["reached"] = name
            findings.append(_finding(rule, machine, verdict, now, values))
        return findings

    return finish


def _local_midnight(day: dt.date, zone: zoneinfo.ZoneInfo) -> int:
    return round(dt.datetime.combine(day, dt.time(), zone).timestamp() * 1000)


def _split(
    start_ms: int, end_ms: int, settled_ms: int, zone: zoneinfo.ZoneInfo
) -> list[tuple[str, int, int]]:
    """[start, end) by where to read it (collector.rebuild.split_by_source, as KPIs do)."""
    return split_by_source(start_ms, end_ms, settled_ms, _Days(zone))


class _Days:
    """The two calendar questions split_by_source asks, for a zone alone."""

    def __init__(self, zone: zoneinfo.ZoneInfo) -> None:
        self.zone = zone

    def local_day(self, time_ms: int) -> dt.date:
        return dt.datetime.fromtimestamp(time_ms / 1000, self.zone).date()

    def local_midnight_ms(self, day: dt.date) -> int:
        return _local_midnight(day, self.zone)


# -- offline ------------------------------------------------------------------------------------


def _plan_offline(cycle: _Cycle, rule: Rule, machines: list[Machine]) -> Finisher:
    """No `reading` point of the machine (of the signal, when the rule names one) in the last
    `minutes` fires, with the minutes since the last one (none ever stored holds); a reading in
    that time clears. The newest point is found by a raw selection read backwards (LIMIT 1),
    which stops at the first point however old."""
    spec = rule.offline
    assert spec is not None
    now = cycle.now_ms
    fields = quote_ident(spec.signal) if spec.signal is not None else "*"
    index = cycle.add(
        f"SELECT {fields} FROM {cycle.source(READING)}"
        f" WHERE {cycle.where([m.id for m in machines], None, now)}"
        f" GROUP BY {quote_ident(TAG_MACHINE)} ORDER BY time DESC LIMIT 1"
    )
    limit_ms = spec.minutes * MINUTE_MS
    tags = {TAG_FACTORY, "sector", TAG_MACHINE, "time"}

    def finish(answers: Answers) -> list[Finding]:
        newest: dict[str, dict[str, Any]] = {}
        for machine_id, rows in _by_machine(answers[index]).items():
            for row in rows:
                if machine_id not in newest or row["time"] > newest[machine_id]["time"]:
                    newest[machine_id] = row
        findings = []
        for machine in machines:
            values = _base_values(cycle.config, machine, spec.signal)
            values["limit"] = _nice(spec.minutes)
            latest = newest.get(machine.id)
            readings = []
            if latest is None:
                # Nothing ever stored: a board not fitted yet cannot be told from a dead one,
                # and a fresh start must not raise a ticket for every machine before its data.
                verdict: Verdict = "hold"
                values["value"] = "never"
            else:
                last = int(latest["time"])
                values["value"] = _nice(max(0, now - last) / MINUTE_MS)
                verdict = "clear" if now - last < limit_ms else "fire"
                for name, value in latest.items():
                    number = _number(value)
                    if name not in tags and number is not None:
                        readings.append(Reading(last, name, number))
            findings.append(_finding(rule, machine, verdict, now, values, readings))
        return findings

    return finish


# -- error rate ---------------------------------------------------------------------------------


def _plan_error_rate(cycle: _Cycle, rule: Rule, machines: list[Machine]) -> Finisher:
    """Errors per poll over the window, from the `collector` counters of the machine: the
    increase of `errors` over the increase of `polls` between the points stored in the window
    (a counter that falls is a collector restart: it counts from 0 again). Above the level fires,
    at or below half of it clears; no polls in the window holds."""
    spec = rule.error_rate
    assert spec is not None
    now = cycle.now_ms
    window_ms = round(spec.window_minutes * MINUTE_MS)
    index = cycle.add(
        f'SELECT "polls", "errors" FROM {cycle.source(COLLECTOR)}'
        f" WHERE {cycle.where([m.id for m in machines], now - window_ms, now)} GROUP BY *"
    )

    def finish(answers: Answers) -> list[Finding]:
        by_machine: dict[str, list[Series]] = {}
        for series in answers[index]:
            by_machine.setdefault(series.tags.get(TAG_MACHINE, ""), []).append(series)
        findings = []
        for machine in machines:
            polls = errors = 0.0
            readings = []
            for series in by_machine.get(machine.id, []):
                polls += _increase(_number(r.get("polls")) for r in series.rows)
                errors += _increase(_number(r.get("errors")) for r in series.rows)
                for row in series.rows[-MAX_READINGS // 2 :]:
                    for name in ("polls", "errors"):
                        number = _number(row.get(name))
                        if number is not None:
                            readings.append(Reading(int(row["time"]), name, number))
            values = _base_values(cycle.config, machine, None)
            values.update(
                limit=f"{_nice(spec.above * 100)} %",
                polls=int(polls),
                errors=int(errors),
                value="",
                unit="%",
            )
            verdict: Verdict = "hold"
            if polls > 0:
                rate = errors / polls
                values.update(value=f"{_nice(rate * 100)} %", rate=_nice(rate))
                verdict = (
                    "fire" if rate > spec.above else "clear" if rate <= spec.above / 2 else "hold"
                )
            findings.append(_finding(rule, machine, verdict, now, values, readings))
        return findings

    return finish


def _increase(values: Iterable[float | None]) -> float:
    """How much a counter grew over its stored values, across restarts (a fall to a smaller
    value means it started again from 0)."""
    total = 0.0
    previous: float | None = None
    for value in values:
        if value is None:
            continue
        if previous is not None:
            total += value - previous if value >= previous else value
        previous = value
    return total


_PLANNERS: dict[str, Callable[[_Cycle, Rule, list[Machine]], Finisher]] = {
    "threshold": _plan_threshold,
    "rate": _plan_rate,
    "drift": _plan_drift,
    "meter": _plan_meter,
    "offline": _plan_offline,
    "error_rate": _plan_error_rate,
}
