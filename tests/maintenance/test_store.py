"""The ticket store on SQLite and on the real PostgreSQL: lifecycle, one open ticket per machine
and rule, reopening, history, notes, meters, MTBF/MTTR, the outbox, migrations, concurrency."""

from __future__ import annotations

import inspect
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from collector.schema import TICKET
from maintenance import events
from maintenance import store as store_module
from maintenance.events import ticket_point
from maintenance.model import Finding, Notice, Reading, Ticket, TicketEvent, Verdict
from maintenance.store import (
    METADATA,
    Change,
    HistoryEntry,
    InvalidEntry,
    NoticeNotFound,
    StoreError,
    TicketError,
    TicketNotFound,
    TicketStore,
    TransitionRefused,
)

ROOT = Path(__file__).parents[2]
HOUR = 3_600_000
DAY = 24 * HOUR


def finding(
    verdict: Verdict = "fire",
    *,
    machine: str = "press-1",
    rule: str = "hot",
    at_ms: int = 0,
    readings: tuple[Reading, ...] = (),
) -> Finding:
    return Finding(rule, machine, verdict, at_ms, {"value": 91.5}, readings)


def apply(
    store: TicketStore,
    verdict: Verdict = "fire",
    now_ms: int = 0,
    *,
    machine: str = "press-1",
    rule: str = "hot",
    title: str = "press-1: 91.5 °C",
    severity: str = "warning",
    sector: str = "pressing",
    crew: str | None = "mecanica",
    window_ms: int = DAY,
    readings: tuple[Reading, ...] = (),
) -> TicketEvent | None:
    return store.apply(
        finding(verdict, machine=machine, rule=rule, at_ms=now_ms, readings=readings),
        sector=sector,
        severity=severity,
        crew=crew,
        title=title,
        description="Above 85 °C for 5 min",
        reopen_window_ms=window_ms,
        now_ms=now_ms,
    )


def opened(store: TicketStore, now_ms: int = 0, **kwargs: Any) -> Ticket:
    event = apply(store, "fire", now_ms, **kwargs)
    assert event is not None and event.kind == "opened"
    return event.ticket


