"""Maintenance rules against the real InfluxDB: seeded data for each kind of rule fires, clears,
holds between its levels (no flapping) and holds on too little data; meters restart when a
service is completed; the evaluation of 50 machines × 10 rules is timed (printed, not asserted)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
import pytest

from collector.config import Config
from collector.influxql import InfluxQL, QueryError
from collector.schema import Point
from maintenance.model import Finding
from maintenance.rules import BaselineCache, evaluate
from tests.conftest import InfluxDBDatabase
from tests.maintenance.seed import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    NOW_MS,
    health,
    machine_ids,
    minutes,
    plant,
    reading,
    series,
    write,
)
from tests.services import free_port

pytestmark = pytest.mark.integration

SECOND_MS = 1000


def never(machine: str, rule: str) -> int | None:
    return None


class Counting(httpx.BaseTransport):
    """The real HTTP transport, keeping the InfluxQL text of every request."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.queries: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = httpx.QueryParams(request.read().decode())
        self.queries.append(body.get("q", ""))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def run(
    config: Config,
    now_ms: int = NOW_MS,
    *,
    last_service: Callable[[str, str], int | None] = never,
    baselines: BaselineCache | None = None,
    transport: httpx.BaseTransport | None = None,
) -> dict[tuple[str, str], Finding]:
    """The findings of one cycle by (rule, machine); drift baselines from the process's cache
    unless `baselines` says otherwise (every test has a database of its own)."""
    with InfluxQL.from_config(config.influxdb, transport=transport) as db:
        findings = evaluate(db, config, now_ms, last_service=last_service, baselines=baselines)
    by_key = {(f.rule, f.machine): f for f in findings}
    assert len(by_key) == len(findings), "one finding per rule and machine"
    return by_key


def verdicts(findings: Mapping[tuple[str, str], Finding]) -> dict[str, str]:
    """machine → verdict (tests with one rule)."""
    return {machine: f.verdict for (_, machine), f in findings.items()}


def steady(machine: str, signal: str, value: float, start_ms: int, end_ms: int) -> list[Point]:
    """A value every 10 s over [start, end)."""
    return series(machine, signal, ((t, value) for t in range(start_ms, end_ms, 10 * SECOND_MS)))


# -- threshold ----------------------------------------------------------------------------------

HOT: dict[str, Any] = {
    "id": "hot",
    "machines": ["press-1", "press-2", "press-3", "press-4"],
    "threshold": {
        "signal": "temperature",
        "above": 85,
        "for_minutes": 5,
        "clear_below": 80,
        "clear_minutes": 10,
    },
}


async def test_threshold_fires_clears_and_holds_between_its_levels(
    influxdb: InfluxDBDatabase,
) -> None:
    config = plant(influxdb.url, influxdb.database, HOT, machines=4)
    start = NOW_MS - 30 * MINUTE_MS
    await write(
        config,
        [
            *steady("press-1", "temperature", 90.0, start, NOW_MS),  # hot all along
            *steady("press-2", "temperature", 75.0, start, NOW_MS),  # cool all along
            *steady("press-3", "temperature", 82.0, start, NOW_MS),  # between the levels
            *steady("press-4", "temperature", 84.9, start, NOW_MS - 2 * MINUTE_MS),
            *steady("press-4", "temperature", 85.1, NOW_MS - 2 * MINUTE_MS, NOW_MS + 1),
        ],
    )
    findings = run(config)
    assert verdicts(findings) == {
        "press-1": "fire",
        "press-2": "clear",
        "press-3": "hold",
        "press-4": "hold",  # above the limit for 2 of the 5 minutes
    }
    hot = findings[("hot", "press-1")]
    assert hot.values["value"] == 90
    assert hot.values["limit"] == 85
    assert hot.values["clear"] == 80
    assert hot.values["unit"] == "°C"
    assert hot.values["signal"] == "temperature"
    assert 10 <= len(hot.readings) <= 20
    assert all(r.signal == "temperature" and r.value == 90 for r in hot.readings)
    assert [r.time_ms for r in hot.readings] == sorted(r.time_ms for r in hot.readings)
    assert findings[("hot", "press-4")].values["value"] == 85.1


