"""A small plant for the KPI tests: its config, and utilization minutes made up for it."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo

import yaml

from collector.config import Config, parse_config
from collector.schema import Point
from collector.sinks.influxdb import InfluxDBSink

FACTORY = "coop-test"
ZONE = ZoneInfo("America/Argentina/Buenos_Aires")

# machine → (sector, parts per hour at rated speed, has a part counter)
MACHINES: dict[str, tuple[str, float | None, bool]] = {
    "press-1": ("pressing", 1200, True),
    "press-2": ("pressing", 600, True),
    "lathe-1": ("turning", None, False),
    "oven-1": ("heat", 60, False),
}
SECTORS = ("pressing", "turning", "heat")


def config_text(url: str, database: str, **influx: str) -> str:
    machines = []
    for index, (machine, (sector, rated, counted)) in enumerate(MACHINES.items()):
        entry: dict[str, object] = {
            "id": machine,
            "sector": sector,
            "modbus": {
                "host": "127.0.0.1",
                "port": 5020 + index,
                "signals": [
                    {"name": "running", "table": "coil", "address": 0, "type": "bool"},
                    {"name": "strokes", "table": "holding", "address": 0, "type": "uint16"},
                    {"name": "rejects", "table": "holding", "address": 1, "type": "uint16"},
                ],
            },
            "state": {"running": {"signal": "running", "equals": True}},
        }
        if rated is not None:
            entry["rated_per_hour"] = rated
        if counted:
            entry["counters"] = {
                "produced": {"signal": "strokes"},
                "rejected": {"signal": "rejects"},
            }
        machines.append(entry)
    data = {
        "factory": FACTORY,
        "timezone": "America/Argentina/Buenos_Aires",
        "language": "es",
        "influxdb": {"url": url, "database": database, **influx},
        "calendar": {
            "shifts": [
                {
                    "name": "morning",
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat"],
                    "start": "06:00",
                    "end": "14:00",
                },
                {
                    "name": "afternoon",
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "start": "14:00",
                    "end": "22:00",
                },
            ],
            "changes": [
                {
                    "from": "2026-12-01",
                    "to": "2026-12-31",
                    "shifts": [
                        {
                            "name": "night",
                            "days": ["mon"],
                            "start": "22:00",
                            "end": "06:00",
                        }
                    ],
                }
            ],
        },
        "sectors": [{"id": s} for s in SECTORS],
        "machines": machines,
    }
    return yaml.safe_dump(data, sort_keys=False)


def plant_config(url: str = "http://127.0.0.1:8086", database: str = "aguante") -> Config:
    return parse_config(config_text(url, database), environ={})


def local_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return round(dt.datetime(year, month, day, hour, minute, tzinfo=ZONE).timestamp() * 1000)


def shift_of(time_ms: int) -> str:
    """The shift tag the collector would give a minute (matching config_text's calendar)."""
    local = dt.datetime.fromtimestamp(time_ms / 1000, ZONE)
    if 6 <= local.hour < 14 and local.weekday() <= 5:
        return "morning"
    if 14 <= local.hour < 22 and local.weekday() <= 4:
        return "afternoon"
    return ""


def utilization(
    machine: str,
    time_ms: int,
    fields: dict[str, float | int],
    *,
    factory: str = FACTORY,
    shift: str | None = None,
) -> Point:
    sector = MACHINES[machine][0] if machine in MACHINES else "pressing"
    tags = {"factory": factory, "sector": sector, "machine": machine}
    tag = shift_of(time_ms) if shift is None else shift
    if tag:
        tags["shift"] = tag
    return Point("utilization", tags, fields, time_ms)


def random_minutes(
    start_ms: int, end_ms: int, machines: Iterable[str] = MACHINES, seed: int = 7
) -> list[Point]:
    """One made-up utilization point per machine and minute, as the collector writes them."""
    rng = random.Random(seed)
    points = []
    for machine in machines:
        _, rated, counted = MACHINES[machine]
        per_second = (rated or 0) / 3600
        for time_ms in range(start_ms, end_ms, 60_000):
            running = rng.choice([0, 0, 6, 30, 54, 60, 60, 60])
            rest = 60 - running
            unknown = rng.choice([0, 0, 0, rest])
            down = rng.randint(0, rest - unknown)
            off = rng.choice([0, rest - unknown - down])
            idle = rest - unknown - down - off
            made = rng.randint(0, round(per_second * running)) if counted else 0
            fields: dict[str, float | int] = {
                "planned_s": 60.0 if shift_of(time_ms) else float(running),
                "running_s": float(running),
                "idle_s": float(idle),
                "down_s": float(down),
                "off_s": float(off),
                "unknown_s": float(unknown),
                "produced": made,
                "rejected": rng.randint(0, min(made, 2)),
                "capacity": per_second * 60,
                "running_capacity": per_second * running,
                "micro_stops": rng.choice([0, 0, 0, 1]),
            }
            points.append(utilization(machine, time_ms, fields))
    return points


def hourly_sums(points: Sequence[Point]) -> list[Point]:
    """The `utilization_1h` and `utilization_1d` points the collector writes as each hour and
    each local day of these minutes ends."""
    sums: dict[tuple[str, int, tuple[tuple[str, str], ...]], dict[str, float | int]] = {}
    for point in points:
        if point.measurement != "utilization":
            continue
        local = dt.datetime.fromtimestamp(point.time_ms / 1000, ZONE)
        midnight = round(dt.datetime.combine(local.date(), dt.time(), ZONE).timestamp() * 1000)
        tags = tuple(sorted(point.tags.items()))
        for key in (
            ("utilization_1h", point.time_ms - point.time_ms % 3_600_000, tags),
            ("utilization_1d", midnight, tags),
        ):
            fields = sums.setdefault(key, {})
            for name, value in point.fields.items():
                assert isinstance(value, int | float)
                fields[name] = fields.get(name, 0) + value
    return [
        Point(measurement, dict(tags), dict(fields), at)
        for (measurement, at, tags), fields in sorted(sums.items())
    ]


async def write(url: str, database: str, points: Sequence[Point], *, hourly: bool = True) -> None:
    """Write minutes, and (as the collector does) their hourly sums."""
    extra = hourly_sums(points) if hourly else []
    # Routed as the collector routes them: the sums to their policy of long shards.
    async with InfluxDBSink.from_config(plant_config(url, database).influxdb) as sink:
        await sink.write([*points, *extra])
