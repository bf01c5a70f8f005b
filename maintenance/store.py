"""The ticket store: tickets, their history, notes and readings, and the notification outbox, on
SQLite (the embedded default) or PostgreSQL, through one SQLAlchemy Core code path.

The schema is created and upgraded by the alembic migrations in `maintenance/migrations/`, run
when a store opens. Every method is synchronous and takes the time (`now_ms`, UTC milliseconds)
from its caller, so a service calls it from a thread and a test from a constructed timeline.
"""

from __future__ import annotations

import builtins
import math
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from maintenance.model import STATUSES, Finding, Notice, Reading, Status, Ticket, TicketEvent

__all__ = [
    "METADATA",
    "RULES_ACTOR",
    "Change",
    "HistoryEntry",
    "InvalidEntry",
    "Note",
    "NoticeNotFound",
    "NoticeState",
    "StoreError",
    "TicketError",
    "TicketNotFound",
    "TicketStore",
    "TransitionRefused",
]

RULES_ACTOR: Final = "aguante"  # who acts when a rule opens, updates, reopens or clears a ticket
# Readings kept per ticket, the newest: a rule firing for weeks must not grow its ticket forever.
MAX_READINGS: Final = 500
MAX_ERROR_CHARS: Final = 2000
SQLITE_BUSY_TIMEOUT_S: Final = 30.0  # another process writing: wait this long for the lock
DEFAULT_LEASE_MS: Final = 60_000
_APPLY_ATTEMPTS: Final = 5
_MIGRATIONS: Final = Path(__file__).with_name("migrations")
# Serialises migrations of one PostgreSQL database across processes (any constant will do).
_PG_MIGRATION_LOCK: Final = 0x616775616E7465  # "aguante"
_READ_ONLY: Final = "aguante_read_only"

NoticeStatus = Literal["pending", "sent", "failed"]
ChangeValue = str | int | None


# -- errors --------------------------------------------------------------------------------------


class StoreError(Exception):
    """The store cannot be used: a bad URL, an unreachable server, a schema newer than this
    program, or a store already closed. Not the caller's request's fault."""


class TicketError(Exception):
    """A request the store refuses: an unknown id, a transition the lifecycle forbids, bad input."""


class TicketNotFound(TicketError, LookupError):
    def __init__(self, ticket_id: int) -> None:
        super().__init__(f"ticket {ticket_id} does not exist")
        self.ticket_id = ticket_id


class NoticeNotFound(TicketError, LookupError):
    def __init__(self, outbox_id: int) -> None:
        super().__init__(f"notice {outbox_id} does not exist")
        self.outbox_id = outbox_id


_STATUS_WORDS: Final[Mapping[str, str]] = {
    "open": "open",
    "acknowledged": "acknowledged",
    "in_progress": "in progress",
    "resolved": "resolved",
}


class TransitionRefused(TicketError):
    """The ticket's status does not allow the action; `action` is the verb ("acknowledge",
    "start", "resolve", "assign") and `status` the ticket's status, for a translated message."""

    def __init__(self, message: str, *, ticket_id: int, status: Status, action: str) -> None:
        super().__init__(message)
        self.ticket_id, self.status, self.action = ticket_id, status, action


def _refused(ticket_id: int, status: Status, action: str, allowed: str) -> TransitionRefused:
    if _ACTION_TARGETS.get(action) == status:
        message = f"ticket {ticket_id} is already {_STATUS_WORDS[status]}"
    else:
        message = (
            f"ticket {ticket_id} is {_STATUS_WORDS[status]}; "
            f"only {allowed} ticket can be {_PARTICIPLES[action]}"
        )
    return TransitionRefused(message, ticket_id=ticket_id, status=status, action=action)


_ACTION_TARGETS: Final[Mapping[str, Status]] = {
    "acknowledge": "acknowledged",
    "start": "in_progress",
    "resolve": "resolved",
}
_PARTICIPLES: Final[Mapping[str, str]] = {
    "acknowledge": "acknowledged",
    "start": "started",
    "resolve": "resolved",
    "assign": "assigned",
}
_ActionEvent = Literal["acknowledged", "started", "resolved"]
_EVENTS: Final[Mapping[str, _ActionEvent]] = {
    "acknowledge": "acknowledged",
    "start": "started",
    "resolve": "resolved",
}


class InvalidEntry(TicketError, ValueError):
    """Input the store cannot keep: an empty note, negative minutes, an unknown status."""