async def test_threshold_needs_values_spanning_its_window(influxdb: InfluxDBDatabase) -> None:
    config = plant(influxdb.url, influxdb.database, HOT, machines=4)
    await write(
        config,
        [
            # Hot, but stored only for the last 3 of the 5 minutes: too little to fire.
            *steady("press-1", "temperature", 95.0, NOW_MS - 3 * MINUTE_MS, NOW_MS),
            # Hot until 20 minutes ago, then silent: nothing stored in the window.
            *steady("press-2", "temperature", 95.0, NOW_MS - HOUR_MS, NOW_MS - 20 * MINUTE_MS),
            # Cool but for 4 minutes only of the 10 the clear needs.
            *steady("press-3", "temperature", 70.0, NOW_MS - 4 * MINUTE_MS, NOW_MS),
            # A sensor that sends once a minute: its values span the window.
            *series(
                "press-4",
                "temperature",
                ((t, 99.0) for t in range(NOW_MS - 20 * MINUTE_MS, NOW_MS, MINUTE_MS)),
            ),
        ],
    )
    assert verdicts(run(config)) == {
        "press-1": "hold",
        "press-2": "hold",
        "press-3": "hold",
        "press-4": "fire",
    }


async def test_threshold_below_a_level(influxdb: InfluxDBDatabase) -> None:
    rule = {
        "id": "low-pressure",
        "machines": ["press-1", "press-2", "press-3"],
        "threshold": {"signal": "pressure", "below": 40, "clear_above": 50, "for_minutes": 2},
    }
    config = plant(influxdb.url, influxdb.database, rule, machines=3)
    start = NOW_MS - 20 * MINUTE_MS
    await write(
        config,
        [
            *steady("press-1", "pressure", 35, start, NOW_MS),
            *steady("press-2", "pressure", 60, start, NOW_MS),
            *steady("press-3", "pressure", 45, start, NOW_MS),
        ],
    )
    assert verdicts(run(config)) == {"press-1": "fire", "press-2": "clear", "press-3": "hold"}


async def test_threshold_does_not_flap(influxdb: InfluxDBDatabase) -> None:
    """Hot, then wavering around the limit but never below the clear level, hot again, then
    cool for good: evaluated every minute, the verdicts go fire (hold) fire … clear, and never
    clear between two fires."""
    config = plant(influxdb.url, influxdb.database, {**HOT, "machines": ["press-1"]}, machines=1)
    start = NOW_MS - 3 * HOUR_MS

    def temperature(t: int) -> float:
        minutes_in = (t - start) / MINUTE_MS
        if minutes_in < 30:
            return 90.0
        if minutes_in < 90:  # 83-87 °C: crosses the limit every few minutes, never under 80
            return 85.0 + 2 * math.sin(minutes_in)
        if minutes_in < 120:
            return 91.0
        return 72.0

    await write(
        config,
        series(
            "press-1", "temperature", ((t, temperature(t)) for t in range(start, NOW_MS, 10_000))
        ),
    )
    seen = []
    for now in range(start + MINUTE_MS, NOW_MS, MINUTE_MS):
        seen.append(run(config, now)[("hot", "press-1")].verdict)
    changes = [v for i, v in enumerate(seen) if v != "hold" and v not in seen[i - 1 : i]]
    fires = [i for i, v in enumerate(seen) if v == "fire"]
    clears = [i for i, v in enumerate(seen) if v == "clear"]
    assert fires and clears
    assert max(fires) < min(clears), f"cleared between two fires: {changes}"
    assert "fire" in seen[95:110]  # hot again
    assert seen[-1] == "clear"


# -- rate of change -----------------------------------------------------------------------------

RISING: dict[str, Any] = {
    "id": "heating-fast",
    "machines": ["press-1", "press-2", "press-3", "press-4"],
    "rate": {"signal": "temperature", "rising_per_hour": 10, "window_minutes": 60},
}


def ramp(machine: str, per_hour: float, start_ms: int, end_ms: int, seed: int) -> list[Point]:
    rng = random.Random(seed)
    return series(
        machine,
        "temperature",
        (
            (t, 40 + per_hour * (t - start_ms) / HOUR_MS + rng.uniform(-0.3, 0.3))
            for t in range(start_ms, end_ms, 5 * SECOND_MS)
        ),
    )


async def test_rate_fires_clears_holds_and_needs_a_window(influxdb: InfluxDBDatabase) -> None:
    config = plant(influxdb.url, influxdb.database, RISING, machines=4)
    start = NOW_MS - 2 * HOUR_MS
    await write(
        config,
        [
            *ramp("press-1", 20, start, NOW_MS, 1),  # twice the limit
            *ramp("press-2", 0, start, NOW_MS, 2),  # flat
            *ramp("press-3", 7, start, NOW_MS, 3),  # between half the limit and the limit
            *ramp("press-4", 60, NOW_MS - 10 * MINUTE_MS, NOW_MS, 4),  # 10 of the 60 minutes
        ],
    )
    findings = run(config)
    assert verdicts(findings) == {
        "press-1": "fire",
        "press-2": "clear",
        "press-3": "hold",
        "press-4": "hold",
    }
    fast = findings[("heating-fast", "press-1")]
    assert fast.values["value"] == pytest.approx(20, abs=0.5)
    assert fast.values["limit"] == 10
    assert fast.values["unit"] == "°C"
    assert 15 <= len(fast.readings) <= 20
    assert findings[("heating-fast", "press-3")].values["value"] == pytest.approx(7, abs=0.5)