def engine_for(url: str) -> Engine:
    """An engine of the test's own on a store's database (psycopg for PostgreSQL)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed)


def kinds(store: TicketStore, ticket_id: int) -> list[str]:
    return [entry.event for entry in store.history(ticket_id)]


# -- rules make tickets ---------------------------------------------------------------------------


def test_a_firing_rule_opens_a_ticket_with_its_readings(store: TicketStore) -> None:
    readings = (Reading(900, "temperature", 90.5), Reading(1000, "temperature", 91.5))
    event = apply(store, "fire", 1000, readings=readings)

    assert event is not None
    assert (event.kind, event.actor, event.at_ms, event.note) == ("opened", "aguante", 1000, None)
    ticket = event.ticket
    assert ticket == Ticket(
        id=ticket.id,
        machine="press-1",
        sector="pressing",
        rule="hot",
        severity="warning",
        status="open",
        title="press-1: 91.5 °C",
        description="Above 85 °C for 5 min",
        crew="mecanica",
        opened_ms=1000,
        updated_ms=1000,
        readings=readings,
    )
    assert store.get(ticket.id) == ticket
    assert store.open_for("press-1", "hot") == ticket
    assert store.open_for("press-1", "cold") is None
    assert store.open_for("press-2", "hot") is None


def test_hold_and_a_clear_without_a_ticket_change_nothing(store: TicketStore) -> None:
    assert apply(store, "hold", 1000) is None
    assert apply(store, "clear", 2000) is None
    assert store.list() == []
    ticket = opened(store, 3000)
    assert apply(store, "hold", 4000) is None
    assert store.get(ticket.id) == ticket
    assert kinds(store, ticket.id) == ["opened"]


def test_a_flapping_signal_keeps_one_ticket_and_says_each_change_once(
    store: TicketStore,
) -> None:
    ticket = opened(store, 0)
    seen: list[str | None] = []
    for minute in range(1, 13):
        verdict: Verdict = ("fire", "fire", "clear", "clear")[minute % 4]
        event = apply(store, verdict, minute * 60_000)
        seen.append(None if event is None else event.kind)
        assert store.open_for("press-1", "hot") is not None

    assert seen == [
        None,  # fire again: nothing visible changed
        "condition_cleared",
        None,  # cleared once, not twice
        "updated",  # fired again: the mark goes
        None,
        "condition_cleared",
        None,
        "updated",
        None,
        "condition_cleared",
        None,
        "updated",
    ]
    assert [t.id for t in store.list()] == [ticket.id]
    assert store.get(ticket.id).condition_cleared_ms is None
    history = store.history(ticket.id)
    assert [h.event for h in history] == ["opened"] + ["condition_cleared", "updated"] * 3
    assert history[1].changes == (Change("condition_cleared_ms", None, 120_000),)
    assert history[2].changes == (Change("condition_cleared_ms", 120_000, None),)


def test_the_condition_cleared_mark_is_on_the_ticket_until_it_fires_again(
    store: TicketStore,
) -> None:
    ticket = opened(store, 0)
    cleared = apply(store, "clear", 5000)
    assert cleared is not None and cleared.kind == "condition_cleared"
    assert cleared.ticket.condition_cleared_ms == 5000
    assert cleared.ticket.status == "open"  # people resolve it, not the rule
    assert store.get(ticket.id).condition_cleared_ms == 5000
    again = apply(store, "fire", 6000)
    assert again is not None and again.kind == "updated"
    assert again.ticket.condition_cleared_ms is None


def test_a_new_title_or_severity_updates_the_open_ticket(store: TicketStore) -> None:
    ticket = opened(store, 0)
    event = apply(store, "fire", 1000, title="press-1: 97 °C", severity="critical")
    assert event is not None and event.kind == "updated"
    assert (event.ticket.title, event.ticket.severity) == ("press-1: 97 °C", "critical")
    assert event.ticket.updated_ms == 1000
    assert store.history(ticket.id)[-1].changes == (
        Change("title", "press-1: 91.5 °C", "press-1: 97 °C"),
        Change("severity", "warning", "critical"),
    )
    assert apply(store, "fire", 2000, title="press-1: 97 °C", severity="critical") is None


def test_the_open_ticket_gathers_new_readings_once_each(store: TicketStore) -> None:
    first = (Reading(100, "temperature", 90.0), Reading(200, "temperature", 91.0))
    ticket = opened(store, 200, readings=first)
    later = (Reading(200, "temperature", 91.0), Reading(300, "temperature", 92.0))
    assert apply(store, "fire", 300, readings=later) is None  # evidence, not a visible change

    kept = store.get(ticket.id)
    assert kept.readings == (*first, Reading(300, "temperature", 92.0))
    assert kept.updated_ms == 300
    assert apply(store, "fire", 400, readings=later) is None
    assert store.get(ticket.id).updated_ms == 300  # nothing new at all
    apply(store, "fire", 500, readings=(Reading(500, "temperature", float("nan")),))
    assert store.get(ticket.id).readings == kept.readings  # NaN is no evidence


def test_a_ticket_keeps_only_its_newest_readings(
    store: TicketStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_READINGS", 3)
    ticket = opened(store, 0, readings=tuple(Reading(t, "temperature", t) for t in range(2)))
    apply(store, "fire", 10, readings=tuple(Reading(t, "temperature", t) for t in range(2, 5)))
    assert [r.time_ms for r in store.get(ticket.id).readings] == [2, 3, 4]


def test_machines_and_rules_have_tickets_of_their_own(store: TicketStore) -> None:
    a = opened(store, 0, machine="press-1", rule="hot")
    b = opened(store, 0, machine="press-1", rule="vibration")
    c = opened(store, 0, machine="press-2", rule="hot")
    assert len({a.id, b.id, c.id}) == 3
    assert store.open_for("press-2", "hot") == c


# -- reopening ------------------------------------------------------------------------------------


def test_a_rule_firing_soon_after_the_resolution_reopens_the_ticket(store: TicketStore) -> None:
    ticket = opened(store, 0)
    store.assign(ticket.id, "ana", "beto", 500)
    store.resolve(ticket.id, "beto", HOUR)
    event = apply(store, "fire", HOUR + 30 * 60_000, window_ms=HOUR, title="press-1: 99 °C")

    assert event is not None
    assert (event.kind, event.actor) == ("reopened", "aguante")
    reopened = event.ticket
    assert reopened.id == ticket.id
    assert (reopened.status, reopened.resolved_ms, reopened.assignee) == ("open", None, "beto")
    assert reopened.opened_ms == 0
    assert reopened.title == "press-1: 99 °C"
    assert store.history(ticket.id)[-1] == HistoryEntry(
        id=store.history(ticket.id)[-1].id,
        ticket_id=ticket.id,
        at_ms=HOUR + 30 * 60_000,
        actor="aguante",
        event="reopened",
        changes=(
            Change("status", "resolved", "open"),
            Change("resolved_ms", HOUR, None),
            Change("title", "press-1: 91.5 °C", "press-1: 99 °C"),
        ),
        note=None,
    )
    assert len(store.list()) == 1
    assert store.acknowledge(ticket.id, "beto", 2 * HOUR).ticket.status == "acknowledged"


@pytest.mark.parametrize("after_ms", [HOUR, HOUR + 1, 10 * HOUR])
def test_a_rule_firing_once_the_window_is_over_opens_a_new_ticket(
    store: TicketStore, after_ms: int
) -> None:
    old = opened(store, 0)
    store.resolve(old.id, "ana", 1000)
    event = apply(store, "fire", 1000 + after_ms, window_ms=HOUR)
    assert event is not None and event.kind == "opened"
    assert event.ticket.id != old.id
    assert store.get(old.id).status == "resolved"
    assert [t.id for t in store.list()] == [event.ticket.id, old.id]


def test_a_window_of_zero_never_reopens(store: TicketStore) -> None:
    old = opened(store, 0)
    store.resolve(old.id, "ana", 1000)
    event = apply(store, "fire", 1000, window_ms=0)
    assert event is not None and event.kind == "opened" and event.ticket.id != old.id


def test_only_the_latest_resolved_ticket_reopens(store: TicketStore) -> None:
    first = opened(store, 0)
    store.resolve(first.id, "ana", 1000)
    second = opened(store, 10 * HOUR, window_ms=HOUR)
    store.resolve(second.id, "ana", 11 * HOUR)
    event = apply(store, "fire", 11 * HOUR + 1000, window_ms=HOUR)
    assert event is not None and event.kind == "reopened" and event.ticket.id == second.id
    assert store.get(first.id).status == "resolved"


# -- people: the lifecycle ------------------------------------------------------------------------


def test_a_crew_takes_a_ticket_from_open_to_resolved(store: TicketStore) -> None:
    ticket = opened(store, 0)
    acknowledged = store.acknowledge(ticket.id, "ana", 1000)
    started = store.start(ticket.id, "beto", 2000)
    resolved = store.resolve(ticket.id, "beto", 3000, note="Bearing replaced")

    assert [(e.kind, e.actor, e.at_ms, e.ticket.status) for e in (acknowledged, started)] == [
        ("acknowledged", "ana", 1000, "acknowledged"),
        ("started", "beto", 2000, "in_progress"),
    ]
    assert (resolved.kind, resolved.note, resolved.ticket.status) == (
        "resolved",
        "Bearing replaced",
        "resolved",
    )
    assert (resolved.ticket.resolved_ms, resolved.ticket.updated_ms) == (3000, 3000)
    assert store.get(ticket.id) == resolved.ticket
    assert store.open_for("press-1", "hot") is None
    assert [n.text for n in store.notes(ticket.id)] == ["Bearing replaced"]


def test_acknowledging_may_be_skipped(store: TicketStore) -> None:
    ticket = opened(store, 0)
    assert store.start(ticket.id, "ana", 1000).ticket.status == "in_progress"


@pytest.mark.parametrize("steps", [[], ["acknowledge"], ["start"], ["acknowledge", "start"]])
def test_a_ticket_resolves_from_any_unresolved_status(store: TicketStore, steps: list[str]) -> None:
    ticket = opened(store, 0)
    for step in steps:
        getattr(store, step)(ticket.id, "ana", 1000)
    assert store.resolve(ticket.id, "ana", 2000).ticket.status == "resolved"


@pytest.mark.parametrize(
    ("steps", "action", "message"),
    [
        (["acknowledge"], "acknowledge", "ticket {id} is already acknowledged"),
        (
            ["start"],
            "acknowledge",
            "ticket {id} is in progress; only an open ticket can be acknowledged",
        ),
        (
            ["resolve"],
            "acknowledge",
            "ticket {id} is resolved; only an open ticket can be acknowledged",
        ),
        (["start"], "start", "ticket {id} is already in progress"),
        (
            ["resolve"],
            "start",
            "ticket {id} is resolved; only an open or acknowledged ticket can be started",
        ),
        (["acknowledge", "resolve"], "resolve", "ticket {id} is already resolved"),
    ],
)
def test_a_refused_transition_says_why_and_changes_nothing(
    store: TicketStore, steps: list[str], action: str, message: str
) -> None:
    ticket = opened(store, 0)
    for step in steps:
        getattr(store, step)(ticket.id, "ana", 1000)
    before, history = store.get(ticket.id), store.history(ticket.id)

    with pytest.raises(TransitionRefused) as refused:
        getattr(store, action)(ticket.id, "beto", 2000)

    assert str(refused.value) == message.format(id=ticket.id)
    assert (refused.value.ticket_id, refused.value.status, refused.value.action) == (
        ticket.id,
        before.status,
        action,
    )
    assert store.get(ticket.id) == before
    assert store.history(ticket.id) == history


def test_a_ticket_is_assigned_reassigned_and_unassigned(store: TicketStore) -> None:
    ticket = opened(store, 0)
    event = store.assign(ticket.id, "ana", "beto", 1000)
    assert (event.kind, event.actor, event.ticket.assignee) == ("updated", "ana", "beto")
    store.assign(ticket.id, "ana", "carla", 2000)
    with pytest.raises(TransitionRefused, match=r"^ticket \d+ is already assigned to carla$"):
        store.assign(ticket.id, "ana", "carla", 3000)
    assert store.assign(ticket.id, "carla", None, 4000).ticket.assignee is None
    with pytest.raises(TransitionRefused, match=r"^ticket \d+ is already assigned to nobody$"):
        store.assign(ticket.id, "ana", None, 5000)
    assert [h.changes for h in store.history(ticket.id)[1:]] == [
        (Change("assignee", None, "beto"),),
        (Change("assignee", "beto", "carla"),),
        (Change("assignee", "carla", None),),
    ]
    store.resolve(ticket.id, "ana", 6000)
    with pytest.raises(TransitionRefused) as refused:
        store.assign(ticket.id, "ana", "beto", 7000)
    assert str(refused.value) == (
        f"ticket {ticket.id} is resolved; only an unresolved ticket can be assigned"
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get(999),
        lambda s: s.history(999),
        lambda s: s.notes(999),
        lambda s: s.notices(999),
        lambda s: s.acknowledge(999, "ana", 0),
        lambda s: s.start(999, "ana", 0),
        lambda s: s.resolve(999, "ana", 0),
        lambda s: s.assign(999, "ana", "beto", 0),
        lambda s: s.add_note(999, "ana", "oil", 0),
        lambda s: s.queue_notice(Notice("phone", 999, "s", "t", {}), 0),
    ],
)
def test_an_unknown_ticket_is_named(store: TicketStore, call: Any) -> None:
    with pytest.raises(TicketNotFound) as missing:
        call(store)
    assert str(missing.value) == "ticket 999 does not exist"
    assert missing.value.ticket_id == 999
    assert isinstance(missing.value, TicketError)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, i: s.acknowledge(i, "  ", 0), "actor must name a person"),
        (lambda s, i: s.assign(i, "ana", " ", 0), "assignee must name a person"),
        (
            lambda s, i: s.add_note(i, "ana", "  ", 0),
            "a note needs text, parts used or minutes spent",
        ),
        (
            lambda s, i: s.add_note(i, "ana", "", 0, parts=" "),
            "a note needs text, parts used or minutes spent",
        ),
        (
            lambda s, i: s.add_note(i, "ana", "oil", 0, minutes=0),
            "minutes spent must be a whole number above 0, got 0",
        ),
        (
            lambda s, i: s.add_note(i, "ana", "oil", 0, minutes=-5),
            "minutes spent must be a whole number above 0, got -5",
        ),
        (
            lambda s, i: s.add_note(i, "ana", "oil", 0, minutes=1.5),
            "minutes spent must be a whole number above 0, got 1.5",
        ),
        (
            lambda s, i: s.list(status=["open", "closed"]),
            "unknown status 'closed'; one of open, acknowledged, in_progress, resolved",
        ),
        (
            lambda s, i: apply(s, "fire", 0, window_ms=-1),
            "reopen_window_ms must be 0 or more, got -1",
        ),
        (
            lambda s, i: s.list(limit=0),
            "limit must be 1 or more and offset 0 or more, got 0, 0",
        ),
        (
            lambda s, i: s.mtbf_mttr("press-1", 10, 10),
            "the window must end after it starts; got 10 to 10",
        ),
    ],
)
def test_bad_input_is_refused_with_a_reason(store: TicketStore, call: Any, message: str) -> None:
    ticket = opened(store, 0)
    with pytest.raises(InvalidEntry) as refused:
        call(store, ticket.id)
    assert str(refused.value) == message
    assert kinds(store, ticket.id) == ["opened"]


# -- notes, parts, time; history -----------------------------------------------------------------


def test_notes_keep_parts_used_and_time_spent(store: TicketStore) -> None:
    ticket = opened(store, 0)
    noted = store.add_note(ticket.id, "ana", " Bearing noisy ", 1000)
    store.add_note(ticket.id, "beto", "", 2000, parts="2× 6204-2RS bearing", minutes=45)
    store.resolve(ticket.id, "beto", 3000, note="Done")
    store.add_note(ticket.id, "beto", "Cleaned up", 4000, minutes=15)  # after: still welcome

    assert (noted.kind, noted.note, noted.ticket.updated_ms) == ("noted", "Bearing noisy", 1000)
    notes = store.notes(ticket.id)
    assert [(n.at_ms, n.actor, n.text, n.parts, n.minutes) for n in notes] == [
        (1000, "ana", "Bearing noisy", None, None),
        (2000, "beto", "", "2× 6204-2RS bearing", 45),
        (3000, "beto", "Done", None, None),
        (4000, "beto", "Cleaned up", None, 15),
    ]
    assert sum(n.minutes or 0 for n in notes) == 60
    assert store.get(ticket.id).status == "resolved"  # a note changes no status


def test_history_tells_who_changed_what_and_when(store: TicketStore) -> None:
    ticket = opened(store, 0)
    apply(store, "fire", 1000, severity="critical")
    apply(store, "clear", 2000)
    store.acknowledge(ticket.id, "ana", 3000)
    store.assign(ticket.id, "ana", "beto", 4000)
    store.start(ticket.id, "beto", 5000)
    store.add_note(ticket.id, "beto", "Fan belt", 6000, parts="belt A-42", minutes=30)
    store.resolve(ticket.id, "beto", 7000, note="Belt replaced")
    apply(store, "fire", 8000, severity="critical")

    got = [(h.at_ms, h.actor, h.event, h.changes, h.note) for h in store.history(ticket.id)]
    assert got == [
        (0, "aguante", "opened", (Change("status", None, "open"),), None),
        (1000, "aguante", "updated", (Change("severity", "warning", "critical"),), None),
        (
            2000,
            "aguante",
            "condition_cleared",
            (Change("condition_cleared_ms", None, 2000),),
            None,
        ),
        (3000, "ana", "acknowledged", (Change("status", "open", "acknowledged"),), None),
        (4000, "ana", "updated", (Change("assignee", None, "beto"),), None),
        (5000, "beto", "started", (Change("status", "acknowledged", "in_progress"),), None),
        (
            6000,
            "beto",
            "noted",
            (Change("parts", None, "belt A-42"), Change("minutes", None, 30)),
            "Fan belt",
        ),
        (
            7000,
            "beto",
            "resolved",
            (Change("status", "in_progress", "resolved"), Change("resolved_ms", None, 7000)),
            "Belt replaced",
        ),
        (
            8000,
            "aguante",
            "reopened",
            (
                Change("status", "resolved", "open"),
                Change("resolved_ms", 7000, None),
                Change("condition_cleared_ms", 2000, None),
            ),
            None,
        ),
    ]
    assert store.get(ticket.id).condition_cleared_ms is None


# -- queries --------------------------------------------------------------------------------------


def test_the_list_filters_by_status_sector_and_machine_newest_first(store: TicketStore) -> None:
    a = opened(store, 1000, machine="press-1", rule="hot", readings=(Reading(1, "t", 1.0),))
    b = opened(store, 2000, machine="lathe-1", rule="hot", sector="turning")
    c = opened(store, 3000, machine="press-1", rule="vibration")
    store.acknowledge(b.id, "ana", 4000)
    store.resolve(c.id, "ana", 5000)

    def ids(**filters: Any) -> list[int]:
        return [t.id for t in store.list(**filters)]

    assert ids() == [c.id, b.id, a.id]
    assert ids(status="open") == [a.id]
    assert ids(status=["open", "acknowledged"]) == [b.id, a.id]
    assert ids(sectors=["turning"]) == [b.id]
    assert ids(sectors=[]) == []
    assert ids(machine="press-1") == [c.id, a.id]
    assert ids(machine="press-1", status="resolved") == [c.id]
    assert ids(limit=2) == [c.id, b.id]
    assert ids(limit=2, offset=2) == [a.id]
    assert store.list(machine="press-1", status="open")[0].readings == ()
    assert store.list(status="open", readings=True)[0].readings == (Reading(1, "t", 1.0),)


def test_last_resolved_is_the_last_completed_service(store: TicketStore) -> None:
    assert store.last_resolved("press-1", "oil") is None
    ticket = opened(store, 0, rule="oil")
    assert store.last_resolved("press-1", "oil") is None
    store.resolve(ticket.id, "ana", 5 * HOUR)
    assert store.last_resolved("press-1", "oil") == 5 * HOUR
    apply(store, "fire", 6 * HOUR, rule="oil", window_ms=DAY)  # reopened: that service stands
    assert store.last_resolved("press-1", "oil") == 5 * HOUR
    store.resolve(ticket.id, "ana", 7 * HOUR)
    assert store.last_resolved("press-1", "oil") == 7 * HOUR
    assert store.last_resolved("press-2", "oil") is None
    assert store.last_resolved("press-1", "hot") is None


def test_mtbf_and_mttr_on_a_constructed_timeline(store: TicketStore) -> None:
    # A repair that began before the window and ended inside it: its time counts, not as a failure.
    before = opened(store, -HOUR, rule="hot", window_ms=0)
    store.resolve(before.id, "ana", HOUR // 2)
    a = opened(store, 1 * HOUR, rule="hot", window_ms=0)
    store.resolve(a.id, "ana", 3 * HOUR // 2)  # 30 min
    apply(store, "fire", 2 * HOUR, rule="hot", window_ms=HOUR)  # reopened: a second failure
    store.resolve(a.id, "ana", 9 * HOUR // 4)  # 15 min
    b = opened(store, 3 * HOUR, rule="vibration")
    store.resolve(b.id, "ana", 5 * HOUR)  # 2 h
    opened(store, 8 * HOUR, rule="offline")  # not repaired yet
    other = opened(store, 4 * HOUR, machine="press-2")
    store.resolve(other.id, "ana", 4 * HOUR + 1000)
    later = opened(store, 11 * HOUR, rule="vibration", window_ms=0)  # after the window
    store.resolve(later.id, "ana", 12 * HOUR)

    mtbf, mttr = store.mtbf_mttr("press-1", 0, 10 * HOUR)
    assert mtbf == pytest.approx(36_000 / 4)  # failures at 1 h, 2 h, 3 h, 8 h
    assert mttr == pytest.approx((5400 + 1800 + 900 + 7200) / 4)
    only = store.mtbf_mttr("press-1", 0, 10 * HOUR, rules=["hot"])
    assert only == pytest.approx((36_000 / 2, (5400 + 1800 + 900) / 3))
    assert store.mtbf_mttr("press-1", 20 * HOUR, 30 * HOUR) == (None, None)
    assert store.mtbf_mttr("press-1", 7 * HOUR, 9 * HOUR) == (7200.0, None)
    assert store.mtbf_mttr("press-9", 0, 10 * HOUR) == (None, None)


# -- the outbox -----------------------------------------------------------------------------------


def notice(ticket_id: int, target: str = "phones") -> Notice:
    payload = {"ticket": ticket_id, "title": "prensa: 91,5 °C", "tags": ["a", "b"], "n": 1.5}
    return Notice(target, ticket_id, "[Aviso] prensa", "Ver http://x/tickets/1", payload)


def test_a_failing_notice_is_retried_and_its_error_shown_on_the_ticket(
    store: TicketStore,
) -> None:
    ticket = opened(store, 0)
    outbox_id = store.queue_notice(notice(ticket.id), 1000)

    assert store.due_notices(999, 10) == []  # not before it was queued
    assert store.due_notices(1000, 10) == [(outbox_id, notice(ticket.id), 0)]
    store.notice_failed(outbox_id, "webhook answered 503", 1000, retry_at_ms=31_000)
    assert store.due_notices(30_999, 10) == []
    assert store.due_notices(31_000, 10) == [(outbox_id, notice(ticket.id), 1)]
    store.notice_failed(outbox_id, "connection refused", 31_000, retry_at_ms=91_000)

    [state] = store.notices(ticket.id)
    assert (state.status, state.attempts, state.last_error) == ("pending", 2, "connection refused")
    assert (state.next_attempt_ms, state.last_attempt_ms, state.sent_ms) == (91_000, 31_000, None)
    assert (state.target, state.subject, state.created_ms) == ("phones", "[Aviso] prensa", 1000)

    [(_, _, attempts)] = store.due_notices(91_000, 10)
    assert attempts == 2
    store.notice_sent(outbox_id, 91_500)
    [state] = store.notices(ticket.id)
    assert (state.status, state.attempts, state.sent_ms, state.next_attempt_ms) == (
        "sent",
        3,
        91_500,
        None,
    )
    assert store.due_notices(10**12, 10) == []
    store.notice_failed(outbox_id, "late report", 92_000, retry_at_ms=95_000)  # a second sender
    store.notice_sent(outbox_id, 93_000)
    assert store.notices(ticket.id) == [state]


def test_a_notice_given_up_stays_visible_and_can_be_tried_again(store: TicketStore) -> None:
    ticket = opened(store, 0)
    outbox_id = store.queue_notice(notice(ticket.id), 0)
    store.notice_failed(outbox_id, "535 authentication failed", 1000, retry_at_ms=None)

    [state] = store.notices(ticket.id)
    assert (state.status, state.last_error, state.next_attempt_ms) == (
        "failed",
        "535 authentication failed",
        None,
    )
    assert store.due_notices(10**12, 10) == []
    store.retry_notice(outbox_id, 5000)
    assert [n for n, _, _ in store.due_notices(5000, 10)] == [outbox_id]
    store.notice_sent(outbox_id, 5000)
    with pytest.raises(TicketError, match=f"^notice {outbox_id} was already sent$"):
        store.retry_notice(outbox_id, 6000)


def test_a_notice_handed_out_is_leased_until_its_sender_reports(store: TicketStore) -> None:
    ticket = opened(store, 0)
    first = store.queue_notice(notice(ticket.id, "phones"), 0)
    second = store.queue_notice(notice(ticket.id, "board"), 10)
    third = store.queue_notice(notice(ticket.id, "mail"), 20)

    assert [n for n, _, _ in store.due_notices(100, 2, lease_ms=60_000)] == [first, second]
    assert [n for n, _, _ in store.due_notices(200, 10, lease_ms=60_000)] == [third]
    assert store.due_notices(300, 10) == []
    # The sender died: after the lease they are due again, in order.
    assert [n for n, _, _ in store.due_notices(60_100, 10)] == [first, second]
    assert [n for n, _, _ in store.due_notices(70_000, 10, lease_ms=0)] == [third]
    assert [n for n, _, _ in store.due_notices(70_000, 10, lease_ms=0)] == [third]


def test_an_unknown_notice_is_named(store: TicketStore) -> None:
    calls: list[Callable[[], None]] = [
        lambda: store.notice_sent(77, 0),
        lambda: store.notice_failed(77, "x", 0, 1),
        lambda: store.retry_notice(77, 0),
    ]
    for call in calls:
        with pytest.raises(NoticeNotFound) as missing:
            call()
        assert missing.value.args == ("notice 77 does not exist",)


# -- opening: migrations, URLs --------------------------------------------------------------------


def test_migrating_twice_changes_nothing(store_url: str) -> None:
    with TicketStore(store_url, migrate=False) as fresh:
        assert fresh.migrate() == ["0001"]
        ticket = opened(fresh, 0)
        assert fresh.migrate() == []
    with TicketStore(store_url) as again:
        assert again.migrate() == []
        assert again.get(ticket.id) == ticket
    engine = engine_for(store_url)
    try:
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "0001"
    finally:
        engine.dispose()


def test_the_migrations_make_the_tables_the_store_uses(store_url: str) -> None:
    TicketStore(store_url).close()
    engine = engine_for(store_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), METADATA)
    finally:
        engine.dispose()
    assert differences == []


def test_a_schema_newer_than_this_program_is_refused(store_url: str) -> None:
    with TicketStore(store_url) as store:
        where = store.where
    engine = engine_for(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    with pytest.raises(StoreError) as refused:
        TicketStore(store_url)
    assert str(refused.value) == (
        f"ticket store {where}: its schema is at revision 9999, which this version of aguante "
        "does not know (newest here: 0001); run the newer aguante that wrote it"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "mysql://root@localhost/aguante",
            "ticket store 'mysql://root@localhost/aguante': unsupported database 'mysql'; "
            "use sqlite:///path or postgresql://user@host/db",
        ),
        (
            "sqlite://",
            "ticket store 'sqlite://': give SQLite a file (sqlite:///path/tickets.db); "
            "an in-memory database is lost on exit and not shared between connections",
        ),
        (
            "tickets.db",
            "ticket store URL 'tickets.db' is not a URL: use sqlite:///path or "
            "postgresql://user@host/db",
        ),
    ],
)
def test_a_store_url_it_cannot_use_is_refused(url: str, message: str) -> None:
    with pytest.raises(StoreError) as refused:
        TicketStore(url)
    assert str(refused.value) == message


def test_an_unreachable_store_is_named_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as refused:
        TicketStore("postgresql://aguante:s3cret@127.0.0.1:1/tickets")
    assert str(refused.value).startswith(
        "ticket store postgresql+psycopg://aguante:***@127.0.0.1:1/tickets: "
    )
    assert "s3cret" not in str(refused.value)
    with pytest.raises(StoreError, match="unable to open database file"):
        TicketStore(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")


def test_a_closed_store_says_so(store: TicketStore) -> None:
    store.close()
    with pytest.raises(StoreError, match=r"^ticket store .* is closed$"):
        store.list()
    with pytest.raises(StoreError, match=r"^ticket store .* is closed$"):
        apply(store)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "tickets.db"
    with TicketStore(f"sqlite:///{path}") as store:
        opened(store)
        with store._engine.connect() as conn:  # the store's own connections
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    plain = sqlite3.connect(path)
    try:
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert plain.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        plain.close()


# -- concurrency ----------------------------------------------------------------------------------


def test_writers_racing_on_one_finding_make_one_ticket(store_url: str) -> None:
    threads_per_rule, rules = 6, 8
    with TicketStore(store_url) as one, TicketStore(store_url) as two:
        results: list[tuple[str, str | None]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def race(store: TicketStore, rule: str, barrier: threading.Barrier) -> None:
            try:
                barrier.wait()
                event = apply(store, "fire", 1000, rule=rule)
                with lock:
                    results.append((rule, None if event is None else event.kind))
            except BaseException as exc:
                errors.append(exc)

        for index in range(rules):
            barrier = threading.Barrier(threads_per_rule)
            workers = [
                threading.Thread(target=race, args=((one, two)[n % 2], f"r{index}", barrier))
                for n in range(threads_per_rule)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        assert errors == []
        for index in range(rules):
            got = sorted(kind or "-" for rule, kind in results if rule == f"r{index}")
            assert got == ["-"] * (threads_per_rule - 1) + ["opened"]
        tickets = one.list(limit=1000)
        assert sorted(t.rule for t in tickets) == sorted(f"r{i}" for i in range(rules))
        assert all(kinds(one, t.id) == ["opened"] for t in tickets)


_WORKER = """
import sys
from maintenance.model import Finding
from maintenance.store import TicketStore