# -- what the queries return ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One field of a ticket changed by an event, as text or milliseconds (None: not set)."""

    field: str
    old: ChangeValue
    new: ChangeValue


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One event in a ticket's life: who, when, what (the event kind), from→to, and a note."""

    id: int
    ticket_id: int
    at_ms: int
    actor: str
    event: str  # a TicketEvent kind
    changes: tuple[Change, ...]
    note: str | None


@dataclass(frozen=True, slots=True)
class Note:
    """A note by a person, with the parts used and the minutes spent, when given."""

    id: int
    ticket_id: int
    at_ms: int
    actor: str
    text: str
    parts: str | None
    minutes: int | None


@dataclass(frozen=True, slots=True)
class NoticeState:
    """A queued notice as the ticket page shows it: sent, still being tried, or given up."""

    id: int
    ticket_id: int
    target: str
    subject: str
    status: NoticeStatus
    attempts: int
    created_ms: int
    next_attempt_ms: int | None
    last_attempt_ms: int | None
    sent_ms: int | None
    last_error: str | None


# -- tables (the migrations create them; tests check both agree) ----------------------------------

METADATA: Final = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_tickets: Final = Table(
    "tickets",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("machine", String, nullable=False),
    Column("sector", String, nullable=False),
    Column("rule", String, nullable=False),
    Column("severity", String, nullable=False),
    Column("status", String(16), nullable=False),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("crew", String),
    Column("assignee", String),
    Column("opened_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("resolved_ms", BigInteger),
    Column("condition_cleared_ms", BigInteger),
    CheckConstraint("status IN ('open', 'acknowledged', 'in_progress', 'resolved')", name="status"),
)
# The invariant "one open ticket per machine and rule", kept by the database itself so that two
# processes applying the same finding at once cannot both open one.
Index(
    "uq_tickets_open_machine_rule",
    _tickets.c.machine,
    _tickets.c.rule,
    unique=True,
    sqlite_where=text("status <> 'resolved'"),
    postgresql_where=text("status <> 'resolved'"),
)
Index(None, _tickets.c.machine, _tickets.c.rule, _tickets.c.resolved_ms)
Index(None, _tickets.c.opened_ms)

_history: Final = Table(
    "ticket_history",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String, nullable=False),
    Column("event", String(32), nullable=False),
    Column("changes", JSON, nullable=False),  # [[field, old, new], ...]
    Column("note", Text),
)
Index(None, _history.c.ticket_id, _history.c.at_ms)

_notes: Final = Table(
    "ticket_notes",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String, nullable=False),
    Column("text", Text, nullable=False),
    Column("parts", Text),  # parts used, as the crew writes them
    Column("minutes", Integer),  # time spent
    CheckConstraint("minutes IS NULL OR minutes > 0", name="minutes"),
)
Index(None, _notes.c.ticket_id, _notes.c.at_ms)

_readings: Final = Table(
    "ticket_readings",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("signal", String, nullable=False),
    Column("value", Double, nullable=False),
    UniqueConstraint("ticket_id", "signal", "time_ms"),
)

_outbox: Final = Table(
    "notice_outbox",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False),
    Column("target", String, nullable=False),
    Column("subject", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("next_attempt_ms", BigInteger),
    Column("last_attempt_ms", BigInteger),
    Column("sent_ms", BigInteger),
    Column("last_error", Text),
    CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
)
Index(None, _outbox.c.status, _outbox.c.next_attempt_ms)
Index(None, _outbox.c.ticket_id)


# -- the store -----------------------------------------------------------------------------------


class _Retry(Exception):
    """Another writer got there first (PostgreSQL): run the whole apply again."""


