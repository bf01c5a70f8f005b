"""A small plant for the maintenance rule tests: its config with the rules a test gives, and the
points a collector would have stored for it (readings, minutes with their sums, health
counters), written through the collector's own InfluxDB sink."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from collector.config import Config, parse_config
from collector.schema import (
    COLLECTOR,
    READING,
    UTILIZATION,
    UTILIZATION_DAILY,
    UTILIZATION_HOURLY,
    FieldValue,
    Point,
)
from collector.sinks.influxdb import InfluxDBSink

FACTORY = "coop-rules"
TIMEZONE = "America/Argentina/Buenos_Aires"
ZONE = ZoneInfo(TIMEZONE)
SECTOR = "pressing"
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# Tuesday 10 March 2026, 12:00 in the plant: "now" of most tests (past data, fixed times).
NOW_MS = round(dt.datetime(2026, 3, 10, 12, 0, tzinfo=ZONE).timestamp() * 1000)


def machine_ids(count: int) -> list[str]:
    return [f"press-{n}" for n in range(1, count + 1)]


def config_text(
    url: str,
    database: str,
    rules: Sequence[Mapping[str, Any]],
    *,
    machines: int = 2,
    rollups: bool = True,
) -> str:
    entries = []
    for index, machine in enumerate(machine_ids(machines)):
        entries.append(
            {
                "id": machine,
                "sector": SECTOR,
                "kind": "press",
                "rated_per_hour": 600,
                "modbus": {
                    "host": "127.0.0.1",
                    "port": 5020 + index,
                    "signals": [
                        {"name": "running", "table": "coil", "address": 0, "type": "bool"},
                        {"name": "strokes", "table": "holding", "address": 0},
                        {
                            "name": "temperature",
                            "table": "holding",
                            "address": 1,
                            "type": "float32",
                            "unit": "°C",
                        },
                        {
                            "name": "vibration",
                            "table": "holding",
                            "address": 3,
                            "type": "uint16",
                            "scale": 0.1,
                            "unit": "mm/s",
                        },
                        {"name": "pressure", "table": "holding", "address": 4},
                    ],
                },
                "state": {"running": {"signal": "running", "equals": True}},
                "counters": {"produced": {"signal": "strokes"}},
            }
        )
    influxdb: dict[str, Any] = {"url": url, "database": database}
    if not rollups:
        influxdb["rollup_retention_policy"] = None
    data = {
        "factory": FACTORY,
        "timezone": TIMEZONE,
        "influxdb": influxdb,
        "maintenance": {"rules": [dict(rule) for rule in rules]},
        "sectors": [{"id": SECTOR}],
        "machines": entries,
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def plant(
    url: str,
    database: str,
    *rules: Mapping[str, Any],
    machines: int = 2,
    rollups: bool = True,
) -> Config:
    """The plant's config with these rules (dicts as in the YAML file)."""
    return parse_config(
        config_text(url, database, rules, machines=machines, rollups=rollups), environ={}
    )


def tags(machine: str, factory: str = FACTORY) -> dict[str, str]:
    return {"factory": factory, "sector": SECTOR, "machine": machine}


def reading(machine: str, time_ms: int, **fields: FieldValue) -> Point:
    return Point(READING, tags(machine), fields, time_ms)


def series(
    machine: str,
    signal: str,
    values: Iterable[tuple[int, float]],
) -> list[Point]:
    """`reading` points of one signal: (time ms, value) pairs."""
    return [reading(machine, time_ms, **{signal: float(value)}) for time_ms, value in values]


def every(start_ms: int, end_ms: int, step_ms: int) -> range:
    return range(start_ms, end_ms, step_ms)


def health(machine: str, time_ms: int, polls: int, errors: int) -> Point:
    """A `collector` point as DeviceHealth.record() gives it: counters since the start."""
    fields: dict[str, FieldValue] = {
        "polls": polls,
        "good_polls": polls - errors,
        "requests": polls,
        "errors": errors,
        "timeouts": errors,
        "exceptions": 0,
        "latency_ms": 12.5,
        "up": True,
    }
    return Point(COLLECTOR, tags(machine), fields, time_ms)


def minute(
    machine: str, time_ms: int, running_s: float, produced: int = 0, *, shift: str | None = None
) -> Point:
    """One `utilization` minute as the collector writes it (the rest of the minute idle)."""
    point_tags = tags(machine)
    if shift:
        point_tags["shift"] = shift
    fields: dict[str, FieldValue] = {
        "planned_s": 60.0,
        "running_s": float(running_s),
        "idle_s": 60.0 - running_s,
        "down_s": 0.0,
        "off_s": 0.0,
        "unknown_s": 0.0,
        "produced": produced,
        "rejected": 0,
        "capacity": 10.0,
        "running_capacity": running_s / 6,
        "micro_stops": 0,
    }
    return Point(UTILIZATION, point_tags, fields, time_ms - time_ms % MINUTE_MS)


def minutes(
    machine: str, start_ms: int, end_ms: int, running_s: float, produced: int = 0
) -> list[Point]:
    """A minute per minute over [start, end), all alike; shifts change at 14:00 local time, so
    the sums add up several series per hour or day, as the collector's do."""
    return [
        minute(machine, t, running_s, produced, shift=_shift(t))
        for t in every(start_ms, end_ms, MINUTE_MS)
    ]


def _shift(time_ms: int) -> str:
    return "morning" if dt.datetime.fromtimestamp(time_ms / 1000, ZONE).hour < 14 else "late"


def local_midnight(day: dt.date) -> int:
    return round(dt.datetime.combine(day, dt.time(), ZONE).timestamp() * 1000)


def sums(points: Iterable[Point]) -> list[Point]:
    """The `utilization_1h` and `utilization_1d` points the collector writes as each hour and
    each local day of these minutes ends."""
    found: dict[tuple[str, int, tuple[tuple[str, str], ...]], dict[str, FieldValue]] = {}
    for point in points:
        if point.measurement != UTILIZATION:
            continue
        day = dt.datetime.fromtimestamp(point.time_ms / 1000, ZONE).date()
        key_tags = tuple(sorted(point.tags.items()))
        for key in (
            (UTILIZATION_HOURLY, point.time_ms - point.time_ms % HOUR_MS, key_tags),
            (UTILIZATION_DAILY, local_midnight(day), key_tags),
        ):
            fields = found.setdefault(key, {})
            for name, value in point.fields.items():
                assert isinstance(value, int | float)
                total = fields.get(name, 0)
                assert isinstance(total, int | float)
                fields[name] = total + value
    return [
        Point(measurement, dict(key_tags), fields, at)
        for (measurement, at, key_tags), fields in sorted(found.items())
    ]


async def write(config: Config, points: Sequence[Point], *, with_sums: bool = True) -> None:
    """Write the points (and, as the collector does, the hourly and daily sums of their
    minutes, to their retention policy)."""
    everything = [*points, *(sums(points) if with_sums else [])]
    async with InfluxDBSink.from_config(config.influxdb) as sink:
        for first in range(0, len(everything), 20_000):
            await sink.write(everything[first : first + 20_000])
