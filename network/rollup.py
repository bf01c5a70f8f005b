"""What a plant shares with its network: per hour and per process (or sector, or machine when the
plant chooses so), the sums a network compares capacity by — planned, running, idle, down, off
and unknown seconds, parts made and rejected, capacity in parts — and the planned time lost per
category of stop reason. Read from the plant's own InfluxDB, never from raw signals; nothing
about people (stop reasons become their categories, who gave them is not stored anywhere).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from collector.config import Config, NetworkSharing
from collector.influxql import InfluxQL, quote_ident, quote_string, time_literal
from collector.schema import TAG_FACTORY, TAG_MACHINE, UTILIZATION_HOURLY
from collector.stops import UNASSIGNED, list_stops, reason_category

__all__ = [
    "CATEGORIES",
    "COUNTS",
    "HOUR_MS",
    "SECONDS",
    "GroupHour",
    "PlantHour",
    "group_of",
    "plant_hours",
]

HOUR_MS = 3_600_000
SECONDS = ("planned_s", "running_s", "idle_s", "down_s", "off_s", "unknown_s")
COUNTS = ("produced", "rejected", "capacity")
# Every category of stop reason, and the lost time no reason was given for yet.
CATEGORIES = ("demand", "supply", "machine", "people", "planned", "other", UNASSIGNED)
FORMAT_VERSION = 1
STOP_LOOKBACK_MS = 31 * 24 * HOUR_MS  # the longest stop whose hours are still shared


@dataclass
class GroupHour:
    """One group's hour: seconds and parts summed over its machines, lost time by category."""

    group: str
    kind: str  # process, sector or machine
    machines: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SECONDS + COUNTS, 0.0))
    lost_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))

    def payload(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "kind": self.kind,
            "machines": self.machines,
            **{k: round(v, 3) for k, v in self.sums.items()},
            "lost_s": {k: round(v, 3) for k, v in self.lost_s.items()},
        }


@dataclass
class PlantHour:
    """What one plant shares of one hour: one MQTT message."""

    plant: str
    name: str | None  # shown by the network only when the plant chose to be named
    hour_ms: int
    groups: list[GroupHour]

    def payload(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "plant": self.plant,
            "name": self.name,
            "hour": self.hour_ms,
            "groups": [g.payload() for g in sorted(self.groups, key=lambda g: (g.kind, g.group))],
        }

    def body(self) -> bytes:
        return json.dumps(self.payload(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.body()).hexdigest()[:16]


def group_of(config: Config, machine_id: str) -> str | None:
    """The group a machine's hours count in: its process (else its sector), or its sector."""
    sharing = config.network
    machine = next((m for m in config.machines if m.id == machine_id), None)
    if machine is None:
        return None  # a machine no longer in the config: its past is not shared
    if sharing.group_by == "process" and machine.process:
        return machine.process
    return machine.sector


def plant_hours(db: InfluxQL, config: Config, start_ms: int, end_ms: int) -> dict[int, PlantHour]:
    """Every whole hour in [start_ms, end_ms) with data, as it would be shared. Hours without a
    single rollup are left out (the collector was not running: nothing to say). A stop counts
    in the hour it began. Raises `collector.influxql.QueryError`."""
    sharing: NetworkSharing = config.network
    plant = sharing.plant or config.factory
    name = (sharing.name or config.factory) if sharing.named else None
    kinds = ["process" if sharing.group_by == "process" else "sector"]
    if sharing.share == "machines":
        kinds.append("machine")
    hours: dict[int, dict[tuple[str, str], GroupHour]] = {}
    machines_seen: dict[tuple[int, str, str], set[str]] = {}

    def bucket(hour: int, machine: str) -> list[GroupHour]:
        found: list[GroupHour] = []
        group = group_of(config, machine)
        if group is None:
            return found
        for kind in kinds:
            # A machine with no `process` counts under its sector's name as its process.
            key = (group if kind != "machine" else machine, kind)
            entry = hours.setdefault(hour, {}).get(key)
            if entry is None:
                entry = hours[hour][key] = GroupHour(key[0], key[1])
            machines_seen.setdefault((hour, key[0], key[1]), set()).add(machine)
            found.append(entry)
        return found

    for series in db.select(_hourly_sums(config, start_ms, end_ms)):
        machine = series.tags.get(TAG_MACHINE, "")
        for row in series.rows:
            if all(row.get(k) is None for k in SECONDS):
                continue
            for entry in bucket(int(row["time"]), machine):
                for key in SECONDS + COUNTS:
                    entry.sums[key] += float(row.get(key) or 0.0)
    # A stop's lost time is spread over the hours it spans, in proportion to its time in each:
    # a fortnight without orders shows in every hour of the fortnight, not in its first.
    # Stops that began up to STOP_LOOKBACK_MS before the window still reach into it.
    for stop in list_stops(db, config, start_ms - STOP_LOOKBACK_MS, end_ms):  # no micro-stops
        first = stop.start_ms
        last = first + int(max(stop.duration_s, stop.lost_s) * 1000)
        if last <= start_ms or stop.lost_s <= 0:
            continue
        category = reason_category(config, stop.reason)
        span = last - first
        hour = first - first % HOUR_MS
        while hour < min(last, end_ms):
            inside = min(last, hour + HOUR_MS) - max(first, hour)
            if hour in hours and inside > 0:  # an hour with no rollups is not shared at all
                share = stop.lost_s * (inside / span if span > 0 else 1.0)
                for entry in bucket(hour, stop.machine):
                    entry.lost_s[category] += share
            hour += HOUR_MS
    shared: dict[int, PlantHour] = {}
    for hour, groups in sorted(hours.items()):
        for (group, kind), entry in groups.items():
            entry.machines = len(machines_seen.get((hour, group, kind), ()))
        shared[hour] = PlantHour(plant, name, hour, list(groups.values()))
    return shared


def _hourly_sums(config: Config, start_ms: int, end_ms: int) -> str:
    sums = ", ".join(f"sum({quote_ident(k)}) AS {quote_ident(k)}" for k in SECONDS + COUNTS)
    source = quote_ident(UTILIZATION_HOURLY)
    policy = config.influxdb.rollup_retention_policy or config.influxdb.retention_policy
    if policy:
        source = f"{quote_ident(policy)}.{source}"
    return (
        f"SELECT {sums} FROM {source}"
        f" WHERE time >= {time_literal(start_ms)} AND time < {time_literal(end_ms)}"
        f" AND {quote_ident(TAG_FACTORY)} = {quote_string(config.factory)}"
        f" GROUP BY time(1h), {quote_ident(TAG_MACHINE)} fill(none)"
    )
