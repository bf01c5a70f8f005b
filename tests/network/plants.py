"""Plants of a network for the tests: their configs, and the hourly sums and stops their own
InfluxDB holds after some days of work (made up, as the collector would have written them)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import yaml

from collector.config import Config, parse_config
from collector.schema import Point
from collector.sinks.influxdb import InfluxDBSink
from network.rollup import HOUR_MS

REASONS = (
    "no_orders",
    "no_material",
    "breakdown",
    "no_operator",
    "planned_maintenance",
    "other",
    "",
)


@dataclass
class Plant:
    """One plant: id, what it shares, its machines (id → (sector, process or None))."""

    id: str
    share: str = "groups"
    named: bool = False
    group_by: str = "process"
    revise_hours: int = 48
    machines: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def config(
        self, influx_url: str, network_url: str, state_file: str, tls: dict[str, Any] | None
    ) -> Config:
        sectors = sorted({sector for sector, _ in self.machines.values()})
        network: dict[str, Any] = {
            "url": network_url,
            "plant": self.id,
            "share": self.share,
            "named": self.named,
            "group_by": self.group_by,
            "revise_hours": self.revise_hours,
            "state_file": state_file,
            "timeout": 20,
        }
        if self.named:
            network["name"] = f"Cooperativa {self.id.upper()}"
        if tls is not None:
            network["tls"] = tls
        machines = []
        for number, (machine, (sector, process)) in enumerate(sorted(self.machines.items())):
            entry: dict[str, Any] = {
                "id": machine,
                "sector": sector,
                "modbus": {
                    "host": "127.0.0.1",
                    "port": 5020 + number,
                    "signals": [{"name": "running", "table": "coil", "address": 0, "type": "bool"}],
                },
                "state": {"running": {"signal": "running", "equals": True}},
            }
            if process is not None:
                entry["process"] = process
            machines.append(entry)
        data = {
            "factory": self.id,
            "timezone": "America/Sao_Paulo",
            "influxdb": {"url": influx_url, "database": self.id.replace("-", "_")},
            "network": network,
            "sectors": [{"id": s} for s in sectors],
            "machines": machines,
        }
        return parse_config(yaml.safe_dump(data), environ={})


def history(config: Config, first_hour_ms: int, hours: int, seed: int) -> list[Point]:
    """Hourly sums of every machine and a few stops an hour, some without a reason yet."""
    rng = random.Random(seed)
    points: list[Point] = []
    for hour in range(first_hour_ms, first_hour_ms + hours * HOUR_MS, HOUR_MS):
        for machine in config.machines:
            tags = {"factory": config.factory, "sector": machine.sector, "machine": machine.id}
            planned = float(rng.choice([0, 3600, 3600, 3600, 1800]))
            running = float(rng.randint(0, int(planned))) if planned else 0.0
            idle = float(rng.randint(0, int(planned - running))) if planned else 0.0
            down = planned - running - idle
            off = 3600.0 - planned
            made = int(running / 30)
            fields = {
                "planned_s": planned,
                "running_s": running,
                "idle_s": idle,
                "down_s": down,
                "off_s": off,
                "unknown_s": 0.0,
                "produced": made,
                "rejected": rng.randint(0, max(0, made // 20)),
                "capacity": 120.0,
                "running_capacity": running / 30,
                "micro_stops": 0,
            }
            points.append(Point("utilization_1h", tags, fields, hour))
            for _ in range(rng.randint(0, 2)):
                start = hour + rng.randint(0, 3_500) * 1000
                lost = float(rng.randint(60, 1200))
                stop_fields = {
                    "duration_s": lost + rng.randint(0, 300),
                    "lost_s": lost,
                    "state": "idle",
                    "open": False,
                    "micro": False,
                    "reason": rng.choice(REASONS),
                }
                points.append(Point("stop", tags, stop_fields, start))
    return points


async def write(config: Config, points: list[Point]) -> None:
    """As the collector writes them: the hourly sums to their retention policy of long shards."""
    async with InfluxDBSink.from_config(config.influxdb) as sink:
        await sink.write(points)