async def test_rate_falling(influxdb: InfluxDBDatabase) -> None:
    rule = {
        "id": "cooling-fast",
        "machines": ["press-1", "press-2"],
        "rate": {"signal": "temperature", "falling_per_hour": 10, "window_minutes": 30},
    }
    config = plant(influxdb.url, influxdb.database, rule)
    start = NOW_MS - HOUR_MS
    await write(
        config, [*ramp("press-1", -25, start, NOW_MS, 1), *ramp("press-2", 25, start, NOW_MS, 2)]
    )
    findings = run(config)
    assert verdicts(findings) == {"press-1": "fire", "press-2": "clear"}
    assert findings[("cooling-fast", "press-1")].values["value"] == pytest.approx(25, abs=1)
    assert findings[("cooling-fast", "press-1")].values["slope"] == pytest.approx(-25, abs=1)


async def test_rate_does_not_flap(influxdb: InfluxDBDatabase) -> None:
    """Rising at 20/h, then at 7-8/h (between half the limit and the limit), then 20/h again,
    then flat: fire … fire, never clear in between, then clear."""
    rule = {**RISING, "machines": ["press-1"], "rate": {**RISING["rate"], "window_minutes": 20}}
    config = plant(influxdb.url, influxdb.database, rule, machines=1)
    start = NOW_MS - 4 * HOUR_MS
    rates = [(60, 20.0), (120, 7.5), (180, 20.0), (240, 0.0)]  # until minute, °C/h
    values = []
    level = 40.0
    for t in range(start, NOW_MS, 10 * SECOND_MS):
        minute_in = (t - start) / MINUTE_MS
        per_hour = next(r for until, r in rates if minute_in < until)
        level += per_hour * 10 / 3600
        values.append((t, level))
    await write(config, series("press-1", "temperature", values))
    seen = [
        run(config, now)[("heating-fast", "press-1")].verdict
        for now in range(start + 30 * MINUTE_MS, NOW_MS, 5 * MINUTE_MS)
    ]
    fires = [i for i, v in enumerate(seen) if v == "fire"]
    clears = [i for i, v in enumerate(seen) if v == "clear"]
    assert fires and clears
    assert max(fires) < min(clears), seen
    assert seen[-1] == "clear"


# -- drift --------------------------------------------------------------------------------------

DRIFT: dict[str, Any] = {
    "id": "running-hot",
    "machines": ["press-1", "press-2", "press-3"],
    "drift": {"signal": "temperature", "baseline_days": 14, "recent_minutes": 60},
}


def noisy(
    machine: str,
    start_ms: int,
    end_ms: int,
    level: float | Callable[[int], float],
    seed: int,
    noise: float = 2.0,
    step_ms: int = 5 * MINUTE_MS,
) -> list[Point]:
    rng = random.Random(seed)
    at = level if callable(level) else (lambda t: level)
    return series(
        machine,
        "temperature",
        ((t, at(t) + rng.uniform(-noise, noise)) for t in range(start_ms, end_ms, step_ms)),
    )


async def test_drift_fires_clears_and_holds(influxdb: InfluxDBDatabase) -> None:
    config = plant(influxdb.url, influxdb.database, DRIFT, machines=3)
    baseline_start, recent = NOW_MS - 5 * DAY_MS, NOW_MS - HOUR_MS
    points: list[Point] = []
    for n, machine in enumerate(machine_ids(3)):
        points += noisy(machine, baseline_start, recent, 50.0, seed=n)
        points += minutes(machine, baseline_start, NOW_MS, running_s=60)
    points += noisy("press-1", recent, NOW_MS, 60.0, seed=10, step_ms=MINUTE_MS)  # drifted
    points += noisy("press-2", recent, NOW_MS, 50.0, seed=11, step_ms=MINUTE_MS)  # as usual
    points += noisy("press-3", recent, NOW_MS, 52.0, seed=12, step_ms=MINUTE_MS)  # in between
    await write(config, points)
    findings = run(config)
    hot = findings[("running-hot", "press-1")]
    level, mad = hot.values["baseline"], hot.values["mad"]
    assert isinstance(level, float | int) and isinstance(mad, float | int)
    assert level == pytest.approx(50, abs=0.5)
    assert 0.3 <= mad <= 1.0
    assert verdicts(findings) == {"press-1": "fire", "press-2": "clear", "press-3": "hold"}, {
        m: f.values for (_, m), f in findings.items()
    }
    assert hot.values["value"] == pytest.approx(60, abs=1)
    assert hot.values["unit"] == "°C"
    assert len(hot.readings) == 20
    assert hot.readings[-1].time_ms == NOW_MS  # the recent median, after hourly medians


