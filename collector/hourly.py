"""Hourly sums of `utilization` (`utilization_1h`) rebuilt from the stored minutes.

The collector writes each hour's sums itself as the hour ends. Minutes written any other way —
imported from paper, corrected by hand — are summed again here, for the hours they touched,
with a plain InfluxQL query and a write: no continuous query, so every InfluxDB version serves.
"""

from __future__ import annotations

from collections.abc import Sequence

from collector.config import Config
from collector.influxql import InfluxQL, quote_ident, quote_string, regex_any, time_literal
from collector.schema import (
    TAG_MACHINE,
    TAG_SECTOR,
    TAG_SHIFT,
    UTILIZATION,
    UTILIZATION_COUNTS,
    UTILIZATION_HOURLY,
    UTILIZATION_SECONDS,
    FieldValue,
    Point,
)

__all__ = ["HOUR_MS", "hour_span", "hourly_points", "hourly_statement"]

HOUR_MS = 3_600_000
_INTEGERS = frozenset({"produced", "rejected", "micro_stops"})
_FIELDS = (*UTILIZATION_SECONDS, *UTILIZATION_COUNTS)


def hour_span(start_ms: int, end_ms: int) -> tuple[int, int]:
    """The whole hours (UTC, as the collector cuts them) that [start_ms, end_ms) touches."""
    return start_ms - start_ms % HOUR_MS, -(-end_ms // HOUR_MS) * HOUR_MS


def hourly_statement(
    config: Config, start_ms: int, end_ms: int, machines: Sequence[str] | None = None
) -> str:
    sums = ", ".join(f"sum({quote_ident(f)}) AS {quote_ident(f)}" for f in _FIELDS)
    where = [
        f"time >= {time_literal(start_ms)}",
        f"time < {time_literal(end_ms)}",
        f"factory = {quote_string(config.factory)}",
    ]
    if machines:
        where.append(f"machine =~ {regex_any(list(machines))}")
    return (
        f"SELECT {sums} FROM {quote_ident(UTILIZATION)} WHERE {' AND '.join(where)} "
        f"GROUP BY time(1h), {TAG_SECTOR}, {TAG_MACHINE}, {TAG_SHIFT} fill(none)"
    )


def hourly_points(
    db: InfluxQL, config: Config, start_ms: int, end_ms: int, machines: Sequence[str] | None = None
) -> list[Point]:
    """The `utilization_1h` points of the whole hours that [start_ms, end_ms) touches."""
    first, last = hour_span(start_ms, end_ms)
    points = []
    for series in db.select(hourly_statement(config, first, last, machines)):
        tags = {"factory": config.factory}
        tags |= {k: v for k, v in series.tags.items() if v}  # no shift tag outside shifts
        for row in series.rows:
            fields: dict[str, FieldValue] = {}
            for name in _FIELDS:
                value = row.get(name)
                if value is None:
                    continue
                # JSON gives 60 for the float 60.0: the field's own type decides.
                fields[name] = int(value) if name in _INTEGERS else float(value)
            if fields:
                points.append(Point(UTILIZATION_HOURLY, tags, fields, int(row["time"])))
    return points
