"""The maintenance service's view for the dashboards, as InfluxDB points: each rule's verdict on
each machine with its open ticket (`rule_status`) and each machine's MTBF and MTTR
(`reliability`). InfluxQL cannot join the ticket store, so the service writes them every cycle
(docs/schema.md). Pure functions: the service reads the store and hands its answers in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from collector.config import Config, Machine
from collector.schema import (
    RELIABILITY,
    RULE_STATUS,
    TAG_FACTORY,
    TAG_MACHINE,
    TAG_SECTOR,
    FieldValue,
    Point,
)
from maintenance.events import TAG_RULE
from maintenance.model import Finding, Ticket
from maintenance.store import HistoryEntry

__all__ = [
    "RELIABILITY_DAYS",
    "TAG_TEST",
    "ReliabilityFigures",
    "failure_rules",
    "machines_with_failures",
    "opened_at",
    "reliability_figures",
    "reliability_point",
    "rule_status_points",
]

RELIABILITY_DAYS: Final = 90  # the window of the ticket page's and the dashboards' MTBF and MTTR
TAG_TEST: Final = "test"  # the rule's kind: threshold, rate, drift, meter, offline, error_rate


@dataclass(frozen=True, slots=True)
class ReliabilityFigures:
    """MTBF and MTTR in hours (None: no failure, or no repair, in the window) and the failures
    that began in it."""

    mtbf_h: float | None
    mttr_h: float | None
    failures: int


def failure_rules(config: Config) -> list[str]:
    """The rules whose tickets are failures: all but the meters, which plan service."""
    return [r.id for r in config.maintenance.rules if r.meter is None]


def machines_with_failures(config: Config) -> list[Machine]:
    """The machines at least one failure rule watches, in config order."""
    watched = {
        m.id
        for rule in config.maintenance.rules
        if rule.meter is None
        for m in config.rule_machines(rule)
    }
    return [m for m in config.machines if m.id in watched]


def reliability_figures(
    mtbf_s: float | None, mttr_s: float | None, start_ms: int, end_ms: int
) -> ReliabilityFigures:
    """What `TicketStore.mtbf_mttr` answered for [start_ms, end_ms), in hours."""
    # MTBF is the window over the failures in it: the count comes back exactly.
    failures = round((end_ms - start_ms) / 1000 / mtbf_s) if mtbf_s else 0
    return ReliabilityFigures(
        None if mtbf_s is None else mtbf_s / 3600,
        None if mttr_s is None else mttr_s / 3600,
        failures,
    )


def opened_at(history: Iterable[HistoryEntry]) -> int | None:
    """When a ticket was opened or last reopened (ms): the age a crew counts from. The ticket's
    own `opened_ms` keeps its first opening."""
    times = [entry.at_ms for entry in history if entry.event in ("opened", "reopened")]
    return max(times, default=None)


def rule_status_points(
    config: Config,
    findings: Sequence[Finding],
    tickets: Mapping[tuple[str, str], Ticket],
    opened_ms: Mapping[int, int],
    now_ms: int,
) -> list[Point]:
    """One `rule_status` point per finding at `now_ms`: its verdict, a meter's progress (the
    largest measured/limit share), and the unresolved ticket of its machine and rule —
    `tickets` keyed by (machine, rule), `opened_ms` by ticket id (its opened or reopened time;
    the ticket's `opened_ms` when missing); 0 and "" when there is none."""
    rules = {r.id: r for r in config.maintenance.rules}
    machines = {m.id: m for m in config.machines}
    points = []
    for finding in findings:
        rule, machine = rules[finding.rule], machines[finding.machine]
        fields: dict[str, FieldValue] = {
            "verdict": finding.verdict,
            "firing": finding.verdict == "fire",
        }
        progress = finding.values.get("progress")
        if rule.meter is not None and isinstance(progress, int | float):
            fields["progress"] = float(progress)
        ticket = tickets.get((finding.machine, finding.rule))
        if ticket is None:
            # Zeros, not absent fields: `last(ticket)` over a few cycles must see the ticket
            # gone at once, not the id of an earlier point.
            fields.update(ticket=0, ticket_status="", ticket_opened_ms=0)
        else:
            fields["ticket"] = ticket.id
            fields["ticket_status"] = ticket.status
            fields["ticket_opened_ms"] = opened_ms.get(ticket.id, ticket.opened_ms)
        tags = {
            TAG_FACTORY: config.factory,
            TAG_SECTOR: machine.sector,
            TAG_MACHINE: machine.id,
            TAG_RULE: rule.id,
            TAG_TEST: rule.test,
        }
        points.append(Point(RULE_STATUS, tags, fields, now_ms))
    return points


def reliability_point(
    factory: str,
    machine: Machine,
    figures: ReliabilityFigures,
    open_tickets: int,
    now_ms: int,
    window_days: int = RELIABILITY_DAYS,
) -> Point:
    """A machine's `reliability` point at `now_ms`: MTBF and MTTR over the `window_days` before
    it (absent when undefined), its failures in them and its unresolved tickets."""
    fields: dict[str, FieldValue] = {
        "failures": figures.failures,
        "open_tickets": open_tickets,
        "window_days": window_days,
    }
    if figures.mtbf_h is not None:
        fields["mtbf_h"] = figures.mtbf_h
    if figures.mttr_h is not None:
        fields["mttr_h"] = figures.mttr_h
    tags = {TAG_FACTORY: factory, TAG_SECTOR: machine.sector, TAG_MACHINE: machine.id}
    return Point(RELIABILITY, tags, fields, now_ms)
