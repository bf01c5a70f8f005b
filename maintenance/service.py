"""The maintenance service: every `interval` seconds, evaluate the rules over InfluxDB, turn the
findings into tickets, and tell the crews (docs/maintenance.md).

It reads only what is stored and the config, never a running collector, so either can restart
or several collectors can feed one plant. Ticket events go to InfluxDB (`ticket`, for Grafana
annotations) and, through the store's outbox, to each crew's notification targets; a failed
write or notice is kept and tried again, never dropped. Each cycle also writes what the
dashboards cannot read from the store: every finding with its open ticket (`rule_status`) and
every machine's MTBF and MTTR (`reliability`), built by maintenance/status.py.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from collector.config import Config, Crew, Language, Machine, Rule
from collector.i18n import translate
from collector.influxql import InfluxQL
from collector.schema import Point
from collector.sinks import RejectedWriteError, RetryableWriteError, Sink, WriteError
from maintenance.events import ticket_point
from maintenance.model import Finding, Notice, Status, Ticket, TicketEvent
from maintenance.notify import Notifier, deliver
from maintenance.rules import evaluate
from maintenance.status import (
    RELIABILITY_DAYS,
    failure_rules,
    machines_with_failures,
    opened_at,
    reliability_figures,
    reliability_point,
    rule_status_points,
)
from maintenance.store import HistoryEntry

__all__ = ["CycleReport", "MaintenanceService", "TicketPublisher", "crews_for", "render"]

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "aguante"
NOTICES_PER_CYCLE = 200
UNRESOLVED: tuple[Status, ...] = ("open", "acknowledged", "in_progress")
_PAGE = 1000  # unresolved tickets read per query; at most one per machine and rule


class Store(Protocol):
    """What the service needs of the ticket store (maintenance/store.py)."""

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
    ) -> TicketEvent | None: ...

    def last_resolved(self, machine: str, rule: str) -> int | None: ...

    def queue_notice(self, notice: Notice, now_ms: int) -> Any: ...

    def due_notices(self, now_ms: int, limit: int) -> builtins.list[tuple[int, Notice, int]]: ...

    def notice_sent(self, outbox_id: int, now_ms: int) -> Any: ...

    def notice_failed(
        self, outbox_id: int, error: str, now_ms: int, retry_at_ms: int | None
    ) -> Any: ...

    def list(
        self, status: Collection[Status] | None = None, *, limit: int, offset: int
    ) -> Sequence[Ticket]: ...

    def history(self, ticket_id: int) -> Sequence[HistoryEntry]: ...

    def mtbf_mttr(
        self, machine: str, start_ms: int, end_ms: int, *, rules: Collection[str] | None = None
    ) -> tuple[float | None, float | None]: ...


@dataclass
class CycleReport:
    """What one evaluation did, for the log and the service's own health."""

    findings: int = 0
    events: int = 0
    notices_sent: int = 0
    notices_failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def crews_for(config: Config, rule: Rule, machine: Machine) -> list[Crew]:
    """The crews a rule's tickets on a machine go to: the rule's, else the sector's."""
    crews = config.maintenance.crews
    if rule.crew is not None:
        return [c for c in crews if c.id == rule.crew]
    return [c for c in crews if not c.sectors or machine.sector in c.sectors]


def render(
    templates: Mapping[Language, str],
    default_key: str,
    language: Language,
    values: Mapping[str, Any],
) -> str:
    """A rule's title or description in a language: its own template in that language, else in
    another one it has, else the default text of its kind; unknown placeholders stay visible."""
    text = templates.get(language) or next(iter(templates.values()), None)
    if text is None:
        text = translate(language, default_key)
    comma = language in ("es", "pt-BR")
    shown = {
        name: (f"{value:.10g}".replace(".", ",") if comma else f"{value:.10g}")
        if isinstance(value, float)
        else value
        for name, value in values.items()
    }
    try:
        return text.format_map(_Visible(shown))
    except (ValueError, IndexError):
        return text  # a template with a stray brace is shown as written


