"""What the web app's pages and API share (`Web`): every change goes through it. It checks who
may make the change, makes it in the store (in a thread; the store is synchronous) and hands the
event to the publisher, so it reaches InfluxDB and the crews like a rule's own events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol
from zoneinfo import ZoneInfo

from collector.config import Config, Language, Machine
from collector.influxql import InfluxQL, QueryError
from collector.schema import Point
from collector.shifts import ShiftCalendar
from collector.sinks import Sink, WriteError
from collector.stops import (
    InvalidStopId,
    Stop,
    StopNotFound,
    UnknownReason,
    assign_reason,
    list_stops,
    parse_stop_id,
)
from dashboards.decisions import Decision, InvalidDecision, check_decision, record_decision
from dashboards.report import Period, gather, render_html
from maintenance.model import Ticket, TicketEvent
from maintenance.status import failure_rules, reliability_figures
from maintenance.store import InvalidEntry, TicketNotFound, TicketStore, TransitionRefused
from maintenance.web.auth import (
    LoginLimiter,
    Principal,
    Sessions,
    Tokens,
    may_change_sector,
)
from maintenance.web.rejects import (
    MAX_REJECTS,
    RejectsPlan,
    TooManyRejects,
    plan_rejects,
    shift_span,
    shifts_of_day,
    sums_after,
)

__all__ = [
    "MAX_ASSIGNEE",
    "MAX_RELIABILITY_DAYS",
    "MAX_TICKET_ID",
    "Action",
    "Publisher",
    "Refusal",
    "RejectsEntered",
    "Reliability",
    "Web",
]

Action = Literal["acknowledge", "start", "resolve"]
_HERE: Final = Path(__file__).parent
MAX_ASSIGNEE: Final = 200
MAX_RELIABILITY_DAYS: Final = 3650
MAX_STOP_HOURS: Final = 24 * 14
OLDEST_DAY: Final = dt.date(2000, 1, 1)  # dates as old as year 1 overflow the calendar
MAX_TICKET_ID: Final = 2**63 - 1  # SQL integers: a larger id names no ticket


class Publisher(Protocol):
    """What the app needs of `maintenance.service.TicketPublisher`."""

    async def publish(self, events: list[TicketEvent], now_ms: int) -> None: ...


@dataclass(frozen=True, slots=True)
class RejectsEntered:
    """What an entry of rejects wrote: the shift's span and the minutes that carry them."""

    machine: str
    sector: str
    day: dt.date
    shift: str
    count: int
    start_ms: int
    end_ms: int
    minutes: int


@dataclass(frozen=True, slots=True)
class Reliability:
    """MTBF and MTTR of a machine over the `days` before `end_ms`, in hours (None: no failure,
    or no repair, in the window); `failures` the failures that began in it."""

    machine: str
    days: int
    start_ms: int
    end_ms: int
    mtbf_h: float | None
    mttr_h: float | None
    failures: int


