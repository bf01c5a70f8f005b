"""The JSON API under /api: tickets and stops to read, and the changes crews and workers make,
each with a bearer token (`Authorization: Bearer <token>`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from maintenance.model import Status
from maintenance.store import InvalidEntry, TicketNotFound
from maintenance.web.auth import Principal
from maintenance.web.core import MAX_RELIABILITY_DAYS, MAX_TICKET_ID, Action, Refusal, Web
from maintenance.web.schemas import (
    AssignCreate,
    ErrorPublic,
    HistoryPublic,
    NoteCreate,
    NotePublic,
    NoticePublic,
    ReadingPublic,
    RejectsCreate,
    RejectsPublic,
    ReliabilityPublic,
    ResolveCreate,
    StopPublic,
    StopReasonCreate,
    TicketDetail,
    TicketPublic,
)

__all__ = ["client_address", "reader", "router", "web_of"]

_bearer = HTTPBearer(auto_error=False, description="A crew member's or a worker's token.")
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    code: {"model": ErrorPublic} for code in (401, 403, 404, 409, 422, 429)
}

router = APIRouter(prefix="/api", tags=["api"], responses=_ERRORS)


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def check_token(web: Web, request: Request, token: str) -> Principal:
    """The person a token belongs to; a wrong one counts against the client's address."""
    address = client_address(request)
    if web.limiter.blocked(address):
        raise Refusal(
            429,
            f"too many wrong tokens from {address}; wait a minute and try again",
            "web.error.too_many",
        )
    who = web.tokens.by_token(token)
    if who is None:
        web.limiter.failed(address)
        raise Refusal(401, "unknown token", "web.error.bad_token")
    return who


async def _bearer_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    if credentials is None:
        return None
    return check_token(web_of(request), request, credentials.credentials)


def reader(web: Web, request: Request, who: Principal | None) -> Principal | None:
    """Who reads: a token, else a page session, else nobody when reading is open."""
    if who is None:
        session = web.sessions.load(request.cookies.get("aguante_session"))
        if session is not None and session.who is not None:
            who = web.tokens.by_fingerprint(session.who)
    if who is None and not web.config.maintenance.web.open_reading:
        raise Refusal(
            401,
            "reading needs a token: send Authorization: Bearer <token> "
            "(maintenance.web.open_reading is off)",
            "web.error.login",
        )
    return who


async def _reader(
    request: Request, who: Annotated[Principal | None, Depends(_bearer_principal)]
) -> Principal | None:
    return reader(web_of(request), request, who)


async def _actor(who: Annotated[Principal | None, Depends(_bearer_principal)]) -> Principal:
    if who is None:
        raise Refusal(
            401, "this change needs a token: send Authorization: Bearer <token>", "web.error.login"
        )
    return who


WebDep = Annotated[Web, Depends(web_of)]
# The store keeps ids as SQL integers (64-bit); a larger number names no ticket.
TicketId = Annotated[int, Path(ge=1, le=MAX_TICKET_ID)]
Reader = Annotated[Principal | None, Depends(_reader)]
Actor = Annotated[Principal, Depends(_actor)]


@router.get("/tickets", response_model=list[TicketPublic])
async def tickets(
    web: WebDep,
    _who: Reader,
    sector: str | None = None,
    status: Annotated[list[Status] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_TICKET_ID)] = 0,
) -> list[TicketPublic]:
    """Tickets, newest first, of a sector and in some statuses (all when not given)."""
    web.check_sector(sector)
    found = await asyncio.to_thread(
        web.store.list, status, [sector] if sector else None, None, limit, offset
    )
    return [TicketPublic.of(t) for t in found]


@router.get("/tickets/{ticket_id}", response_model=TicketDetail)
async def ticket(web: WebDep, _who: Reader, ticket_id: TicketId) -> TicketDetail:
    """A ticket with its readings, history, notes and the state of its notices."""

    def read() -> TicketDetail:
        found = web.store.get(ticket_id)
        return TicketDetail(
            **TicketPublic.of(found).model_dump(),
            readings=[
                ReadingPublic(time_ms=r.time_ms, signal=r.signal, value=r.value)
                for r in found.readings
            ],
            history=[HistoryPublic.of(h) for h in web.store.history(ticket_id)],
            notes=[NotePublic.of(n) for n in web.store.notes(ticket_id)],
            notices=[NoticePublic.of(n) for n in web.store.notices(ticket_id)],
        )

    try:
        return await asyncio.to_thread(read)
    except (TicketNotFound, InvalidEntry) as exc:
        raise Refusal(404, str(exc), "web.error.no_ticket", id=ticket_id) from exc