class TicketStore:
    """Tickets on `sqlite:///path` or `postgresql://user@host/db`; migrated when opened.

    Usable from several threads at once (one connection pool) and by several processes on one
    database (SQLite: WAL and a busy timeout; PostgreSQL: row locks and a unique index).
    `backend` is "sqlite" or "postgresql"; `where` the URL without its password, for messages.
    Infrastructure trouble raises `StoreError`; a refused request, a `TicketError`.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self._url, self.backend = _engine_url(url)
        self.where = self._url.render_as_string(hide_password=True)
        if self.backend == "sqlite":
            self._engine = create_engine(self._url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(self._engine, "connect", _sqlite_connect)
            event.listen(self._engine, "begin", _sqlite_begin)
        else:
            self._engine = create_engine(self._url, pool_pre_ping=True)
        self._reader: Engine = self._engine.execution_options(**{_READ_ONLY: True})
        self._closed = False
        if migrate:
            try:
                self.migrate()
            except BaseException:
                self.close()
                raise

    # -- opening and closing

    def migrate(self) -> builtins.list[str]:
        """Bring the schema to the newest revision; the revisions applied, oldest first (none
        when it was up to date). Safe when several processes open a new store at once."""
        config = _alembic_config()
        script = ScriptDirectory.from_config(config)
        head = script.get_current_head()
        with self._write() as conn:
            if self.backend == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            before = MigrationContext.configure(conn).get_current_revision()
            if before is not None and before != head and not _known(script, before):
                raise StoreError(
                    f"ticket store {self.where}: its schema is at revision {before}, which this "
                    f"version of aguante does not know (newest here: {head}); "
                    "run the newer aguante that wrote it"
                )
            if before == head:
                return []
            config.attributes["connection"] = conn
            try:
                command.upgrade(config, "head")
            except CommandError as exc:
                raise StoreError(f"ticket store {self.where}: migration failed: {exc}") from exc
        applied = [r.revision for r in script.iterate_revisions(head, before)]
        return applied[::-1]

    def close(self) -> None:
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TicketStore({self.where!r})"

    # -- rules

    def apply(
        self,
        finding: Finding,
        *,
        sector: str,
        severity: str,
        crew: str | None,
        title: str,
        description: str,
        reopen_window_ms: int,
        now_ms: int,
    ) -> TicketEvent | None:
        """Turn a rule's finding into a ticket change, or None when nothing visible changed.

        "fire": update the open ticket of (machine, rule) — event "updated" only when its title,
        description, severity, crew or sector changed or its condition had cleared; else reopen
        the ticket resolved less than `reopen_window_ms` ago ("reopened"); else open one
        ("opened"). "clear": mark the open ticket condition_cleared, once. "hold": nothing.
        The finding's readings are kept with the ticket (the newest MAX_READINGS).
        """
        if reopen_window_ms < 0:
            raise InvalidEntry(f"reopen_window_ms must be 0 or more, got {reopen_window_ms}")
        if finding.verdict == "hold":
            return None
        shown = _Shown(sector, severity, crew, title, description)
        for attempt in range(_APPLY_ATTEMPTS):
            try:
                with self._write() as conn:
                    if finding.verdict == "clear":
                        return _clear(conn, finding, now_ms)
                    return _fire(conn, finding, shown, reopen_window_ms, now_ms)
            except (IntegrityError, _Retry):
                # On PostgreSQL a concurrent apply opened or reopened the ticket first (the
                # unique index says so); the next attempt sees it. SQLite writers queue for one
                # lock, so there it is a real error.
                if self.backend != "postgresql" or attempt == _APPLY_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    # -- people

    def acknowledge(self, ticket_id: int, actor: str, now_ms: int) -> TicketEvent:
        """open → acknowledged."""
        return self._move(ticket_id, actor, now_ms, "acknowledge", ("open",), "an open")

    def start(self, ticket_id: int, actor: str, now_ms: int) -> TicketEvent:
        """open or acknowledged → in_progress."""
        return self._move(
            ticket_id, actor, now_ms, "start", ("open", "acknowledged"), "an open or acknowledged"
        )

    def resolve(
        self, ticket_id: int, actor: str, now_ms: int, note: str | None = None
    ) -> TicketEvent:
        """Any status but resolved → resolved; the note, if any, is also kept as a note."""
        return self._move(
            ticket_id,
            actor,
            now_ms,
            "resolve",
            ("open", "acknowledged", "in_progress"),
            "an unresolved",
            note=note,
        )

    def assign(self, ticket_id: int, actor: str, assignee: str | None, now_ms: int) -> TicketEvent:
        """Give an unresolved ticket to a person (None: to nobody); event "updated"."""
        actor = _person(actor, "actor")
        if assignee is not None:
            assignee = _person(assignee, "assignee")
        with self._write() as conn:
            row = _locked(conn, ticket_id)
            if row.status == "resolved":
                raise _refused(ticket_id, row.status, "assign", "an unresolved")
            if row.assignee == assignee:
                already = f"assigned to {assignee}" if assignee else "assigned to nobody"
                raise TransitionRefused(
                    f"ticket {ticket_id} is already {already}",
                    ticket_id=ticket_id,
                    status=row.status,
                    action="assign",
                )
            changes = [Change("assignee", row.assignee, assignee)]
            _set(conn, ticket_id, assignee=assignee, updated_ms=now_ms)
            _record(conn, ticket_id, now_ms, actor, "updated", changes)
            return TicketEvent(_load(conn, ticket_id), "updated", actor, now_ms)

    def add_note(
        self,
        ticket_id: int,
        actor: str,
        text: str,
        now_ms: int,
        parts: str | None = None,
        minutes: int | None = None,
    ) -> TicketEvent:
        """A note, the parts used and the minutes spent (any of them); also on a resolved
        ticket, since the work is often written down after it is done."""
        actor = _person(actor, "actor")
        text = text.strip()
        if parts is not None:
            parts = parts.strip() or None
        if minutes is not None and (
            isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0
        ):
            raise InvalidEntry(f"minutes spent must be a whole number above 0, got {minutes!r}")
        if not text and parts is None and minutes is None:
            raise InvalidEntry("a note needs text, parts used or minutes spent")
        with self._write() as conn:
            _locked(conn, ticket_id)
            _add_note(conn, ticket_id, now_ms, actor, text, parts, minutes)
            changes = [Change(k, None, v) for k, v in (("parts", parts), ("minutes", minutes))]
            _record(conn, ticket_id, now_ms, actor, "noted", changes, text or None)
            _set(conn, ticket_id, updated_ms=now_ms)
            return TicketEvent(_load(conn, ticket_id), "noted", actor, now_ms, text or None)

    def _move(
        self,
        ticket_id: int,
        actor: str,
        now_ms: int,
        action: Literal["acknowledge", "start", "resolve"],
        allowed: tuple[Status, ...],
        allowed_words: str,
        note: str | None = None,
    ) -> TicketEvent:
        actor = _person(actor, "actor")
        note = (note or "").strip() or None
        to, kind = _ACTION_TARGETS[action], _EVENTS[action]
        with self._write() as conn:
            row = _locked(conn, ticket_id)
            if row.status not in allowed:
                raise _refused(ticket_id, row.status, action, allowed_words)
            changes = [Change("status", row.status, to)]
            values: dict[str, Any] = {"status": to, "updated_ms": now_ms}
            if to == "resolved":
                values["resolved_ms"] = now_ms
                changes.append(Change("resolved_ms", None, now_ms))
            _set(conn, ticket_id, **values)
            _record(conn, ticket_id, now_ms, actor, kind, changes, note)
            if note is not None:
                _add_note(conn, ticket_id, now_ms, actor, note, None, None)
            return TicketEvent(_load(conn, ticket_id), kind, actor, now_ms, note)

    # -- queries

    def get(self, ticket_id: int) -> Ticket:
        with self._read() as conn:
            return _load(conn, ticket_id)

    def history(self, ticket_id: int) -> builtins.list[HistoryEntry]:
        """Every event of the ticket, oldest first."""
        with self._read() as conn:
            _exists(conn, ticket_id)
            rows = conn.execute(
                select(_history)
                .where(_history.c.ticket_id == ticket_id)
                .order_by(_history.c.at_ms, _history.c.id)
            ).all()
        return [
            HistoryEntry(
                r.id,
                r.ticket_id,
                r.at_ms,
                r.actor,
                r.event,
                tuple(Change(f, old, new) for f, old, new in r.changes),
                r.note,
            )
            for r in rows
        ]

    def notes(self, ticket_id: int) -> builtins.list[Note]:
        """The ticket's notes, oldest first."""
        with self._read() as conn:
            _exists(conn, ticket_id)
            rows = conn.execute(
                select(_notes)
                .where(_notes.c.ticket_id == ticket_id)
                .order_by(_notes.c.at_ms, _notes.c.id)
            ).all()
        return [Note(r.id, r.ticket_id, r.at_ms, r.actor, r.text, r.parts, r.minutes) for r in rows]

    def list(
        self,
        status: Status | Collection[Status] | None = None,
        sectors: Collection[str] | None = None,
        machine: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        readings: bool = False,
    ) -> builtins.list[Ticket]:
        """Tickets newest (last opened) first, filtered by status, sector and machine.

        Their readings are left out (`readings=()`) unless `readings=True`: a list page does not
        show them and a ticket may hold hundreds.
        """
        query = select(_tickets)
        if status is not None:
            wanted = [status] if isinstance(status, str) else builtins.list(status)
            for s in wanted:
                if s not in STATUSES:
                    raise InvalidEntry(f"unknown status {s!r}; one of {', '.join(STATUSES)}")
            query = query.where(_tickets.c.status.in_(wanted))
        if sectors is not None:
            query = query.where(_tickets.c.sector.in_(builtins.list(sectors)))
        if machine is not None:
            query = query.where(_tickets.c.machine == machine)
        if limit < 1 or offset < 0:
            raise InvalidEntry(
                f"limit must be 1 or more and offset 0 or more, got {limit}, {offset}"
            )
        query = query.order_by(_tickets.c.opened_ms.desc(), _tickets.c.id.desc())
        with self._read() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
            kept = _readings_of(conn, [r.id for r in rows]) if readings else {}
        return [_ticket(r, kept.get(r.id, ())) for r in rows]

    def open_for(self, machine: str, rule: str) -> Ticket | None:
        """The unresolved ticket of a machine and rule, if any."""
        with self._read() as conn:
            row = conn.execute(_open_query(machine, rule)).first()
            return None if row is None else _ticket(row, _readings_of(conn, [row.id])[row.id])

    def last_resolved(self, machine: str, rule: str) -> int | None:
        """When a ticket of this machine and rule was last resolved (ms), even if reopened
        since: for a meter rule, the last completed service its meter counts from."""
        query = (
            select(func.max(_history.c.at_ms))
            .join(_tickets, _tickets.c.id == _history.c.ticket_id)
            .where(
                _tickets.c.machine == machine,
                _tickets.c.rule == rule,
                _history.c.event == "resolved",
            )
        )
        with self._read() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else int(found)

    def mtbf_mttr(
        self,
        machine: str,
        start_ms: int,
        end_ms: int,
        *,
        rules: Collection[str] | None = None,
    ) -> tuple[float | None, float | None]:
        """Mean time between failures and mean time to repair of a machine, in seconds.

        A failure is a ticket opened or reopened; its repair ends when it is resolved.
        MTBF = window length / failures that began in [start_ms, end_ms) — calendar time, since
        the store does not know when the machine was planned to run; None with no failure.
        MTTR = mean of (resolved − opened or reopened) over repairs ended in the window, begun
        whenever; None with none. Pass `rules` (the failure rules, without the meter rules of
        planned service) to count only those.
        """
        if end_ms <= start_ms:
            raise InvalidEntry(f"the window must end after it starts; got {start_ms} to {end_ms}")
        query = (
            select(_history.c.ticket_id, _history.c.event, _history.c.at_ms)
            .join(_tickets, _tickets.c.id == _history.c.ticket_id)
            .where(
                _tickets.c.machine == machine,
                _history.c.event.in_(("opened", "reopened", "resolved")),
                _history.c.at_ms < end_ms,
            )
            .order_by(_history.c.ticket_id, _history.c.at_ms, _history.c.id)
        )
        if rules is not None:
            query = query.where(_tickets.c.rule.in_(builtins.list(rules)))
        with self._read() as conn:
            rows = conn.execute(query).all()
        failures = 0
        repairs: builtins.list[int] = []
        began: dict[int, int] = {}
        for ticket_id, kind, at_ms in rows:
            if kind == "resolved":
                started = began.pop(ticket_id, None)
                if started is not None and at_ms >= start_ms:
                    repairs.append(at_ms - started)
            else:
                began[ticket_id] = at_ms
                failures += at_ms >= start_ms
        mtbf = (end_ms - start_ms) / 1000 / failures if failures else None
        mttr = sum(repairs) / len(repairs) / 1000 if repairs else None
        return mtbf, mttr

    # -- the notification outbox

    def queue_notice(self, notice: Notice, now_ms: int) -> int:
        """Keep a notice to be sent (due at once); its outbox id."""
        with self._write() as conn:
            _exists(conn, notice.ticket_id)
            return int(
                conn.execute(
                    insert(_outbox)
                    .values(
                        ticket_id=notice.ticket_id,
                        target=notice.target,
                        subject=notice.subject,
                        text=notice.text,
                        payload=dict(notice.payload),
                        status="pending",
                        attempts=0,
                        created_ms=now_ms,
                        next_attempt_ms=now_ms,
                    )
                    .returning(_outbox.c.id)
                ).scalar_one()
            )

    def due_notices(
        self, now_ms: int, limit: int, *, lease_ms: int = DEFAULT_LEASE_MS
    ) -> builtins.list[tuple[int, Notice, int]]:
        """Notices to send now, oldest due first: (outbox id, notice, attempts made so far).

        Each is leased for `lease_ms`: not due again meanwhile (another worker will not send it
        twice), and due again after it should the sender die before `notice_sent` or
        `notice_failed`.
        """
        query = (
            select(_outbox)
            .where(_outbox.c.status == "pending", _outbox.c.next_attempt_ms <= now_ms)
            .order_by(_outbox.c.next_attempt_ms, _outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._write() as conn:
            rows = conn.execute(query).all()
            if rows and lease_ms > 0:
                conn.execute(
                    update(_outbox)
                    .where(_outbox.c.id.in_([r.id for r in rows]))
                    .values(next_attempt_ms=now_ms + lease_ms)
                )
        return [
            (r.id, Notice(r.target, r.ticket_id, r.subject, r.text, r.payload), r.attempts)
            for r in rows
        ]

    def notice_sent(self, outbox_id: int, now_ms: int) -> None:
        """The notice reached its target; a second report of it changes nothing."""
        with self._write() as conn:
            row = _locked_notice(conn, outbox_id)
            if row.status == "sent":
                return
            conn.execute(
                update(_outbox)
                .where(_outbox.c.id == outbox_id)
                .values(
                    status="sent",
                    attempts=row.attempts + 1,
                    last_attempt_ms=now_ms,
                    sent_ms=now_ms,
                    next_attempt_ms=None,
                )
            )

    def notice_failed(
        self, outbox_id: int, error: str, now_ms: int, retry_at_ms: int | None
    ) -> None:
        """The notice could not be sent: try again at `retry_at_ms`, or never (None: given up,
        status "failed", still shown on its ticket and open to `retry_notice`)."""
        with self._write() as conn:
            row = _locked_notice(conn, outbox_id)
            if row.status == "sent":  # a late report from a second sender: it did get there
                return
            conn.execute(
                update(_outbox)
                .where(_outbox.c.id == outbox_id)
                .values(
                    status="pending" if retry_at_ms is not None else "failed",
                    attempts=row.attempts + 1,
                    last_attempt_ms=now_ms,
                    next_attempt_ms=retry_at_ms,
                    last_error=error[:MAX_ERROR_CHARS],
                )
            )

    def retry_notice(self, outbox_id: int, now_ms: int) -> None:
        """Make a notice given up on (or still pending) due at once; a sent one stays sent."""
        with self._write() as conn:
            row = _locked_notice(conn, outbox_id)
            if row.status == "sent":
                raise TicketError(f"notice {outbox_id} was already sent")
            conn.execute(
                update(_outbox)
                .where(_outbox.c.id == outbox_id)
                .values(status="pending", next_attempt_ms=now_ms)
            )

    def notices(self, ticket_id: int) -> builtins.list[NoticeState]:
        """The ticket's notices, oldest first, with their status and last error."""
        with self._read() as conn:
            _exists(conn, ticket_id)
            rows = conn.execute(
                select(_outbox).where(_outbox.c.ticket_id == ticket_id).order_by(_outbox.c.id)
            ).all()
        return [
            NoticeState(
                r.id,
                r.ticket_id,
                r.target,
                r.subject,
                r.status,
                r.attempts,
                r.created_ms,
                r.next_attempt_ms,
                r.last_attempt_ms,
                r.sent_ms,
                r.last_error,
            )
            for r in rows
        ]

    # -- transactions

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that writes (SQLite: BEGIN IMMEDIATE, so writers queue for the lock
        instead of failing when a read has to become a write)."""
        if self._closed:
            raise StoreError(f"ticket store {self.where} is closed")
        try:
            with self._engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreError(f"ticket store {self.where}: {_reason(exc)}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"ticket store {self.where} is closed")
        try:
            with self._reader.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreError(f"ticket store {self.where}: {_reason(exc)}") from exc


# -- the work inside one transaction --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shown:
    """What a rule sets on its ticket and people see."""

    sector: str
    severity: str
    crew: str | None
    title: str
    description: str

    def changes(self, row: Row[Any]) -> builtins.list[Change]:
        return [
            Change(name, getattr(row, name), getattr(self, name))
            for name in ("title", "description", "severity", "crew", "sector")
            if getattr(row, name) != getattr(self, name)
        ]

    def values(self) -> dict[str, Any]:
        return {
            "sector": self.sector,
            "severity": self.severity,
            "crew": self.crew,
            "title": self.title,
            "description": self.description,
        }


def _fire(
    conn: Connection, finding: Finding, shown: _Shown, reopen_window_ms: int, now_ms: int
) -> TicketEvent | None:
    row = conn.execute(_open_query(finding.machine, finding.rule).with_for_update()).first()
    if row is not None:
        changes = shown.changes(row)
        if row.condition_cleared_ms is not None:
            changes.append(Change("condition_cleared_ms", row.condition_cleared_ms, None))
        added = _keep_readings(conn, row.id, finding.readings)
        if not changes:
            if added:
                _set(conn, row.id, updated_ms=now_ms)
            return None
        _set(conn, row.id, **shown.values(), condition_cleared_ms=None, updated_ms=now_ms)
        _record(conn, row.id, now_ms, RULES_ACTOR, "updated", changes)
        return TicketEvent(_load(conn, row.id), "updated", RULES_ACTOR, now_ms)

    last = conn.execute(
        select(_tickets)
        .where(
            _tickets.c.machine == finding.machine,
            _tickets.c.rule == finding.rule,
            _tickets.c.status == "resolved",
        )
        .order_by(_tickets.c.resolved_ms.desc(), _tickets.c.id.desc())
        .limit(1)
        .with_for_update()
    ).first()
    if last is not None and now_ms - last.resolved_ms < reopen_window_ms:
        changes = [
            Change("status", "resolved", "open"),
            Change("resolved_ms", last.resolved_ms, None),
            *shown.changes(last),
        ]
        if last.condition_cleared_ms is not None:
            changes.append(Change("condition_cleared_ms", last.condition_cleared_ms, None))
        reopened = conn.execute(
            update(_tickets)
            .where(_tickets.c.id == last.id, _tickets.c.status == "resolved")
            .values(
                **shown.values(),
                status="open",
                resolved_ms=None,
                condition_cleared_ms=None,
                updated_ms=now_ms,
            )
        )
        if reopened.rowcount != 1:
            raise _Retry
        _keep_readings(conn, last.id, finding.readings)
        _record(conn, last.id, now_ms, RULES_ACTOR, "reopened", changes)
        return TicketEvent(_load(conn, last.id), "reopened", RULES_ACTOR, now_ms)

    ticket_id = int(
        conn.execute(
            insert(_tickets)
            .values(
                machine=finding.machine,
                rule=finding.rule,
                status="open",
                opened_ms=now_ms,
                updated_ms=now_ms,
                **shown.values(),
            )
            .returning(_tickets.c.id)
        ).scalar_one()
    )
    _keep_readings(conn, ticket_id, finding.readings)
    _record(conn, ticket_id, now_ms, RULES_ACTOR, "opened", [Change("status", None, "open")])
    return TicketEvent(_load(conn, ticket_id), "opened", RULES_ACTOR, now_ms)


def _clear(conn: Connection, finding: Finding, now_ms: int) -> TicketEvent | None:
    row = conn.execute(_open_query(finding.machine, finding.rule).with_for_update()).first()
    if row is None or row.condition_cleared_ms is not None:
        return None
    _set(conn, row.id, condition_cleared_ms=now_ms, updated_ms=now_ms)
    changes = [Change("condition_cleared_ms", None, now_ms)]
    _record(conn, row.id, now_ms, RULES_ACTOR, "condition_cleared", changes)
    return TicketEvent(_load(conn, row.id), "condition_cleared", RULES_ACTOR, now_ms)


def _open_query(machine: str, rule: str) -> Select[*tuple[Any, ...]]:
    return select(_tickets).where(
        _tickets.c.machine == machine,
        _tickets.c.rule == rule,
        _tickets.c.status != "resolved",
    )


def _keep_readings(conn: Connection, ticket_id: int, readings: Sequence[Reading]) -> bool:
    """Add the readings the ticket lacks and drop the oldest past MAX_READINGS; any added?"""
    if not readings:
        return False
    rows = conn.execute(
        select(_readings.c.signal, _readings.c.time_ms).where(
            _readings.c.ticket_id == ticket_id,
            _readings.c.time_ms >= min(r.time_ms for r in readings),
        )
    )
    have = {(signal, time_ms) for signal, time_ms in rows}
    new: dict[tuple[str, int], float] = {}
    for reading in readings:
        key = (reading.signal, reading.time_ms)
        if key not in have and math.isfinite(reading.value):  # SQLite would store NaN as NULL
            new[key] = reading.value
    if not new:
        return False
    conn.execute(
        insert(_readings),
        [
            {"ticket_id": ticket_id, "signal": s, "time_ms": t, "value": float(v)}
            for (s, t), v in new.items()
        ],
    )
    kept = conn.execute(
        select(func.count()).select_from(_readings).where(_readings.c.ticket_id == ticket_id)
    ).scalar_one()
    if kept > MAX_READINGS:
        oldest = (
            select(_readings.c.id)
            .where(_readings.c.ticket_id == ticket_id)
            .order_by(_readings.c.time_ms, _readings.c.id)
            .limit(kept - MAX_READINGS)
        )
        conn.execute(delete(_readings).where(_readings.c.id.in_(oldest.scalar_subquery())))
    return True


def _readings_of(conn: Connection, ticket_ids: Sequence[int]) -> dict[int, tuple[Reading, ...]]:
    found: dict[int, builtins.list[Reading]] = {i: [] for i in ticket_ids}
    if ticket_ids:
        rows = conn.execute(
            select(_readings)
            .where(_readings.c.ticket_id.in_(ticket_ids))
            .order_by(_readings.c.time_ms, _readings.c.signal)
        )
        for r in rows:
            found[r.ticket_id].append(Reading(r.time_ms, r.signal, r.value))
    return {i: tuple(rs) for i, rs in found.items()}


def _ticket(row: Row[Any], readings: tuple[Reading, ...]) -> Ticket:
    return Ticket(
        id=row.id,
        machine=row.machine,
        sector=row.sector,
        rule=row.rule,
        severity=row.severity,
        status=row.status,
        title=row.title,
        description=row.description,
        crew=row.crew,
        opened_ms=row.opened_ms,
        updated_ms=row.updated_ms,
        resolved_ms=row.resolved_ms,
        condition_cleared_ms=row.condition_cleared_ms,
        assignee=row.assignee,
        readings=readings,
    )


def _load(conn: Connection, ticket_id: int) -> Ticket:
    row = conn.execute(select(_tickets).where(_tickets.c.id == ticket_id)).first()
    if row is None:
        raise TicketNotFound(ticket_id)
    return _ticket(row, _readings_of(conn, [ticket_id])[ticket_id])


def _locked(conn: Connection, ticket_id: int) -> Row[Any]:
    row = conn.execute(select(_tickets).where(_tickets.c.id == ticket_id).with_for_update()).first()
    if row is None:
        raise TicketNotFound(ticket_id)
    return row


def _exists(conn: Connection, ticket_id: int) -> None:
    if conn.execute(select(_tickets.c.id).where(_tickets.c.id == ticket_id)).first() is None:
        raise TicketNotFound(ticket_id)


def _locked_notice(conn: Connection, outbox_id: int) -> Row[Any]:
    row = conn.execute(select(_outbox).where(_outbox.c.id == outbox_id).with_for_update()).first()
    if row is None:
        raise NoticeNotFound(outbox_id)
    return row


def _set(conn: Connection, ticket_id: int, **values: Any) -> None:
    conn.execute(update(_tickets).where(_tickets.c.id == ticket_id).values(**values))


def _record(
    conn: Connection,
    ticket_id: int,
    at_ms: int,
    actor: str,
    kind: str,
    changes: Sequence[Change],
    note: str | None = None,
) -> None:
    conn.execute(
        insert(_history).values(
            ticket_id=ticket_id,
            at_ms=at_ms,
            actor=actor,
            event=kind,
            changes=[
                [c.field, c.old, c.new] for c in changes if c.new is not None or c.old is not None
            ],
            note=note,
        )
    )


def _add_note(
    conn: Connection,
    ticket_id: int,
    at_ms: int,
    actor: str,
    text: str,
    parts: str | None,
    minutes: int | None,
) -> None:
    conn.execute(
        insert(_notes).values(
            ticket_id=ticket_id,
            at_ms=at_ms,
            actor=actor,
            text=text,
            parts=parts,
            minutes=minutes,
        )
    )


def _person(name: str, what: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidEntry(f"{what} must name a person")
    return name


# -- opening a database ---------------------------------------------------------------------------


def _engine_url(url: str) -> tuple[URL, Literal["sqlite", "postgresql"]]:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"ticket store URL {url!r} is not a URL: use sqlite:///path or "
            "postgresql://user@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
            raise StoreError(
                f"ticket store {url!r}: give SQLite a file (sqlite:///path/tickets.db); "
                "an in-memory database is lost on exit and not shared between connections"
            )
        return parsed, "sqlite"
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg"), "postgresql"
    shown = parsed.render_as_string(hide_password=True)
    raise StoreError(
        f"ticket store {shown!r}: unsupported database {backend!r}; "
        "use sqlite:///path or postgresql://user@host/db"
    )


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (below); pysqlite's own would come too late for writers.
    dbapi_connection.isolation_level = None
    _wal(dbapi_connection)
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _wal(connection: sqlite3.Connection) -> None:
    """Put the file in WAL mode (readers never block the writer; it stays so). Turning it on
    needs the file to itself and SQLite does not wait for that, so two processes creating one
    store at once must try again here."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if connection.execute("PRAGMA journal_mode").fetchone() != ("wal",):
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: Connection) -> None:
    read_only = conn.get_execution_options().get(_READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("path_separator", "os")
    return config


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def _reason(exc: OperationalError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