url, name = sys.argv[1], sys.argv[2]
opened = 0
with TicketStore(url) as store:
    for n in range(40):
        finding = Finding(f"r{n % 20}", "press-1", "fire" if n % 3 else "clear", n)
        event = store.apply(
            finding, sector="s", severity="warning", crew=None, title=f"t{n % 20}",
            description="", reopen_window_ms=0, now_ms=n,
        )
        opened += event is not None and event.kind == "opened"
        if n % 7 == 0 and (ticket := store.open_for("press-1", f"r{n % 20}")) is not None:
            store.add_note(ticket.id, name, f"seen by {name}", n)
print(opened)
"""


def test_two_processes_share_one_store(store_url: str) -> None:
    # Both open a store not yet migrated at the same moment, then write side by side.
    workers = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", _WORKER, store_url, name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    with TicketStore(store_url) as store:
        tickets = store.list(limit=1000)
        assert sum(int(out) for out, _ in outputs) == len(tickets)
        assert sorted(t.rule for t in tickets) == sorted({f"r{n % 20}" for n in range(40)})
        assert all(kinds(store, t.id).count("opened") == 1 for t in tickets)
        if store.backend == "sqlite":
            with store._engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


# -- the ticket point, the exported names ---------------------------------------------------------


def test_a_ticket_event_is_a_point_for_grafana_annotations() -> None:
    ticket = Ticket(
        id=7,
        machine="press-1",
        sector="pressing",
        rule="hot",
        severity="critical",
        status="acknowledged",
        title="press-1: 91.5 °C",
        description="",
        crew=None,
        opened_ms=1000,
        updated_ms=5000,
    )
    point = ticket_point(TicketEvent(ticket, "acknowledged", "ana", 5000), "coop-1")
    assert point.measurement == TICKET == "ticket"
    assert point.tags == {
        "factory": "coop-1",
        "sector": "pressing",
        "machine": "press-1",
        "rule": "hot",
    }
    assert point.fields == {
        "id": 7,
        "status": "acknowledged",
        "title": "press-1: 91.5 °C",
        "severity": "critical",
        "event": "acknowledged",
    }
    assert point.time_ms == 5000


@pytest.mark.parametrize("module", [store_module, events], ids=lambda m: m.__name__)
def test_all_names_what_the_module_exports(module: Any) -> None:
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }
    assert defined <= set(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)
