"""The pages: server-rendered HTML that works on a cheap phone without JavaScript. A form
changes something only with the session's CSRF token and a logged-in person."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from collector.config import LANGUAGES, Language
from collector.i18n import translate
from collector.stops import Stop, clock, reason_name
from maintenance.model import STATUSES, Status, Ticket
from maintenance.status import RELIABILITY_DAYS
from maintenance.store import InvalidEntry, TicketNotFound
from maintenance.web.api import check_token, web_of
from maintenance.web.auth import Principal, Session, may_change_sector
from maintenance.web.core import MAX_ASSIGNEE, MAX_TICKET_ID, Refusal, Web
from maintenance.web.locale import (
    LANG_COOKIE,
    format_datetime,
    format_day,
    format_number,
    negotiate,
)
from maintenance.web.rejects import MAX_REJECTS

__all__ = ["SESSION_COOKIE", "error_page", "router"]

SESSION_COOKIE: Final = "aguante_session"
ACTIVE: Final[tuple[Status, ...]] = ("open", "acknowledged", "in_progress")
READINGS_SHOWN: Final = 50

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


@dataclass
class Visit:
    """One request to a page: the app, the session (new if the browser had none), who, language."""

    web: Web
    session: Session
    fresh: bool
    who: Principal | None
    language: Language

    def t(self, key: str, /, **values: Any) -> str:
        shown = {
            k: translate(self.language, v) if isinstance(v, str) and v.startswith("web.") else v
            for k, v in values.items()
        }
        return translate(self.language, key, **shown)


def _visit(request: Request) -> Visit:
    web = web_of(request)
    session = web.sessions.load(request.cookies.get(SESSION_COOKIE))
    fresh = session is None
    if session is None:
        session = web.sessions.new(None)
    who = web.tokens.by_fingerprint(session.who) if session.who else None
    language = negotiate(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        request.headers.get("accept-language"),
        web.config.language,
    )
    return Visit(web, session, fresh, who, language)


def _set_cookies(request: Request, response: Response, visit: Visit) -> None:
    secure = request.url.scheme == "https"
    if visit.fresh:
        response.set_cookie(
            SESSION_COOKIE,
            visit.web.sessions.dump(visit.session),
            httponly=True,
            samesite="lax",
            secure=secure,
        )
    if request.query_params.get("lang") and visit.language in LANGUAGES:
        response.set_cookie(
            LANG_COOKIE, visit.language, max_age=365 * 86400, samesite="lax", secure=secure
        )


def _render(
    request: Request, visit: Visit, name: str, code: int = 200, /, **values: Any
) -> HTMLResponse:
    web = visit.web
    context = {
        "t": visit.t,
        "when": lambda ms: format_datetime(ms, visit.language, web.zone),
        "num": lambda value: format_number(value, visit.language),
        "who": visit.who,
        "csrf": web.sessions.csrf_token(visit.session),
        "lang": visit.language,
        "languages": LANGUAGES,
        "path": request.url.path,
        "factory": web.config.factory,
        **values,
    }
    response = templates.TemplateResponse(request, name, context, status_code=code)
    _set_cookies(request, response, visit)
    return response


def error_page(request: Request, exc: Refusal) -> HTMLResponse:
    visit = _visit(request)
    return _render(request, visit, "error.html", exc.status, message=visit.t(exc.key, **exc.values))


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(str(request.url.path))}", 303)


def _may_read(visit: Visit) -> bool:
    return visit.who is not None or visit.web.config.maintenance.web.open_reading


async def _checked_form(request: Request, visit: Visit) -> dict[str, str]:
    """The form's fields, once its CSRF token is the session's (else 403)."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if visit.fresh or not visit.web.sessions.csrf_ok(visit.session, fields.get("csrf")):
        raise Refusal(403, "the form's CSRF token is missing or wrong", "web.error.csrf")
    return fields


