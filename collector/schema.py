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
    "STOP",
    "TAG_FACTORY",
    "TAG_MACHINE",
    "TAG_SECTOR",
    "TICKET",
    "UTILIZATION",
    "FieldValue",
    "Point",
]

READING = "reading"
MACHINE_STATE = "machine_state"
UTILIZATION = "utilization"
STOP = "stop"
TICKET = "ticket"
COLLECTOR = "collector"

TAG_FACTORY = "factory"
TAG_SECTOR = "sector"
TAG_MACHINE = "machine"

FieldValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Point:
    """One InfluxDB point: a measurement, its tags, its fields and a UTC time in milliseconds."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ms: int
