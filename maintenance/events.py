"""Ticket events as InfluxDB points (`ticket`), which Grafana shows as annotations."""

from __future__ import annotations

from collector.schema import TAG_FACTORY, TAG_MACHINE, TAG_SECTOR, TICKET, Point
from maintenance.model import TicketEvent

__all__ = ["TAG_RULE", "ticket_point"]

# Two rules firing on one machine in one evaluation make two events at the same millisecond;
# without the rule among the tags they would be one series and time, and InfluxDB would keep
# only the last of them.
TAG_RULE = "rule"


def ticket_point(event: TicketEvent, factory: str) -> Point:
    """The `ticket` point of an event: what happened (`event`), to which ticket, at its time."""
    ticket = event.ticket
    return Point(
        TICKET,
        {
            TAG_FACTORY: factory,
            TAG_SECTOR: ticket.sector,
            TAG_MACHINE: ticket.machine,
            TAG_RULE: ticket.rule,
        },
        {
            "id": ticket.id,
            "status": ticket.status,
            "title": ticket.title,
            "severity": ticket.severity,
            "event": event.kind,
        },
        event.at_ms,
    )