# -- logging in and out


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/tickets"


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _render(request, _visit(request), "login.html", next=_safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    visit = _visit(request)
    fields = await _checked_form(request, visit)
    target = _safe_next(fields.get("next"))
    try:
        check_token(visit.web, request, fields.get("token", "").strip())
    except Refusal as exc:
        return _render(
            request, visit, "login.html", exc.status, next=target, error=visit.t(exc.key)
        )
    fingerprint = visit.web.tokens.fingerprint(fields.get("token", "").strip())
    # A new session id on log-in, so a session planted before it is worth nothing after.
    visit.session, visit.fresh = visit.web.sessions.new(fingerprint), True
    response = RedirectResponse(target, 303)
    _set_cookies(request, response, visit)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    visit = _visit(request)
    await _checked_form(request, visit)
    visit.session, visit.fresh = visit.web.sessions.new(None), True
    response = RedirectResponse("/login", 303)
    _set_cookies(request, response, visit)
    return response


# -- tickets


@router.get("/tickets", response_class=HTMLResponse)
async def ticket_list(
    request: Request, sector: str | None = None, status: str | None = None
) -> Response:
    visit = _visit(request)
    if not _may_read(visit):
        return _to_login(request)
    web = visit.web
    sector = sector or None
    web.check_sector(sector)
    chosen = status or "active"
    wanted: Status | tuple[Status, ...] | None
    if chosen == "all":
        wanted = None
    elif chosen in STATUSES:
        wanted = next(s for s in STATUSES if s == chosen)
    else:
        chosen, wanted = "active", ACTIVE
    tickets = await asyncio.to_thread(
        web.store.list, wanted, [sector] if sector else None, None, 200
    )
    return _render(
        request,
        visit,
        "tickets.html",
        tickets=tickets,
        sectors=web.sector_ids,
        sector=sector,
        status=chosen,
        statuses=STATUSES,
    )


async def _ticket_page(
    request: Request, visit: Visit, ticket_id: int, error: str | None = None, status: int = 200
) -> HTMLResponse:
    web = visit.web
    if not 0 < ticket_id <= MAX_TICKET_ID:
        raise Refusal(
            404, f"ticket {ticket_id} does not exist", "web.error.no_ticket", id=ticket_id
        )

    def read() -> tuple[Ticket, list[Any], list[Any], list[Any]]:
        return (
            web.store.get(ticket_id),
            web.store.history(ticket_id),
            web.store.notes(ticket_id),
            web.store.notices(ticket_id),
        )

    try:
        ticket, history, notes, notices = await asyncio.to_thread(read)
    except (TicketNotFound, InvalidEntry) as exc:
        raise Refusal(404, str(exc), "web.error.no_ticket", id=ticket_id) from exc
    reliability = None
    # A ticket may outlive its machine in the config: then there is no figure to show.
    if any(m.id == ticket.machine for m in web.config.machines):
        reliability = await web.reliability(ticket.machine, RELIABILITY_DAYS)
    return _render(
        request,
        visit,
        "ticket.html",
        status,
        ticket=ticket,
        readings=list(reversed(ticket.readings[-READINGS_SHOWN:])),
        history=history,
        notes=notes,
        notices=notices,
        may_act=visit.who is not None and may_change_sector(visit.who, ticket.sector),
        reliability=reliability,
        hours=lambda value: "—" if value is None else f"{format_number(value, visit.language)} h",
        max_assignee=MAX_ASSIGNEE,
        error=error,
    )


@router.get("/tickets/{ticket_id}", response_class=HTMLResponse)
async def ticket_page(request: Request, ticket_id: int) -> Response:
    visit = _visit(request)
    if not _may_read(visit):
        return _to_login(request)
    return await _ticket_page(request, visit, ticket_id)


def _minutes(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) <= 0 or int(text) > 100_000:
        raise Refusal(
            422, f"minutes must be a whole number above 0, got {text!r}", "web.error.minutes"
        )
    return int(text)


@router.post("/tickets/{ticket_id}/{action}")
async def ticket_action(request: Request, ticket_id: int, action: str) -> Response:
    visit = _visit(request)
    fields = await _checked_form(request, visit)
    if visit.who is None:
        return _to_login(request)
    try:
        if action in ("acknowledge", "start"):
            await visit.web.act(
                visit.who, ticket_id, "acknowledge" if action == "acknowledge" else "start"
            )
        elif action == "resolve":
            await visit.web.act(visit.who, ticket_id, "resolve", note=fields.get("note"))
        elif action == "assign":
            # "To me" takes the ticket; an empty name gives it to nobody.
            name = visit.who.name if fields.get("to") == "me" else fields.get("assignee", "")
            await visit.web.act(visit.who, ticket_id, "assign", assignee=name.strip() or None)
        elif action == "notes":
            await visit.web.act(
                visit.who,
                ticket_id,
                "note",
                note=fields.get("text", ""),
                parts=fields.get("parts") or None,
                minutes=_minutes(fields.get("minutes")),
            )
        else:
            raise Refusal(404, f"no action {action!r}", "web.error.no_ticket", id=ticket_id)
    except Refusal as exc:
        if exc.status == 404:
            raise
        return await _ticket_page(
            request, visit, ticket_id, visit.t(exc.key, **exc.values), exc.status
        )
    return RedirectResponse(f"/tickets/{ticket_id}", 303)


# -- stops


async def _stops_page(
    request: Request,
    visit: Visit,
    sector: str | None,
    hours: int,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    web = visit.web
    if not sector:
        own = visit.who.crew.sectors if visit.who and visit.who.crew else []
        sector = own[0] if own else web.sector_ids[0]
    stops: list[Stop] = await web.stops(sector, hours)
    reasons = [(r.id, r.name(visit.language)) for r in web.config.stop_reasons]
    return _render(
        request,
        visit,
        "stops.html",
        status,
        stops=stops,
        sector=sector,
        sectors=web.sector_ids,
        hours=hours,
        reasons=reasons,
        reason_name=lambda rid: reason_name(web.config, rid, visit.language),
        clock=clock,
        error=error,
    )


def _hours(text: str | None) -> int:
    return int(text) if text and text.isdigit() and 0 < int(text) <= 24 * 14 else 24


@router.get("/stops", response_class=HTMLResponse)
async def stops_page(
    request: Request, sector: str | None = None, hours: str | None = None
) -> Response:
    visit = _visit(request)
    if not _may_read(visit):
        return _to_login(request)
    return await _stops_page(request, visit, sector, _hours(hours))


# -- the assembly's report


def _report_form(
    request: Request,
    visit: Visit,
    month: str | None,
    *,
    error: str | None = None,
    done: str | None = None,
    values: dict[str, str] | None = None,
    status: int | None = None,
) -> HTMLResponse:
    web = visit.web
    today = dt.datetime.fromtimestamp(web.now_ms() / 1000, web.zone).date()
    last = (today.replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
    sectors = [(s.id, s.name or s.id) for s in web.config.sectors]
    code = status if status is not None else (400 if error else 200)
    return _render(
        request,
        visit,
        "report.html",
        code,
        month=month if month and _month(month) else last,
        latest=today.strftime("%Y-%m"),
        today=today.isoformat(),
        sectors=sectors,
        values=values or {},
        error=error,
        done=done,
    )


@router.post("/decisions")
async def record_decision(request: Request) -> Response:
    visit = _visit(request)
    fields = await _checked_form(request, visit)
    if visit.who is None:
        return _to_login(request)
    values = {k: fields.get(k, "").strip() for k in ("date", "sector", "text")}
    try:
        day = _decision_day(values["date"])
        recorded = await visit.web.record_decision(visit.who, day, values["text"], values["sector"])
    except Refusal as exc:
        message = visit.t(exc.key, **exc.values)
        return _report_form(request, visit, None, error=message, values=values, status=exc.status)
    return RedirectResponse(f"/report?recorded={recorded.day.isoformat()}", 303)


# Months and days the report and the decisions take: wide, but far from the calendar's ends
# (a month around year 1 or 9999 has no month before or after it).
FIRST_YEAR, LAST_YEAR = 1970, 2999


def _month(text: str | None) -> dt.date | None:
    """The first day of a month written YYYY-MM (what a month input sends), else None."""
    try:
        year, month = (int(part) for part in (text or "").split("-"))
        chosen = dt.date(year, month, 1)
    except ValueError:
        return None
    return chosen if FIRST_YEAR <= year <= LAST_YEAR else None


def _decision_day(text: str) -> dt.date:
    day = _reject_day(text)
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise Refusal(422, f"not a day of the plant: {text!r}", "web.error.bad_date", day=text)
    return day


@router.get("/report", response_class=HTMLResponse)
async def report_page(request: Request, month: str | None = None) -> Response:
    visit = _visit(request)
    if not _may_read(visit):
        return _to_login(request)
    chosen = _month(month)
    if chosen is None:
        error = visit.t("web.report.bad_month") if month else None
        done = None
        with contextlib.suppress(ValueError):  # shown only for a day, written here
            recorded = dt.date.fromisoformat(request.query_params.get("recorded", ""))
            done = visit.t("web.decision.recorded", day=format_day(recorded, visit.language))
        return _report_form(request, visit, month, error=error, done=done)
    page = await visit.web.report(chosen, visit.language)
    response = HTMLResponse(page)
    _set_cookies(request, response, visit)
    return response


@router.post("/stops/reason")
async def stop_reason(request: Request) -> Response:
    visit = _visit(request)
    fields = await _checked_form(request, visit)
    if visit.who is None:
        return _to_login(request)
    sector, hours = fields.get("sector"), _hours(fields.get("hours"))
    try:
        await visit.web.give_reason(visit.who, fields.get("stop_id", ""), fields.get("reason", ""))
    except Refusal as exc:
        message = visit.t(exc.key, **exc.values)
        return await _stops_page(request, visit, sector, hours, message, exc.status)
    return RedirectResponse(f"/stops?sector={quote(sector or '')}&hours={hours}", 303)


# -- rejects


def _rejects_page(
    request: Request,
    visit: Visit,
    values: dict[str, str],
    *,
    error: str | None = None,
    done: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    web = visit.web
    return _render(
        request,
        visit,
        "rejects.html",
        status,
        machines=web.machines_for(visit.who),
        shifts=web.shift_names(),
        today=web.today().isoformat(),
        values=values,
        error=error,
        done=done,
    )


@router.get("/rejects", response_class=HTMLResponse)
async def rejects_page(request: Request) -> Response:
    visit = _visit(request)
    if visit.who is None:
        return _to_login(request)
    values = {k: v for k, v in request.query_params.items() if k in _REJECT_FIELDS}
    done = None
    if request.query_params.get("saved") == "1" and len(values) == len(_REJECT_FIELDS):
        day = values["date"]
        with contextlib.suppress(ValueError):  # a hand-made link: show it as given
            day = format_day(dt.date.fromisoformat(day), visit.language)
        done = visit.t("web.rejects.saved", **(values | {"date": day}))
    return _rejects_page(request, visit, values, done=done)


_REJECT_FIELDS: Final = ("machine", "date", "shift", "count")


def _reject_count(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 9:
        raise Refusal(
            422,
            f"the rejected parts must be a whole number from 0 to {MAX_REJECTS}, got {text!r}",
            "web.error.reject_count",
            limit=MAX_REJECTS,
        )
    return int(text)


def _reject_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError as exc:
        raise Refusal(422, f"not a date: {text!r}", "web.error.bad_date", day=text.strip()) from exc


@router.post("/rejects")
async def enter_rejects(request: Request) -> Response:
    visit = _visit(request)
    fields = await _checked_form(request, visit)
    if visit.who is None:
        return _to_login(request)
    values = {k: fields.get(k, "").strip() for k in _REJECT_FIELDS}
    try:
        count = _reject_count(values["count"])
        entered = await visit.web.enter_rejects(
            visit.who, values["machine"], _reject_day(values["date"]), values["shift"], count
        )
    except Refusal as exc:
        message = visit.t(exc.key, **exc.values)
        return _rejects_page(request, visit, values, error=message, status=exc.status)
    shown = {
        "machine": entered.machine,
        "date": entered.day.isoformat(),
        "shift": entered.shift,
        "count": str(entered.count),
    }
    return RedirectResponse(f"/rejects?saved=1&{urlencode(shown)}", 303)
