"""The maintenance service: every `interval` seconds, evaluate the rules over InfluxDB, turn the
findings into tickets, and tell the crews (docs/maintenance.md).

It reads only what is stored and the config, never a running collector, so either can restart
or several collectors can feed one plant. Ticket events go to InfluxDB (`ticket`, for Grafana
annotations) and, through the store's outbox, to each crew's notification targets; a failed
write or notice is kept and tried again, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from collector.config import Config, Crew, Language, Machine, Rule
from collector.i18n import translate
from collector.influxql import InfluxQL
from collector.schema import Point
from collector.sinks import Sink, WriteError
from maintenance.events import ticket_point
from maintenance.model import Finding, Notice, TicketEvent
from maintenance.notify import Notifier, deliver
from maintenance.rules import evaluate

__all__ = ["CycleReport", "MaintenanceService", "TicketPublisher", "crews_for", "render"]

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "aguante"
NOTICES_PER_CYCLE = 200


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

    def due_notices(self, now_ms: int, limit: int) -> list[tuple[int, Notice, int]]: ...

    def notice_sent(self, outbox_id: int, now_ms: int) -> Any: ...

    def notice_failed(
        self, outbox_id: int, error: str, now_ms: int, retry_at_ms: int | None
    ) -> Any: ...


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
    """Turns ticket events — from rules or from people — into `ticket` points and notices."""

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

    async def publish(self, events: list[TicketEvent], now_ms: int) -> None:
        for event in events:
            self._unwritten.append(ticket_point(event, self.config.factory))
            for notice in self.notices(event):
                await asyncio.to_thread(self.store.queue_notice, notice, now_ms)
        await self.flush()

    async def flush(self) -> None:
        """Write the `ticket` points held; kept for the next try when InfluxDB is away."""
        if not self._unwritten:
            return
        try:
            await self.sink.write(self._unwritten)
        except WriteError as exc:
            log.warning("ticket events not written to InfluxDB yet (%s); will retry", exc)
            return
        self._unwritten = []

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
        await self.publisher.publish(events, now)
        await self.publisher.flush()
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
