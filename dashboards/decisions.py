"""The assembly's decisions ("2nd shift approved", "press-2 repaired, not replaced"), recorded
with the day they were taken and the sector they concern (or the whole plant), so the report can
show them on its trend charts and compare the sector before and after.

Stored in InfluxDB next to what they are about (docs/schema.md): measurement `decision`, tags
`factory` and `sector` (absent for the whole plant), field `text`, at the local midnight of the
day plus one millisecond per decision recorded before it for the same day and sector — two
decisions of one day are two points, and recording never rewrites an earlier one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from collector.config import Config
from collector.influxql import InfluxQL, quote_ident, quote_string, time_literal
from collector.schema import TAG_FACTORY, TAG_SECTOR, Point
from collector.shifts import ShiftCalendar
from collector.sinks import Sink

__all__ = [
    "DECISION",
    "MAX_TEXT",
    "Decision",
    "InvalidDecision",
    "check_decision",
    "list_decisions",
    "record_decision",
]

DECISION = "decision"
MAX_TEXT = 200
# Decisions of one day and sector, at most: the millisecond offsets stay within the day's first
# second, so a decision is always drawn on its own day.
MAX_PER_DAY = 1000


class InvalidDecision(ValueError):
    """A decision that cannot be recorded: no text, too long, an unknown sector."""


@dataclass(frozen=True, slots=True)
class Decision:
    day: dt.date
    text: str
    sector: str  # "" for the whole plant
    time_ms: int


def list_decisions(db: InfluxQL, config: Config, start: dt.date, end: dt.date) -> list[Decision]:
    """The decisions of local days `start` to `end` (included), oldest first. Raises
    `collector.influxql.QueryError`."""
    calendar = ShiftCalendar(config.calendar, config.timezone)
    low = calendar.local_midnight_ms(start)
    high = calendar.local_midnight_ms(end + dt.timedelta(days=1))
    statement = (
        f"SELECT {quote_ident('text')} FROM {quote_ident(DECISION)}"
        f" WHERE {quote_ident(TAG_FACTORY)} = {quote_string(config.factory)}"
        f" AND time >= {time_literal(low)} AND time < {time_literal(high)}"
        f" GROUP BY {quote_ident(TAG_SECTOR)}"
    )
    found = []
    for series in db.select(statement):
        sector = series.tags.get(TAG_SECTOR, "")
        for row in series.rows:
            text = row.get("text")
            if not isinstance(text, str):
                continue
            time_ms = int(row["time"])
            day = calendar.local_day(time_ms)
            found.append(Decision(day, text, sector, time_ms))
    return sorted(found, key=lambda d: (d.time_ms, d.sector))


def check_decision(config: Config, text: str, sector: str) -> str:
    """The text to record, stripped; raises `InvalidDecision` saying what is wrong."""
    cleaned = " ".join(text.split())
    if not cleaned:
        raise InvalidDecision("the decision has no text")
    if len(cleaned) > MAX_TEXT:
        raise InvalidDecision(f"the decision is {len(cleaned)} characters long; at most {MAX_TEXT}")
    if sector and sector not in {s.id for s in config.sectors}:
        known = ", ".join(s.id for s in config.sectors)
        raise InvalidDecision(f"there is no sector {sector!r} in this plant; known: {known}")
    return cleaned


async def record_decision(
    db: InfluxQL, sink: Sink, config: Config, day: dt.date, text: str, sector: str = ""
) -> Decision:
    """Write a decision (the sink open); raises `InvalidDecision`, `QueryError`, `WriteError`."""
    cleaned = check_decision(config, text, sector)
    same_day = [d for d in list_decisions(db, config, day, day) if d.sector == sector]
    if len(same_day) >= MAX_PER_DAY:
        raise InvalidDecision(f"{day} already has {MAX_PER_DAY} decisions for this sector")
    midnight = ShiftCalendar(config.calendar, config.timezone).local_midnight_ms(day)
    time_ms = max((d.time_ms for d in same_day), default=midnight - 1) + 1
    tags = {TAG_FACTORY: config.factory}
    if sector:
        tags[TAG_SECTOR] = sector
    await sink.write([Point(DECISION, tags, {"text": cleaned}, time_ms)])
    return Decision(day, cleaned, sector, time_ms)