async def test_drift_baseline_ignores_one_odd_day(influxdb: InfluxDBDatabase) -> None:
    """press-1 had a day at 80 °C in its baseline, press-2 did not: both baselines stay near
    50 °C with the same spread, and 50.5 °C now is normal for both."""
    config = plant(influxdb.url, influxdb.database, {**DRIFT, "machines": machine_ids(2)})
    baseline_start, recent = NOW_MS - 6 * DAY_MS, NOW_MS - HOUR_MS
    odd_day = (NOW_MS - 3 * DAY_MS, NOW_MS - 2 * DAY_MS)

    def with_odd_day(t: int) -> float:
        return 80.0 if odd_day[0] <= t < odd_day[1] else 50.0

    points = [
        *noisy("press-1", baseline_start, recent, with_odd_day, seed=1),
        *noisy("press-2", baseline_start, recent, 50.0, seed=1),
        *noisy("press-1", recent, NOW_MS, 50.5, seed=3, step_ms=MINUTE_MS),
        *noisy("press-2", recent, NOW_MS, 50.5, seed=3, step_ms=MINUTE_MS),
    ]
    for machine in machine_ids(2):
        points += minutes(machine, baseline_start, NOW_MS, running_s=60)
    await write(config, points)
    findings = run(config)
    odd, plain = findings[("running-hot", "press-1")], findings[("running-hot", "press-2")]
    assert verdicts(findings) == {"press-1": "clear", "press-2": "clear"}
    assert odd.values["baseline"] == pytest.approx(plain.values["baseline"], abs=0.3)
    assert odd.values["mad"] == pytest.approx(plain.values["mad"], abs=0.15)


async def test_drift_needs_two_days_of_baseline(influxdb: InfluxDBDatabase) -> None:
    config = plant(influxdb.url, influxdb.database, {**DRIFT, "machines": machine_ids(2)})
    recent = NOW_MS - HOUR_MS
    points = [
        *noisy("press-1", NOW_MS - 20 * HOUR_MS, recent, 50.0, seed=1),  # less than a day
        *noisy("press-2", NOW_MS - 3 * DAY_MS, NOW_MS - 3 * DAY_MS + 20 * HOUR_MS, 50.0, seed=2),
        *noisy("press-1", recent, NOW_MS, 90.0, seed=3, step_ms=MINUTE_MS),
        *noisy("press-2", recent, NOW_MS, 90.0, seed=4, step_ms=MINUTE_MS),
    ]
    for machine in machine_ids(2):
        points += minutes(machine, NOW_MS - 4 * DAY_MS, NOW_MS, running_s=60)
    await write(config, points)
    # press-2: 20 hours, all on one day three days ago: not two days either.
    assert verdicts(run(config)) == {"press-1": "hold", "press-2": "hold"}