class Refusal(Exception):
    """A request refused: `status` the HTTP status, `message` the API's text (English) and
    `key`/`values` the same in the reader's language on the pages."""

    def __init__(self, code: int, message: str, key: str, /, **values: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.key, self.values = code, message, key, values


def _store_refusal(exc: Exception) -> Refusal:
    if isinstance(exc, TicketNotFound):
        return Refusal(404, str(exc), "web.error.no_ticket", id=exc.ticket_id)
    if isinstance(exc, TransitionRefused):
        return Refusal(
            409, str(exc), "web.error.refused", id=exc.ticket_id, status=f"web.status.{exc.status}"
        )
    if isinstance(exc, InvalidEntry):
        return Refusal(422, str(exc), "web.error.empty_note")
    raise exc


def _checked_assignee(assignee: str | None) -> str | None:
    if assignee is None:
        return None
    name = assignee.strip()
    if not name:
        raise Refusal(
            422,
            "the assignee must name a person; null assigns the ticket to nobody",
            "web.error.assignee_empty",
        )
    if len(name) > MAX_ASSIGNEE:
        raise Refusal(
            422,
            f"the assignee's name is {len(name)} characters long; at most {MAX_ASSIGNEE}",
            "web.error.assignee_long",
            limit=MAX_ASSIGNEE,
        )
    return name


def _already_assigned(exc: TransitionRefused, assignee: str | None) -> Refusal:
    if assignee is None:
        return Refusal(409, str(exc), "web.error.assigned_nobody", id=exc.ticket_id)
    return Refusal(409, str(exc), "web.error.assigned_already", id=exc.ticket_id, name=assignee)


@dataclass
class Web:
    """What the routes share: the plant, the store, the publisher, InfluxDB and who is who."""

    config: Config
    store: TicketStore
    publisher: Publisher
    db_factory: Callable[[], InfluxQL]
    sink: Sink
    tokens: Tokens
    sessions: Sessions
    limiter: LoginLimiter
    clock: Callable[[], float]
    zone: ZoneInfo
    # One decision recorded at a time: each takes the next free millisecond of its day, read
    # from InfluxDB, and two at once would take the same one (the second overwriting the first).
    decisions_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def now_ms(self) -> int:
        return round(self.clock() * 1000)

    @property
    def sector_ids(self) -> list[str]:
        return [s.id for s in self.config.sectors]

    def check_sector(self, sector: str | None) -> None:
        if sector is not None and sector not in self.sector_ids:
            known = ", ".join(self.sector_ids)
            raise Refusal(
                422,
                f"unknown sector {sector!r}; one of: {known}",
                "web.error.no_sector",
                sector=sector,
            )

    # -- tickets

    async def ticket(self, ticket_id: int) -> Ticket:
        if not 0 < ticket_id <= MAX_TICKET_ID:
            raise Refusal(
                404, f"ticket {ticket_id} does not exist", "web.error.no_ticket", id=ticket_id
            )
        try:
            return await asyncio.to_thread(self.store.get, ticket_id)
        except (TicketNotFound, InvalidEntry) as exc:
            raise _store_refusal(exc) from exc

    def authorise(self, who: Principal, sector: str, what: str) -> None:
        """Refuse (403) a change to `what` in `sector` that `who` may not make."""
        if may_change_sector(who, sector):
            return
        if who.crew is None:
            raise Refusal(
                403,
                f"{who.name} is a worker; only a maintenance crew changes tickets",
                "web.error.worker",
                name=who.name,
            )
        raise Refusal(
            403,
            f"{who.name} (crew {who.crew.id}) looks after {', '.join(who.crew.sectors)}; "
            f"{what} is in sector {sector}",
            "web.error.not_your_sector",
            name=who.name,
            sector=sector,
        )

    async def act(
        self,
        who: Principal,
        ticket_id: int,
        action: Action | Literal["note", "assign"],
        *,
        note: str | None = None,
        parts: str | None = None,
        minutes: int | None = None,
        assignee: str | None = None,
    ) -> TicketEvent:
        """Make a change to a ticket as `who` (a crew of its sector), and publish its event."""
        if action == "assign":
            assignee = _checked_assignee(assignee)
        ticket = await self.ticket(ticket_id)
        self.authorise(who, ticket.sector, f"ticket {ticket_id}")
        now = self.now_ms()
        try:
            if action == "assign":
                event = await asyncio.to_thread(
                    self.store.assign, ticket_id, who.name, assignee, now
                )
            elif action == "acknowledge":
                event = await asyncio.to_thread(self.store.acknowledge, ticket_id, who.name, now)
            elif action == "start":
                event = await asyncio.to_thread(self.store.start, ticket_id, who.name, now)
            elif action == "resolve":
                event = await asyncio.to_thread(self.store.resolve, ticket_id, who.name, now, note)
            else:
                event = await asyncio.to_thread(
                    self.store.add_note, ticket_id, who.name, note or "", now, parts, minutes
                )
        except TransitionRefused as exc:
            if action == "assign" and exc.status != "resolved":
                raise _already_assigned(exc, assignee) from exc
            raise _store_refusal(exc) from exc
        except (TicketNotFound, InvalidEntry) as exc:
            raise _store_refusal(exc) from exc
        await self.publisher.publish([event], now)
        return event

    # -- reliability

    async def reliability(self, machine_id: str, days: int) -> Reliability:
        """MTBF and MTTR of a machine over the last `days`, from its failure rules' tickets."""
        machine = self.machine(machine_id)
        if isinstance(days, bool) or not 1 <= days <= MAX_RELIABILITY_DAYS:
            raise Refusal(
                422,
                f"days must be a whole number from 1 to {MAX_RELIABILITY_DAYS}, got {days}",
                "web.error.reliability_days",
                limit=MAX_RELIABILITY_DAYS,
            )
        end = self.now_ms()
        start = end - days * 86_400_000
        mtbf_s, mttr_s = await asyncio.to_thread(
            self.store.mtbf_mttr, machine.id, start, end, rules=failure_rules(self.config)
        )
        figures = reliability_figures(mtbf_s, mttr_s, start, end)
        return Reliability(
            machine.id, days, start, end, figures.mtbf_h, figures.mttr_h, figures.failures
        )

    # -- stops

    def machines_of(self, sector: str) -> list[str]:
        return [m.id for m in self.config.machines if m.sector == sector]

    async def stops(self, sector: str, hours: float) -> list[Stop]:
        self.check_sector(sector)
        now = self.now_ms()
        start = now - round(hours * 3_600_000)

        def query() -> list[Stop]:
            with self.db_factory() as db:
                return list_stops(db, self.config, start, now, self.machines_of(sector))

        try:
            return await asyncio.to_thread(query)
        except QueryError as exc:
            raise Refusal(502, f"stops not read: {exc}", "web.error.influx") from exc

    # -- the assembly's report

    async def report(self, month: dt.date, language: Language) -> str:
        """The report of one calendar month (compared with the month before), as a page."""
        following = (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        period = Period(month.replace(day=1), following - dt.timedelta(days=1))
        moment = dt.datetime.fromtimestamp(self.now_ms() / 1000, dt.UTC)

        def build() -> str:
            with self.db_factory() as db:
                report = gather(db, self.config, period, now=moment)
            return render_html(report, self.config, language)

        try:
            return await asyncio.to_thread(build)
        except QueryError as exc:
            raise Refusal(502, f"report not made: {exc}", "web.error.influx") from exc

    async def record_decision(
        self, who: Principal, day: dt.date, text: str, sector: str
    ) -> Decision:
        """Anyone logged in records a decision of the assembly (the assembly is everyone)."""
        try:
            check_decision(self.config, text, sector)
        except InvalidDecision as exc:
            raise Refusal(422, str(exc), "web.error.bad_decision") from exc
        try:
            async with self.decisions_lock:
                with self.db_factory() as db:
                    return await record_decision(db, self.sink, self.config, day, text, sector)
        except InvalidDecision as exc:
            raise Refusal(422, str(exc), "web.error.bad_decision") from exc
        except (QueryError, WriteError) as exc:
            raise Refusal(502, f"decision not saved: {exc}", "web.error.influx") from exc

    async def give_reason(self, who: Principal, stop_id: str, reason: str) -> Stop:
        """Any worker tags a stop; a crew member only those of its own sectors."""
        try:
            machine_id, _ = parse_stop_id(stop_id)
        except InvalidStopId as exc:
            raise Refusal(422, str(exc), "web.error.bad_stop") from exc
        machine = next((m for m in self.config.machines if m.id == machine_id), None)
        if machine is None:
            raise Refusal(
                404, f"no machine {machine_id!r} in this plant", "web.error.no_stop", id=stop_id
            )
        if who.crew is not None:
            self.authorise(who, machine.sector, f"stop {stop_id}")

        try:
            with self.db_factory() as db:
                return await assign_reason(db, self.sink, self.config, stop_id, reason)
        except UnknownReason as exc:
            raise Refusal(422, str(exc), "web.error.bad_reason") from exc
        except StopNotFound as exc:
            raise Refusal(404, str(exc), "web.error.no_stop", id=stop_id) from exc
        except (QueryError, WriteError) as exc:
            raise Refusal(502, f"reason not saved: {exc}", "web.error.influx") from exc

    # -- rejects

    def machine(self, machine_id: str) -> Machine:
        machine = next((m for m in self.config.machines if m.id == machine_id), None)
        if machine is None:
            raise Refusal(
                404,
                f"no machine {machine_id!r} in this plant",
                "web.error.no_machine",
                machine=machine_id,
            )
        return machine

    def machines_for(self, who: Principal | None) -> list[Machine]:
        """The machines `who` may enter rejects for: all for a worker, its sectors' for a crew."""
        if who is None:
            return []
        if who.crew is None:
            return list(self.config.machines)
        return [m for m in self.config.machines if may_change_sector(who, m.sector)]

    @property
    def calendar(self) -> ShiftCalendar:
        return ShiftCalendar(self.config.calendar, self.config.timezone)

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.clock(), self.zone).date()

    def shift_names(self) -> list[str]:
        """Every shift name the calendar knows, in the order it gives them."""
        names: dict[str, None] = {}
        for shift in self.config.calendar.shifts:
            names[shift.name] = None
        for change in self.config.calendar.changes:
            for shift in change.shifts:
                names[shift.name] = None
        return list(names)

    async def enter_rejects(
        self, who: Principal, machine_id: str, day: dt.date, shift: str, count: int
    ) -> RejectsEntered:
        """Write `count` rejected parts over the planned minutes of `shift` on `day` (a local
        day) for a machine, and rebuild the hourly and daily sums. Again for the same shift:
        the new figure replaces the old. Any worker; a crew member for its own sectors."""
        if isinstance(count, bool) or not 0 <= count <= MAX_REJECTS:
            raise Refusal(
                422,
                f"the rejected parts must be a whole number from 0 to {MAX_REJECTS}, got {count}",
                "web.error.reject_count",
                limit=MAX_REJECTS,
            )
        machine = self.machine(machine_id)
        if who.crew is not None:
            self.authorise(who, machine.sector, f"machine {machine.id}")
        if day > self.today():
            raise Refusal(
                422,
                f"{day.isoformat()} is in the future; rejects are entered for a shift "
                "that has begun",
                "web.error.future_day",
                day=day.isoformat(),
            )
        if day < OLDEST_DAY:
            raise Refusal(
                422,
                f"{day.isoformat()} is before {OLDEST_DAY.isoformat()}, older than any data here",
                "web.error.old_day",
                day=day.isoformat(),
                oldest=OLDEST_DAY.isoformat(),
            )
        calendar = self.calendar
        span = shift_span(calendar, day, shift)
        if span is None:
            known = ", ".join(shifts_of_day(calendar, day)) or "none"
            raise Refusal(
                422,
                f"no shift {shift!r} on {day.isoformat()}; shifts that day: {known}",
                "web.error.no_shift",
                shift=shift,
                day=day.isoformat(),
                known=known,
            )
        now = self.now_ms()

        def make_plan() -> RejectsPlan:
            with self.db_factory() as db:
                return plan_rejects(db, self.config, calendar, machine, span, count, now)

        try:
            plan = await asyncio.to_thread(make_plan)
        except TooManyRejects as exc:
            raise Refusal(
                422,
                str(exc),
                "web.error.too_many_rejects",
                machine=machine.id,
                produced=exc.produced,
                count=count,
            ) from exc
        except QueryError as exc:
            raise Refusal(502, f"rejects not saved: {exc}", "web.error.influx") from exc
        if not plan.minutes:
            raise Refusal(
                422,
                f"shift {shift} of {day.isoformat()} has not begun yet",
                "web.error.shift_not_begun",
                shift=shift,
                day=day.isoformat(),
            )

        def sums() -> list[Point]:
            with self.db_factory() as db:
                return sums_after(db, self.config, plan, machine.id)

        try:
            await self.sink.write(plan.minutes)
            await self.sink.write(await asyncio.to_thread(sums))
        except (QueryError, WriteError) as exc:
            raise Refusal(502, f"rejects not saved: {exc}", "web.error.influx") from exc
        return RejectsEntered(
            machine.id,
            machine.sector,
            day,
            span.shift,
            count,
            span.start_ms,
            span.end_ms,
            len(plan.minutes),
        )