async def _move(web: Web, who: Principal, ticket_id: int, action: Action) -> TicketPublic:
    event = await web.act(who, ticket_id, action)
    return TicketPublic.of(event.ticket)


@router.post("/tickets/{ticket_id}/acknowledge", response_model=TicketPublic)
async def acknowledge(web: WebDep, who: Actor, ticket_id: TicketId) -> TicketPublic:
    """open → acknowledged."""
    return await _move(web, who, ticket_id, "acknowledge")


@router.post("/tickets/{ticket_id}/start", response_model=TicketPublic)
async def start(web: WebDep, who: Actor, ticket_id: TicketId) -> TicketPublic:
    """open or acknowledged → in progress."""
    return await _move(web, who, ticket_id, "start")


@router.post("/tickets/{ticket_id}/notes", response_model=TicketPublic, status_code=201)
async def add_note(web: WebDep, who: Actor, ticket_id: TicketId, body: NoteCreate) -> TicketPublic:
    """A note, the parts used and the minutes spent (at least one of them)."""
    event = await web.act(
        who, ticket_id, "note", note=body.text, parts=body.parts, minutes=body.minutes
    )
    return TicketPublic.of(event.ticket)


@router.post("/tickets/{ticket_id}/resolve", response_model=TicketPublic)
async def resolve(
    web: WebDep, who: Actor, ticket_id: TicketId, body: ResolveCreate | None = None
) -> TicketPublic:
    """Any unresolved status → resolved, with an optional closing note."""
    event = await web.act(who, ticket_id, "resolve", note=body.note if body else None)
    return TicketPublic.of(event.ticket)


@router.post("/tickets/{ticket_id}/assign", response_model=TicketPublic)
async def assign(web: WebDep, who: Actor, ticket_id: TicketId, body: AssignCreate) -> TicketPublic:
    """Give an unresolved ticket to a person (yourself, to take it), or to nobody (null)."""
    event = await web.act(who, ticket_id, "assign", assignee=body.assignee)
    return TicketPublic.of(event.ticket)


@router.get("/machines/{machine}/reliability", response_model=ReliabilityPublic)
async def reliability(
    web: WebDep,
    _who: Reader,
    machine: str,
    days: Annotated[int, Query(ge=1, le=MAX_RELIABILITY_DAYS)] = 90,
) -> ReliabilityPublic:
    """MTBF and MTTR of a machine over the last `days`, in hours; its meter rules (planned
    service) are not failures and are left out."""
    found = await web.reliability(machine, days)
    return ReliabilityPublic(
        machine=found.machine,
        days=found.days,
        start_ms=found.start_ms,
        end_ms=found.end_ms,
        mtbf_h=found.mtbf_h,
        mttr_h=found.mttr_h,
        failures=found.failures,
    )


@router.get("/stops", response_model=list[StopPublic])
async def stops(
    web: WebDep,
    _who: Reader,
    sector: str,
    hours: Annotated[float, Query(gt=0, le=24 * 14)] = 24,
) -> list[StopPublic]:
    """The stops of a sector's machines that began in the last `hours`, newest first."""
    return [StopPublic.of(s) for s in await web.stops(sector, hours)]


@router.post("/stops/{stop_id}/reason", response_model=StopPublic)
async def stop_reason(web: WebDep, who: Actor, stop_id: str, body: StopReasonCreate) -> StopPublic:
    """Give a stop its reason (an id or a name of the plant's stop reasons; "" clears it)."""
    return StopPublic.of(await web.give_reason(who, stop_id, body.reason))


@router.post("/rejects", response_model=RejectsPublic)
async def rejects(web: WebDep, who: Actor, body: RejectsCreate) -> RejectsPublic:
    """Parts rejected on a machine in a shift, spread over the shift's planned minutes (by the
    parts counted in each when the machine has a counter). Any worker; a crew for its sectors.
    Entering the same shift again replaces the figure."""
    entered = await web.enter_rejects(who, body.machine, body.date, body.shift, body.count)
    return RejectsPublic(
        machine=entered.machine,
        sector=entered.sector,
        date=entered.day,
        shift=entered.shift,
        count=entered.count,
        start_ms=entered.start_ms,
        end_ms=entered.end_ms,
        minutes=entered.minutes,
    )