class _Visible(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class TicketPublisher:
    """Turns ticket events — from rules or from people — into `ticket` points and notices, and
    writes the service's status points (`hold_status`) with them."""

    def __init__(
        self,
        config: Config,
        store: Store,
        sink: Sink,
        *,
        base_url: str,
    ) -> None:
        self.config = config
        self.store = store
        self.sink = sink
        self.base_url = base_url.rstrip("/")
        self._unwritten: list[Point] = []
        self._status: list[Point] = []

    def hold_status(self, points: Sequence[Point]) -> None:
        """Keep a cycle's `rule_status` and `reliability` points for the next flush, in place of
        any older ones still unwritten: they are a snapshot of the plant at one moment, and once
        a newer one exists an older one is worthless (a dashboard shows the last). So however
        long InfluxDB is away, one cycle's worth is held, not one per cycle."""
        self._status = list(points)

    async def publish(self, events: list[TicketEvent], now_ms: int) -> None:
        for event in events:
            self._unwritten.append(ticket_point(event, self.config.factory))
            for notice in self.notices(event):
                await asyncio.to_thread(self.store.queue_notice, notice, now_ms)
        await self.flush()

    async def flush(self) -> None:
        """Write the points held: every `ticket` point (each is an event Grafana annotates),
        kept for the next try when InfluxDB is away; then the newest status snapshot, likewise
        (apart, so that a status point InfluxDB refuses never holds up the ticket events)."""
        # Taken out before the write, so what a concurrent publish adds meanwhile is not lost.
        events, self._unwritten = self._unwritten, []
        if events:
            try:
                await self.sink.write(events)
            except WriteError as exc:
                log.warning("ticket events not written to InfluxDB yet (%s); will retry", exc)
                self._unwritten = events + self._unwritten
                if isinstance(exc, RetryableWriteError):
                    return  # InfluxDB is away: one timeout per flush, not two
        status, self._status = self._status, []
        if status:
            try:
                await self.sink.write(status)
            except RejectedWriteError as exc:  # the rest was written; these never will be
                log.warning("rule status points refused by InfluxDB: %s", exc)
            except WriteError as exc:
                log.warning("rule status not written to InfluxDB yet (%s); will retry", exc)
                if not self._status:  # unless a newer snapshot came meanwhile
                    self._status = status

    def notices(self, event: TicketEvent) -> list[Notice]:
        ticket = event.ticket
        machines = {m.id: m for m in self.config.machines}
        rules = {r.id: r for r in self.config.maintenance.rules}
        machine, rule = machines.get(ticket.machine), rules.get(ticket.rule)
        if machine is None or rule is None:
            return []
        found = []
        for crew in crews_for(self.config, rule, machine):
            language = crew.language or self.config.language
            for target in crew.notify:
                found.append(self._notice(event, target, language))
        return found

    def _notice(self, event: TicketEvent, target: str, language: Language) -> Notice:
        ticket = event.ticket
        url = f"{self.base_url}/tickets/{ticket.id}"
        severity = translate(language, f"maintenance.severity.{ticket.severity}")
        happened = translate(
            language, f"maintenance.event.{event.kind}", id=ticket.id, actor=event.actor
        )
        lines = [
            happened,
            translate(
                language, "maintenance.notice.machine", machine=ticket.machine, sector=ticket.sector
            ),
        ]
        if ticket.description:
            lines.append(ticket.description)
        if event.note:
            lines.append(event.note)
        lines.append(translate(language, "maintenance.notice.see", url=url))
        payload: dict[str, object] = {
            "factory": self.config.factory,
            "ticket": ticket.id,
            "event": event.kind,
            "actor": event.actor,
            "at_ms": event.at_ms,
            "machine": ticket.machine,
            "sector": ticket.sector,
            "rule": ticket.rule,
            "severity": ticket.severity,
            "status": ticket.status,
            "title": ticket.title,
            "url": url,
        }
        return Notice(target, ticket.id, f"[{severity}] {ticket.title}", "\n".join(lines), payload)


class MaintenanceService:
    """Evaluates the rules on a schedule and keeps tickets and crews up to date."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        db: InfluxQL,
        publisher: TicketPublisher,
        notifiers: Mapping[str, Notifier],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.db = db
        self.publisher = publisher
        self.notifiers = notifiers
        self._clock = clock
        self.last: CycleReport | None = None
        # When each unresolved ticket was opened or last reopened: from this service's own
        # events, else read once from the ticket's history (after a start).
        self._opened: dict[int, int] = {}

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.config.maintenance.interval
        while not stop.is_set():
            report = await self.cycle()
            if report.errors:
                log.warning("maintenance cycle: %s", "; ".join(report.errors))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, interval - report.seconds))

    async def cycle(self) -> CycleReport:
        """One evaluation: rules → tickets → events → notices; never raises for the data's or
        a receiver's trouble (it is in the report and the log)."""
        started = time.monotonic()
        report = CycleReport()
        now = self._now_ms()
        try:
            findings = await asyncio.to_thread(
                evaluate, self.db, self.config, now, last_service=self.store.last_resolved
            )
        except Exception as exc:  # InfluxDB away, a bad answer: try again next cycle
            report.errors.append(f"rules not evaluated: {exc}")
            findings = []
        report.findings = len(findings)
        events = []
        for finding in findings:
            event = await asyncio.to_thread(self._apply, finding, now)
            if event is not None:
                events.append(event)
        report.events = len(events)
        try:
            status = await asyncio.to_thread(self._status_points, findings, events, now)
        except Exception as exc:  # the store away: the tickets say so too; try next cycle
            report.errors.append(f"rule status not read: {exc}")
        else:
            self.publisher.hold_status(status)
        await self.publisher.publish(events, now)  # and writes the held points
        due = await asyncio.to_thread(self.store.due_notices, now, NOTICES_PER_CYCLE)
        sent: list[int] = []
        failed: list[tuple[int, str, int | None]] = []
        await deliver(
            self.notifiers,
            due,
            on_sent=sent.append,
            on_failed=lambda outbox, error, retry: failed.append((outbox, error, retry)),
            now_ms=now,
        )
        for outbox in sent:
            await asyncio.to_thread(self.store.notice_sent, outbox, now)
        for outbox, error, retry in failed:
            await asyncio.to_thread(self.store.notice_failed, outbox, error, now, retry)
        report.notices_sent, report.notices_failed = len(sent), len(failed)
        report.seconds = time.monotonic() - started
        self.last = report
        return report

    def _status_points(
        self, findings: Sequence[Finding], events: Sequence[TicketEvent], now: int
    ) -> list[Point]:
        """The cycle's `rule_status` and `reliability` points. Reads the unresolved tickets at
        once, the history of a ticket not seen before, and each machine's MTBF and MTTR."""
        unresolved: list[Ticket] = []
        while True:
            page = self.store.list(UNRESOLVED, limit=_PAGE, offset=len(unresolved))
            unresolved += page
            if len(page) < _PAGE:
                break
        for event in events:
            if event.kind in ("opened", "reopened"):
                self._opened[event.ticket.id] = event.at_ms
        current = {t.id for t in unresolved}
        self._opened = {i: at for i, at in self._opened.items() if i in current}
        tickets = {(t.machine, t.rule): t for t in unresolved}
        for finding in findings:
            ticket = tickets.get((finding.machine, finding.rule))
            if ticket is not None and ticket.id not in self._opened:
                found = opened_at(self.store.history(ticket.id))
                self._opened[ticket.id] = ticket.opened_ms if found is None else found
        points = rule_status_points(self.config, findings, tickets, self._opened, now)
        start = now - RELIABILITY_DAYS * 86_400_000
        rules = failure_rules(self.config)
        open_tickets = Counter(t.machine for t in unresolved)
        for machine in machines_with_failures(self.config):
            mtbf_s, mttr_s = self.store.mtbf_mttr(machine.id, start, now, rules=rules)
            figures = reliability_figures(mtbf_s, mttr_s, start, now)
            points.append(
                reliability_point(
                    self.config.factory, machine, figures, open_tickets[machine.id], now
                )
            )
        return points

    def _apply(self, finding: Finding, now: int) -> TicketEvent | None:
        machines = {m.id: m for m in self.config.machines}
        rules = {r.id: r for r in self.config.maintenance.rules}
        machine, rule = machines[finding.machine], rules[finding.rule]
        crews = crews_for(self.config, rule, machine)
        crew = crews[0] if crews else None
        language = (crew.language if crew else None) or self.config.language
        values = {**finding.values, "machine": machine.name or machine.id}
        title = render(rule.title, f"maintenance.title.{rule.test}", language, values)
        description = render(rule.description, "", language, values) if rule.description else ""
        return self.store.apply(
            finding,
            sector=machine.sector,
            severity=rule.severity,
            crew=crew.id if crew else None,
            title=title,
            description=description,
            reopen_window_ms=round(rule.reopen_minutes * 60_000),
            now_ms=now,
        )