async def test_drift_compares_only_running_time(influxdb: InfluxDBDatabase) -> None:
    """Running every other hour at 50 °C, idle at 30 °C in between. Counting only running hours
    the baseline is 50 °C, and 50 °C now (running) is normal; idle now, the rule holds. The
    same rule over all hours sees a baseline between the two and fires."""
    running = {**DRIFT, "machines": machine_ids(2)}
    every_hour = {**running, "id": "all-hours", "drift": {**DRIFT["drift"], "only_running": False}}
    config = plant(influxdb.url, influxdb.database, running, every_hour)
    start, recent = NOW_MS - 4 * DAY_MS, NOW_MS - HOUR_MS

    def runs(t: int) -> bool:
        return (t // HOUR_MS) % 2 == 0

    points: list[Point] = []
    for n, machine in enumerate(machine_ids(2)):
        points += noisy(machine, start, recent, lambda t: 50.0 if runs(t) else 30.0, seed=n)
        for t in range(start, recent, MINUTE_MS):
            points += minutes(machine, t, t + MINUTE_MS, running_s=60 if runs(t) else 0)
    points += noisy("press-1", recent, NOW_MS, 50.0, seed=7, step_ms=MINUTE_MS)
    points += minutes("press-1", recent, NOW_MS, running_s=60)
    points += noisy("press-2", recent, NOW_MS, 30.0, seed=8, step_ms=MINUTE_MS)
    points += minutes("press-2", recent, NOW_MS, running_s=0)
    await write(config, points)
    findings = run(config)
    assert findings[("running-hot", "press-1")].verdict == "clear"
    assert findings[("running-hot", "press-1")].values["baseline"] == pytest.approx(50, abs=0.5)
    assert findings[("running-hot", "press-2")].verdict == "hold"  # idle now
    assert findings[("all-hours", "press-1")].verdict == "fire"


async def test_drift_on_a_noise_free_signal_floors_the_mad(influxdb: InfluxDBDatabase) -> None:
    """A signal that read exactly 50.0 for days has a MAD of 0: floored at 1 % of 50 (0.5), so
    50.0 and 50.4 now are normal, 51.5 holds and 53 fires — and nothing divides by zero."""
    rule = {**DRIFT, "machines": machine_ids(4)}
    config = plant(influxdb.url, influxdb.database, rule, machines=4)
    start, recent = NOW_MS - 3 * DAY_MS, NOW_MS - HOUR_MS
    points: list[Point] = []
    for machine, now_value in zip(machine_ids(4), (50.0, 50.4, 51.5, 53.0), strict=True):
        points += noisy(machine, start, recent, 50.0, seed=0, noise=0)
        points += noisy(machine, recent, NOW_MS, now_value, seed=0, noise=0, step_ms=MINUTE_MS)
        points += minutes(machine, start, NOW_MS, running_s=60)
    await write(config, points)
    findings = run(config)
    assert verdicts(findings) == {
        "press-1": "clear",
        "press-2": "clear",
        "press-3": "hold",
        "press-4": "fire",
    }
    assert findings[("running-hot", "press-1")].values["mad"] == 0.5


async def test_drift_reads_each_settled_hour_once(influxdb: InfluxDBDatabase) -> None:
    config = plant(influxdb.url, influxdb.database, DRIFT, machines=3)
    start = NOW_MS - 3 * DAY_MS
    points: list[Point] = []
    for n, machine in enumerate(machine_ids(3)):
        points += noisy(machine, start, NOW_MS + 2 * HOUR_MS, 50.0, seed=n)
        points += minutes(machine, start, NOW_MS + 2 * HOUR_MS, running_s=60)
    await write(config, points)
    cache = BaselineCache()
    hourly = []  # statements reading hours of baseline, per cycle
    results = []
    for now in (NOW_MS, NOW_MS, NOW_MS + HOUR_MS):
        counting = Counting()
        results.append(run(config, now, baselines=cache, transport=counting))
        hourly.append(sum(q.count("GROUP BY time(1h)") for q in counting.queries))
    first, again, later = ({k: f.values for k, f in r.items()} for r in results)
    cold = {
        k: f.values for k, f in run(config, NOW_MS + HOUR_MS, baselines=BaselineCache()).items()
    }
    assert first == again
    assert later == cold
    # Medians and running seconds: 14 days a day per statement, then nothing, then the new hour.
    assert hourly == [2 * 14, 0, 2]
    assert len(cache) == 3 * 2 * 14 * 24  # machines × kinds × hours, known for good


# -- meters -------------------------------------------------------------------------------------

OIL: dict[str, Any] = {
    "id": "oil-change",
    "machines": ["press-1", "press-2"],
    "meter": {"run_hours": 10, "cycles": 20_000, "days": 180},
}


async def test_meter_fires_at_its_run_hours_and_restarts_after_a_service(
    influxdb: InfluxDBDatabase,
) -> None:
    config = plant(influxdb.url, influxdb.database, OIL)
    start = NOW_MS - 3 * DAY_MS - 5 * HOUR_MS
    # press-1: 15 s of each minute running, 2 parts a minute: 3 days 5 hours = 19.25 run-hours.
    # press-2: 3 s of each minute: 3.85 run-hours.
    await write(
        config,
        [
            *minutes("press-1", start, NOW_MS, running_s=15, produced=2),
            *minutes("press-2", start, NOW_MS, running_s=3, produced=1),
        ],
    )
    findings = run(config)
    assert verdicts(findings) == {"press-1": "fire", "press-2": "clear"}
    due = findings[("oil-change", "press-1")]
    assert due.values["run_hours"] == 19.2  # 19.25, one decimal
    assert due.values["cycles"] == 2 * (3 * 24 + 5) * 60
    assert due.values["days"] == 3.2
    assert due.values["reached"] == "run_hours"
    assert due.values["value"] == due.values["run_hours"]
    assert due.values["limit"] == 10
    assert findings[("oil-change", "press-2")].values["run_hours"] == pytest.approx(3.85, abs=0.1)

    # The oil was changed on press-1 two hours ago: its meter starts again, below every limit.
    serviced = NOW_MS - 2 * HOUR_MS

    def service(machine: str, rule: str) -> int | None:
        assert rule == "oil-change"
        return serviced if machine == "press-1" else None

    findings = run(config, last_service=service)
    assert verdicts(findings) == {"press-1": "clear", "press-2": "clear"}
    restarted = findings[("oil-change", "press-1")]
    assert restarted.values["run_hours"] == 0.5
    assert restarted.values["cycles"] == 240
    assert restarted.values["days"] == 0.0833  # two hours
    assert restarted.values["reached"] == ""
    # … and it fires again once the machine has run its hours since.
    later = NOW_MS + 40 * HOUR_MS
    await write(config, minutes("press-1", NOW_MS, later, running_s=15, produced=2))
    assert run(config, later, last_service=service)[("oil-change", "press-1")].verdict == "fire"


async def test_meter_reads_the_same_from_sums_and_from_minutes(
    influxdb: InfluxDBDatabase,
) -> None:
    rule = {**OIL, "meter": {"run_hours": 1000}}
    config = plant(influxdb.url, influxdb.database, rule)
    minutes_only = plant(influxdb.url, influxdb.database, rule, rollups=False)
    start = NOW_MS - 9 * DAY_MS - 7 * HOUR_MS - 13 * MINUTE_MS
    rng = random.Random(5)
    points: list[Point] = []
    expected = dict.fromkeys(machine_ids(2), 0)
    for machine in machine_ids(2):
        for t in range(start, NOW_MS, MINUTE_MS):
            running = rng.randint(0, 60)
            expected[machine] += running
            points += minutes(machine, t, t + MINUTE_MS, running_s=running, produced=1)
    await write(config, points)
    counting = Counting()
    from_sums = run(config, transport=counting)
    assert "utilization_1d" in counting.queries[0] and "utilization_1h" in counting.queries[0]
    from_minutes = run(minutes_only)
    for machine in machine_ids(2):
        assert (
            from_sums[("oil-change", machine)].values
            == from_minutes[("oil-change", machine)].values
        )
        assert from_sums[("oil-change", machine)].values["run_hours"] == round(
            expected[machine] / 3600, 1
        )


async def test_meter_without_the_sums_policy_reads_minutes(influxdb: InfluxDBDatabase) -> None:
    """A server where the sums' retention policy was never created: the meter falls back to
    the minutes instead of failing the cycle."""
    config = plant(influxdb.url, influxdb.database, OIL)
    influxdb.create()  # without the policy of the sums; the sink then writes no sums there
    minutes_only = plant(influxdb.url, influxdb.database, OIL, rollups=False)
    await write(minutes_only, minutes("press-1", NOW_MS - 2 * DAY_MS, NOW_MS, running_s=30))
    findings = run(config)
    assert findings[("oil-change", "press-1")].values["run_hours"] == 24
    assert findings[("oil-change", "press-1")].verdict == "fire"


async def test_meter_counts_days_and_cycles(influxdb: InfluxDBDatabase) -> None:
    rules = [
        {"id": "yearly", "machines": ["press-1"], "meter": {"days": 30, "since": "2026-02-01"}},
        {"id": "strokes", "machines": ["press-1", "press-2"], "meter": {"cycles": 1000}},
    ]
    config = plant(influxdb.url, influxdb.database, *rules)
    await write(
        config,
        [
            *minutes("press-1", NOW_MS - 10 * HOUR_MS, NOW_MS, running_s=60, produced=2),
            *minutes("press-2", NOW_MS - 10 * HOUR_MS, NOW_MS, running_s=60, produced=1),
        ],
    )
    findings = run(config)
    yearly = findings[("yearly", "press-1")]
    assert yearly.verdict == "fire"  # 1 February, midnight in the plant, to 10 March noon
    assert yearly.values["days"] == 37.5
    assert yearly.values["reached"] == "days"
    assert yearly.values["since"] == "2026-02-01"
    assert findings[("strokes", "press-1")].verdict == "fire"
    assert findings[("strokes", "press-1")].values["cycles"] == 1200
    assert findings[("strokes", "press-2")].verdict == "clear"
    assert findings[("strokes", "press-2")].values["value"] == 600


async def test_meter_without_data_or_start_holds(influxdb: InfluxDBDatabase) -> None:
    config = plant(influxdb.url, influxdb.database, OIL)
    await write(config, minutes("press-2", NOW_MS - HOUR_MS, NOW_MS, running_s=60))
    assert verdicts(run(config)) == {"press-1": "hold", "press-2": "clear"}


# -- offline ------------------------------------------------------------------------------------


async def test_offline_machine(influxdb: InfluxDBDatabase) -> None:
    rule = {"id": "silent", "machines": machine_ids(3), "offline": {"minutes": 10}}
    config = plant(influxdb.url, influxdb.database, rule, machines=3)
    await write(
        config,
        [
            reading("press-1", NOW_MS - 3 * MINUTE_MS, temperature=40.0, running=True),
            reading("press-2", NOW_MS - 30 * MINUTE_MS, temperature=41.0),
            reading("press-2", NOW_MS - 50 * MINUTE_MS, temperature=41.0),
            # press-3: never; a point of another plant's press-3 does not count.
            Point(
                "reading",
                {"factory": "other", "sector": "x", "machine": "press-3"},
                {"temperature": 1.0},
                NOW_MS - MINUTE_MS,
            ),
        ],
    )
    findings = run(config)
    # press-3 never sent anything: it holds (not fitted yet, or a fresh start), never fires.
    assert verdicts(findings) == {"press-1": "clear", "press-2": "fire", "press-3": "hold"}
    assert findings[("silent", "press-2")].values["value"] == 30
    assert findings[("silent", "press-2")].values["limit"] == 10
    assert findings[("silent", "press-3")].values["value"] == "never"
    assert {(r.signal, r.value) for r in findings[("silent", "press-1")].readings} == {
        ("temperature", 40.0),
        ("running", 1.0),
    }


async def test_offline_signal(influxdb: InfluxDBDatabase) -> None:
    rule = {
        "id": "vibration-sensor",
        "machines": machine_ids(2),
        "offline": {"minutes": 15, "signal": "vibration"},
    }
    config = plant(influxdb.url, influxdb.database, rule)
    await write(
        config,
        [
            # press-1 still sends its temperature, but its vibration sensor went quiet.
            *steady("press-1", "temperature", 40.0, NOW_MS - HOUR_MS, NOW_MS),
            reading("press-1", NOW_MS - 45 * MINUTE_MS, vibration=2.5),
            reading("press-2", NOW_MS - 5 * MINUTE_MS, vibration=2.5),
        ],
    )
    findings = run(config)
    assert verdicts(findings) == {"press-1": "fire", "press-2": "clear"}
    assert findings[("vibration-sensor", "press-1")].values["value"] == 45
    assert findings[("vibration-sensor", "press-1")].values["unit"] == "mm/s"


# -- error rate ---------------------------------------------------------------------------------


def counters(
    machine: str, start_ms: int, end_ms: int, error_share: float, *, restart_ms: int | None = None
) -> list[Point]:
    """Health points every 10 s: 10 polls each, `error_share` of them failing; counters since
    the collector started (again at `restart_ms`)."""
    points = []
    polls = errors = 0
    owed = 0.0
    for t in range(start_ms, end_ms, 10 * SECOND_MS):
        if restart_ms is not None and t >= restart_ms > t - 10 * SECOND_MS:
            polls = errors = 0
        polls += 10
        owed += 10 * error_share
        errors += int(owed)
        owed -= int(owed)
        points.append(health(machine, t, polls, errors))
    return points


async def test_error_rate(influxdb: InfluxDBDatabase) -> None:
    rule = {"id": "modbus-errors", "machines": machine_ids(5), "error_rate": {"above": 0.2}}
    config = plant(influxdb.url, influxdb.database, rule, machines=5)
    start = NOW_MS - HOUR_MS
    await write(
        config,
        [
            *counters("press-1", start, NOW_MS, 0.3),
            *counters("press-2", start, NOW_MS, 0.05),
            *counters("press-3", start, NOW_MS, 0.15),  # between half the level and the level
            # press-4: its collector stopped an hour ago: no polls in the window.
            *counters("press-4", start - HOUR_MS, start, 0.9),
            # press-5: 40 % failing, its collector restarted mid-window (counters from 0).
            *counters("press-5", start, NOW_MS, 0.4, restart_ms=NOW_MS - 7 * MINUTE_MS),
        ],
    )
    findings = run(config)
    assert verdicts(findings) == {
        "press-1": "fire",
        "press-2": "clear",
        "press-3": "hold",
        "press-4": "hold",
        "press-5": "fire",
    }
    assert findings[("modbus-errors", "press-1")].values["value"] == "30 %"
    assert findings[("modbus-errors", "press-1")].values["limit"] == "20 %"
    assert findings[("modbus-errors", "press-5")].values["rate"] == pytest.approx(0.4, abs=0.02)
    assert findings[("modbus-errors", "press-1")].readings[-1].time_ms < NOW_MS


# -- timing -------------------------------------------------------------------------------------


def bench_rules(machines: Sequence[str]) -> list[dict[str, Any]]:
    every_machine = list(machines)
    return [
        {
            "id": "hot",
            "machines": every_machine,
            "threshold": {"signal": "temperature", "above": 85},
        },
        {
            "id": "shaking",
            "machines": every_machine,
            "threshold": {"signal": "vibration", "above": 7.1, "clear_below": 6},
        },
        {
            "id": "low-pressure",
            "machines": every_machine,
            "threshold": {"signal": "pressure", "below": 2},
        },
        {
            "id": "heating",
            "machines": every_machine,
            "rate": {"signal": "temperature", "rising_per_hour": 30},
        },
        {"id": "drift", "machines": every_machine, "drift": {"signal": "temperature"}},
        {"id": "oil", "machines": every_machine, "meter": {"run_hours": 500, "days": 180}},
        {"id": "strokes", "machines": every_machine, "meter": {"cycles": 100_000}},
        {"id": "silent", "machines": every_machine, "offline": {"minutes": 10}},
        {
            "id": "vibration-sensor",
            "machines": every_machine,
            "offline": {"minutes": 10, "signal": "vibration"},
        },
        {"id": "modbus-errors", "machines": every_machine, "error_rate": {}},
    ]


def bench_points(machines: Sequence[str], days: int) -> Iterator[Point]:
    rng = random.Random(1)
    start = NOW_MS - days * DAY_MS
    for machine in machines:
        for t in range(start, NOW_MS - HOUR_MS, MINUTE_MS):  # the past days: once a minute
            yield reading(
                machine, t, temperature=50 + rng.uniform(-2, 2), vibration=3.0, pressure=5
            )
        for t in range(NOW_MS - HOUR_MS, NOW_MS, 5 * SECOND_MS):  # the last hour: every 5 s
            yield reading(
                machine, t, temperature=50 + rng.uniform(-2, 2), vibration=3.0, pressure=5
            )
        yield from minutes(machine, start, NOW_MS, running_s=50, produced=5)
        yield from counters(machine, NOW_MS - 20 * MINUTE_MS, NOW_MS, 0.01)


async def test_timing_of_50_machines_and_10_rules(
    influxdb: InfluxDBDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = machine_ids(50)
    config = plant(influxdb.url, influxdb.database, *bench_rules(ids), machines=50)
    days = 2
    await write(config, list(bench_points(ids, days)))
    cache = BaselineCache()
    timings = []
    for cycle in range(4):
        counting = Counting()
        began = time.perf_counter()
        findings = run(config, NOW_MS + cycle * MINUTE_MS, baselines=cache, transport=counting)
        timings.append((time.perf_counter() - began, len(counting.queries)))
        assert len(findings) == 500
    began = time.perf_counter()
    run(config, NOW_MS + 3 * MINUTE_MS, baselines=BaselineCache())
    cold = time.perf_counter() - began
    assert {f.verdict for f in findings.values()} <= {"clear", "hold"}
    with capsys.disabled():
        print(
            f"\nrules: 50 machines × 10 rules ({days} days of minutes and readings, the last hour"
            f" every 5 s): first cycle {timings[0][0] * 1000:.0f} ms, then "
            + ", ".join(f"{t * 1000:.0f} ms" for t, _ in timings[1:])
            + f" ({timings[1][1]} request(s) each); without a baseline cache {cold * 1000:.0f} ms"
        )


# -- servers ------------------------------------------------------------------------------------


class FirstStatementOnly(Counting):
    """A server that answers only the first statement of a request, as InfluxDB 3's v1 API."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = httpx.QueryParams(request.read().decode())
        first = body.get("q", "").split(";\n")[0]
        self.queries.append(first)
        content = str(body.set("q", first)).encode()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        forwarded = httpx.Request(request.method, request.url, headers=headers, content=content)
        return self.inner.handle_request(forwarded)


async def test_a_server_answering_one_statement_per_request(influxdb: InfluxDBDatabase) -> None:
    config = plant(influxdb.url, influxdb.database, HOT, RISING, OIL, machines=4)
    start = NOW_MS - 2 * HOUR_MS
    await write(
        config,
        [
            *steady("press-1", "temperature", 90.0, start, NOW_MS),
            *ramp("press-2", 20, start, NOW_MS, 1),
            *minutes("press-3", start, NOW_MS, running_s=60),
        ],
    )
    one_by_one = FirstStatementOnly()
    assert run(config, transport=one_by_one) == run(config)
    assert all(";" not in q for q in one_by_one.queries)


def test_influxdb_out_of_reach_raises_query_error() -> None:
    config = plant(f"http://127.0.0.1:{free_port()}", "nowhere", HOT, machines=4)
    with pytest.raises(QueryError, match=r"^InfluxDB at http://127\.0\.0\.1:\d+: ConnectError"):
        run(config)


# -- the API ------------------------------------------------------------------------------------


def test_all_names_what_the_module_exports() -> None:
    import maintenance.rules as rules

    assert all(hasattr(rules, name) for name in rules.__all__)
    public = {n for n, v in vars(rules).items() if not n.startswith("_") and callable(v)}
    assert {"evaluate", "BaselineCache", "LastService"} == set(rules.__all__) & public
