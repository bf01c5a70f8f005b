"""The InfluxDB schema shared by collector, maintenance and dashboards (DESIGN.md is the contract).

Only names and the point type live here, so readers of the data can import it without pulling in
the collector's runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "COLLECTOR",
    "MACHINE_STATE",
    "READING",
    "RELIABILITY",
    "RULE_STATUS",
    "STATE_CODES",
    "STOP",
    "STOP_FIELDS",
    "TAG_FACTORY",
    "TAG_MACHINE",
    "TAG_SECTOR",
    "TAG_SHIFT",
    "TICKET",
    "UTILIZATION",
    "UTILIZATION_COUNTS",
    "UTILIZATION_DAILY",
    "UTILIZATION_HOURLY",
    "UTILIZATION_SECONDS",
    "FieldValue",
    "Point",
]

READING = "reading"
MACHINE_STATE = "machine_state"
UTILIZATION = "utilization"
# The same sums per hour, written by the collector as each hour ends: a year of KPIs reads
# 60 times fewer points. Not a DESIGN.md measurement of its own: a cache of `utilization`.
UTILIZATION_HOURLY = "utilization_1h"
# … and per day of the plant (from its local midnight): a year by month reads 1,440 times fewer.
UTILIZATION_DAILY = "utilization_1d"
STOP = "stop"
TICKET = "ticket"
# Written by the maintenance service every cycle, for dashboards: the last verdict of each rule on
# each machine (meters' progress, drift, the open ticket), and each machine's MTBF and MTTR.
RULE_STATUS = "rule_status"
RELIABILITY = "reliability"
COLLECTOR = "collector"

TAG_FACTORY = "factory"
TAG_SECTOR = "sector"
TAG_MACHINE = "machine"
TAG_SHIFT = "shift"  # on `utilization`: the shift a minute belongs to, absent outside shifts

# `machine_state.code`, for state timelines that map numbers to colours.
STATE_CODES = {"unknown": 0, "off": 1, "idle": 2, "running": 3, "down": 4}

# `utilization`: additive per minute, so every KPI is a ratio of sums (docs/capacity.md).
UTILIZATION_SECONDS = ("planned_s", "running_s", "idle_s", "down_s", "off_s", "unknown_s")
UTILIZATION_COUNTS = ("produced", "rejected", "capacity", "running_capacity", "micro_stops")

# `stop`, keyed by its start time; `reason` is written once by the collector, then by people.
STOP_FIELDS = ("duration_s", "lost_s", "state", "open", "micro", "reason")

FieldValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Point:
    """One InfluxDB point: a measurement, its tags, its fields and a UTC time in milliseconds."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ms: int
