"""What the web app's pages and API share (`Web`): every change goes through it. It checks who
may make the change, makes it in the store (in a thread; the store is synchronous) and hands the
event to the publisher, so it reaches InfluxDB and the crews like a rule's own events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol
from zoneinfo import ZoneInfo

from collector.config import Config
from collector.influxql import InfluxQL, QueryError
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
from maintenance.model import Ticket, TicketEvent
from maintenance.store import InvalidEntry, TicketNotFound, TicketStore, TransitionRefused
from maintenance.web.auth import (
    LoginLimiter,
    Principal,
    Sessions,
    Tokens,
    may_change_sector,
)

__all__ = ["Action", "Publisher", "Refusal", "Web"]

Action = Literal["acknowledge", "start", "resolve"]
_HERE: Final = Path(__file__).parent
MAX_STOP_HOURS: Final = 24 * 14


class Publisher(Protocol):
    """What the app needs of `maintenance.service.TicketPublisher`."""

    async def publish(self, events: list[TicketEvent], now_ms: int) -> None: ...


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
        action: Action | Literal["note"],
        *,
        note: str | None = None,
        parts: str | None = None,
        minutes: int | None = None,
    ) -> TicketEvent:
        ticket = await self.ticket(ticket_id)
        self.authorise(who, ticket.sector, f"ticket {ticket_id}")
        now = self.now_ms()
        try:
            if action == "acknowledge":
                event = await asyncio.to_thread(self.store.acknowledge, ticket_id, who.name, now)
            elif action == "start":
                event = await asyncio.to_thread(self.store.start, ticket_id, who.name, now)
            elif action == "resolve":
                event = await asyncio.to_thread(self.store.resolve, ticket_id, who.name, now, note)
            else:
                event = await asyncio.to_thread(
                    self.store.add_note, ticket_id, who.name, note or "", now, parts, minutes
                )
        except (TicketNotFound, TransitionRefused, InvalidEntry) as exc:
            raise _store_refusal(exc) from exc
        await self.publisher.publish([event], now)
        return event

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
