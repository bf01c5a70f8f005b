"""The types the maintenance parts hand each other: what a rule found, a ticket and its events,
and a notice for a crew (docs/maintenance.md).

Rules (`rules.py`) turn stored data into `Finding`s; the store (`store.py`) turns findings and
people's actions into tickets and `TicketEvent`s; the service (`service.py`) writes each event to
InfluxDB and queues a `Notice` per crew target, which the notifiers (`notify.py`) deliver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "STATUSES",
    "Finding",
    "Notice",
    "Reading",
    "Status",
    "Ticket",
    "TicketEvent",
    "Verdict",
]

# What a rule says of a machine this cycle: raise (or keep) a ticket, the condition is over, or
# neither (between the raise and clear levels, or not enough data): keep what is.
Verdict = Literal["fire", "clear", "hold"]

Status = Literal["open", "acknowledged", "in_progress", "resolved"]
STATUSES: tuple[Status, ...] = ("open", "acknowledged", "in_progress", "resolved")


@dataclass(frozen=True, slots=True)
class Reading:
    """One stored value kept with a ticket: the evidence that raised it."""

    time_ms: int
    signal: str
    value: float


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule on one machine at one evaluation.

    `values` fill the rule's title and description templates ({machine}, {value}, {limit},
    {signal}, ...); `readings` are the stored values that made the verdict, newest last.
    """

    rule: str
    machine: str
    verdict: Verdict
    at_ms: int
    values: Mapping[str, str | int | float] = field(default_factory=dict)
    readings: tuple[Reading, ...] = ()


@dataclass(frozen=True, slots=True)
class Ticket:
    """A ticket as the store keeps it (one open per machine and rule)."""

    id: int
    machine: str
    sector: str
    rule: str
    severity: str
    status: Status
    title: str
    description: str
    crew: str | None
    opened_ms: int
    updated_ms: int
    resolved_ms: int | None = None
    condition_cleared_ms: int | None = None  # the rule said "clear"; people still resolve it
    assignee: str | None = None
    readings: tuple[Reading, ...] = ()


@dataclass(frozen=True, slots=True)
class TicketEvent:
    """Something that happened to a ticket: by a rule (actor "aguante") or a person."""

    ticket: Ticket
    kind: Literal[
        "opened",
        "updated",
        "reopened",
        "condition_cleared",
        "acknowledged",
        "started",
        "noted",
        "resolved",
    ]
    actor: str
    at_ms: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """A message to one notification target about one ticket event, already in the crew's
    language; `payload` is the JSON sent to MQTT and webhooks."""

    target: str
    ticket_id: int
    subject: str
    text: str
    payload: Mapping[str, object]
