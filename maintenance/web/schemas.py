"""The JSON the API takes and answers (its OpenAPI schema): tickets, notes, stops, errors."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from collector.stops import Stop
from maintenance.model import Status, Ticket
from maintenance.store import HistoryEntry, Note, NoticeState

__all__ = [
    "AssignCreate",
    "ErrorPublic",
    "HistoryPublic",
    "NoteCreate",
    "NotePublic",
    "NoticePublic",
    "ReadingPublic",
    "RejectsCreate",
    "RejectsPublic",
    "ReliabilityPublic",
    "ResolveCreate",
    "StopPublic",
    "StopReasonCreate",
    "TicketDetail",
    "TicketPublic",
]

_Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorPublic(BaseModel):
    detail: str


class ReadingPublic(BaseModel):
    time_ms: int
    signal: str
    value: float


class TicketPublic(BaseModel):
    id: int
    machine: str
    sector: str
    rule: str
    severity: str
    status: Status
    title: str
    description: str
    crew: str | None
    assignee: str | None
    opened_ms: int
    updated_ms: int
    resolved_ms: int | None
    condition_cleared_ms: int | None

    @classmethod
    def of(cls, ticket: Ticket) -> TicketPublic:
        return cls.model_validate(ticket, from_attributes=True)


class HistoryPublic(BaseModel):
    at_ms: int
    actor: str
    event: str
    changes: list[tuple[str, str | int | None, str | int | None]]
    note: str | None

    @classmethod
    def of(cls, entry: HistoryEntry) -> HistoryPublic:
        changes = [(c.field, c.old, c.new) for c in entry.changes]
        return cls(
            at_ms=entry.at_ms,
            actor=entry.actor,
            event=entry.event,
            changes=changes,
            note=entry.note,
        )


class NotePublic(BaseModel):
    at_ms: int
    actor: str
    text: str
    parts: str | None
    minutes: int | None

    @classmethod
    def of(cls, note: Note) -> NotePublic:
        return cls.model_validate(note, from_attributes=True)


class NoticePublic(BaseModel):
    target: str
    status: str
    attempts: int
    sent_ms: int | None
    next_attempt_ms: int | None
    last_error: str | None

    @classmethod
    def of(cls, notice: NoticeState) -> NoticePublic:
        return cls.model_validate(notice, from_attributes=True)


class TicketDetail(TicketPublic):
    readings: list[ReadingPublic]
    history: list[HistoryPublic]
    notes: list[NotePublic]
    notices: list[NoticePublic]


class NoteCreate(_Body):
    """A note: text, the parts used and the minutes spent; at least one of them."""

    text: _Text = ""
    parts: _Text | None = None
    minutes: int | None = Field(None, gt=0, le=100_000)


class ResolveCreate(_Body):
    note: _Text | None = None


class AssignCreate(_Body):
    """Who the ticket is given to: any person's name (yours, to take it), or null for nobody."""

    assignee: str | None = Field(
        description="A person's name (at most 200 characters); null assigns it to nobody."
    )


class ReliabilityPublic(BaseModel):
    """MTBF and MTTR of a machine over the last `days`, from the tickets of its failure rules
    (the meter rules of planned service left out)."""

    machine: str
    days: int
    start_ms: int = Field(description="The window's start (UTC milliseconds).")
    end_ms: int = Field(description="The window's end: now (UTC milliseconds).")
    mtbf_h: float | None = Field(
        description="Mean time between failures: the window's hours over the failures that "
        "began in it (calendar time); null with no failure."
    )
    mttr_h: float | None = Field(
        description="Mean time to repair: hours from opened or reopened to resolved, over the "
        "repairs ended in the window; null with none."
    )
    failures: int = Field(description="Tickets opened or reopened in the window.")


class StopPublic(BaseModel):
    id: str
    machine: str
    sector: str
    start_ms: int
    duration_s: float
    lost_s: float
    state: str
    open: bool
    reason: str

    @classmethod
    def of(cls, stop: Stop) -> StopPublic:
        return cls.model_validate(stop, from_attributes=True)


class StopReasonCreate(_Body):
    """A reason's id or its name in any language; "" clears the reason."""

    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


class RejectsCreate(_Body):
    """Parts rejected on a machine in one shift of a local day; again for the same shift
    replaces the figure."""

    machine: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
    date: dt.date = Field(description="The plant-local day the shift starts on.")
    shift: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
    count: int = Field(description="Whole parts rejected, 0 or more (0 clears an entry).")


class RejectsPublic(BaseModel):
    machine: str
    sector: str
    date: dt.date
    shift: str
    count: int
    start_ms: int = Field(description="The shift's start (UTC milliseconds).")
    end_ms: int = Field(description="The shift's end (UTC milliseconds).")
    minutes: int = Field(description="The planned minutes that carry the rejects.")
