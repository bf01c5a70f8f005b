"""The maintenance part of the assembly's report, read from what the maintenance service writes
to InfluxDB (docs/schema.md): the `ticket` events, and the `rule_status` snapshot of each rule on
each machine.

- tickets opened (or reopened) and resolved in the period;
- MTTR: from a ticket's last opening to its resolution, over the repairs of failures (every rule
  but the meters, as the maintenance service counts them) that ended in the period (an opening up
  to LOOKBACK_DAYS before the period is found);
- preventive work: tickets of the plant's meter rules (run hours, cycles, days) resolved in the
  period, and the meters due (or most advanced) at the period's end;
- the machines drifting from their baseline at the period's end (drift rules firing).

The snapshot "at the period's end" is the newest `rule_status` point of the last STATUS_HOURS
before it: for a period in the past, what the service saw then.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.config import Config
from collector.influxql import InfluxQL, quote_ident, quote_string, time_literal
from collector.schema import RULE_STATUS, TAG_FACTORY, TAG_MACHINE, TICKET

__all__ = ["Upkeep", "upkeep"]

LOOKBACK_DAYS = 365
STATUS_HOURS = 24
DAY_MS = 86_400_000
TAG_RULE, TAG_TEST = "rule", "test"  # tags of `ticket` and `rule_status` (maintenance/)


@dataclass(frozen=True, slots=True)
class Upkeep:
    opened: int
    resolved: int
    mttr_h: float | None  # None with no repair ended in the period
    repairs: int
    preventive_done: int
    # (machine, rule, share of the meter's limit reached): due at 1 and over, most advanced first
    meters: list[tuple[str, str, float]]
    drifting: list[tuple[str, str]]  # (machine, rule)


def upkeep(db: InfluxQL, config: Config, start_ms: int, end_ms: int) -> Upkeep:
    """The figures of [start_ms, end_ms); raises `collector.influxql.QueryError`."""
    factory = f"{quote_ident(TAG_FACTORY)} = {quote_string(config.factory)}"
    events_query = (
        f"SELECT {quote_ident('id')}, {quote_ident('event')} FROM {quote_ident(TICKET)}"
        f" WHERE {factory} AND time >= {time_literal(start_ms - LOOKBACK_DAYS * DAY_MS)}"
        f" AND time < {time_literal(end_ms)} GROUP BY {quote_ident(TAG_RULE)}"
    )
    status_query = (
        f"SELECT last({quote_ident('progress')}) AS progress FROM {quote_ident(RULE_STATUS)}"
        f" WHERE {factory} AND {quote_ident(TAG_TEST)} = 'meter'"
        f" AND time >= {time_literal(end_ms - STATUS_HOURS * 3_600_000)}"
        f" AND time < {time_literal(end_ms)}"
        f" GROUP BY {quote_ident(TAG_MACHINE)}, {quote_ident(TAG_RULE)};\n"
        f"SELECT last({quote_ident('firing')}) AS firing FROM {quote_ident(RULE_STATUS)}"
        f" WHERE {factory} AND {quote_ident(TAG_TEST)} = 'drift'"
        f" AND time >= {time_literal(end_ms - STATUS_HOURS * 3_600_000)}"
        f" AND time < {time_literal(end_ms)}"
        f" GROUP BY {quote_ident(TAG_MACHINE)}, {quote_ident(TAG_RULE)}"
    )
    events, (meters, drifts) = db.select(events_query), db.query(status_query)
    meter_rules = {r.id for r in config.maintenance.rules if r.meter is not None}

    opened = resolved = preventive = 0
    repair_s: list[float] = []
    by_ticket: dict[int, list[tuple[int, str, str]]] = {}
    for series in events:
        rule = series.tags.get(TAG_RULE, "")
        for row in series.rows:
            ticket, event = row.get("id"), row.get("event")
            if isinstance(ticket, int) and isinstance(event, str):
                by_ticket.setdefault(ticket, []).append((int(row["time"]), event, rule))
    for history in by_ticket.values():
        history.sort()
        since: int | None = None
        for at, event, rule in history:
            within = start_ms <= at < end_ms
            if event in ("opened", "reopened"):
                since = at
                opened += within
            elif event == "resolved":
                if within:
                    resolved += 1
                    preventive += rule in meter_rules
                    # A repair is a failure's: planned service (the meters) is not one, as for
                    # the maintenance service's own MTTR (maintenance/status.py).
                    if since is not None and rule not in meter_rules:
                        repair_s.append((at - since) / 1000)
                since = None
    due = [
        (series.tags.get(TAG_MACHINE, ""), series.tags.get(TAG_RULE, ""), float(row["progress"]))
        for series in meters
        for row in series.rows
        if isinstance(row.get("progress"), int | float)
    ]
    drifting = [
        (series.tags.get(TAG_MACHINE, ""), series.tags.get(TAG_RULE, ""))
        for series in drifts
        for row in series.rows
        if row.get("firing") is True
    ]
    return Upkeep(
        opened=opened,
        resolved=resolved,
        mttr_h=sum(repair_s) / len(repair_s) / 3600 if repair_s else None,
        repairs=len(repair_s),
        preventive_done=preventive,
        meters=sorted(due, key=lambda m: (-m[2], m[0], m[1])),
        drifting=sorted(drifting),
    )
