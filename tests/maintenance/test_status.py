"""The dashboards' view of the maintenance service (maintenance/status.py) from known inputs, and
the publisher's hold-and-retry of those points through an in-memory sink."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import maintenance.status as status
from collector.config import Config
from collector.schema import RELIABILITY, RULE_STATUS, Point
from collector.sinks import RetryableWriteError
from collector.sinks.memory import MemorySink
from maintenance.model import Finding, Ticket, TicketEvent
from maintenance.service import TicketPublisher
from maintenance.status import (
    ReliabilityFigures,
    failure_rules,
    machines_with_failures,
    opened_at,
    reliability_figures,
    reliability_point,
    rule_status_points,
)
from maintenance.store import Change, HistoryEntry
from tests.maintenance import seed

NOW = seed.NOW_MS
HOT: dict[str, Any] = {
    "id": "hot",
    "sector": seed.SECTOR,
    "threshold": {"signal": "temperature", "above": 80, "for_minutes": 5},
}
OIL: dict[str, Any] = {
    "id": "oil",
    "machines": ["press-1"],
    "meter": {"run_hours": 10, "cycles": 1000},
}
SHAKY: dict[str, Any] = {
    "id": "shaky",
    "machines": ["press-2"],
    "drift": {"signal": "vibration", "mads": 4},
}


def plant(*rules: dict[str, Any], machines: int = 3) -> Config:
    return seed.plant("http://influx.test", "aguante", *rules, machines=machines)


def ticket(
    id: int, machine: str, rule: str, status: str = "open", opened_ms: int = NOW - 7_200_000
) -> Ticket:
    return Ticket(
        id=id,
        machine=machine,
        sector=seed.SECTOR,
        rule=rule,
        severity="warning",
        status=status,  # type: ignore[arg-type]
        title="t",
        description="",
        crew=None,
        opened_ms=opened_ms,
        updated_ms=opened_ms,
    )


def test_all_names_are_exported() -> None:
    public = {n for n in vars(status) if not n.startswith("_") and n.isidentifier()}
    defined = {
        n for n in public if getattr(getattr(status, n), "__module__", None) == status.__name__
    }
    assert defined <= set(status.__all__)


def test_failure_rules_leave_the_meters_out_and_name_the_machines_they_watch() -> None:
    config = plant(OIL, HOT, SHAKY)
    assert failure_rules(config) == ["hot", "shaky"]
    assert [m.id for m in machines_with_failures(config)] == ["press-1", "press-2", "press-3"]
    only_meter_and_drift = plant(OIL, SHAKY)
    assert [m.id for m in machines_with_failures(only_meter_and_drift)] == ["press-2"]
    assert machines_with_failures(plant(OIL)) == []


def test_reliability_figures_are_hours_and_count_the_failures_back() -> None:
    window = 90 * seed.DAY_MS
    # Three failures in 90 days: MTBF 30 days; repairs of 1.5 h on average.
    figures = reliability_figures(window / 1000 / 3, 5400.0, NOW - window, NOW)
    assert figures == ReliabilityFigures(720.0, 1.5, 3)
    assert reliability_figures(None, None, NOW - window, NOW) == ReliabilityFigures(None, None, 0)
    # A repair ended in the window of a failure that began before it: MTTR without MTBF.
    assert reliability_figures(None, 60.0, NOW - window, NOW) == ReliabilityFigures(None, 1 / 60, 0)


def test_a_ticket_is_as_old_as_its_last_reopening() -> None:
    def entry(n: int, event: str, at_ms: int) -> HistoryEntry:
        return HistoryEntry(n, 7, at_ms, "aguante", event, (Change("status", None, "open"),), None)

    history = [
        entry(1, "opened", 1000),
        entry(2, "resolved", 2000),
        entry(3, "reopened", 3000),
        entry(4, "acknowledged", 4000),
        entry(5, "resolved", 5000),
        entry(6, "reopened", 6000),
        entry(7, "updated", 7000),
    ]
    assert opened_at(history) == 6000
    assert opened_at(history[:2]) == 1000
    assert opened_at([]) is None


def test_rule_status_points_carry_verdict_progress_and_the_open_ticket() -> None:
    config = plant(OIL, HOT, SHAKY, machines=2)
    findings = [
        Finding("oil", "press-1", "clear", NOW, {"value": 4, "limit": 10, "progress": 0.48}),
        Finding("hot", "press-1", "fire", NOW, {"value": 85, "limit": 80}),
        Finding("hot", "press-2", "hold", NOW, {"value": 79}),
        Finding("shaky", "press-2", "clear", NOW, {}),
    ]
    tickets = {
        ("press-1", "hot"): ticket(12, "press-1", "hot", "acknowledged"),
        ("press-2", "shaky"): ticket(13, "press-2", "shaky", "in_progress", NOW - 60_000),
        ("press-2", "hot"): ticket(14, "press-2", "hot", opened_ms=NOW - 50_000),
    }
    # Ticket 12 was reopened an hour ago; 14 was never reopened, so its own time counts.
    opened = {12: NOW - 3_600_000, 13: NOW - 60_000}
    points = rule_status_points(config, findings, tickets, opened, NOW)

    def tags(machine: str, rule: str, test: str) -> dict[str, str]:
        return {**seed.tags(machine), "rule": rule, "test": test}

    assert points == [
        Point(
            RULE_STATUS,
            tags("press-1", "oil", "meter"),
            {
                "verdict": "clear",
                "firing": False,
                "progress": 0.48,
                "ticket": 0,
                "ticket_status": "",
                "ticket_opened_ms": 0,
            },
            NOW,
        ),
        Point(
            RULE_STATUS,
            tags("press-1", "hot", "threshold"),
            {
                "verdict": "fire",
                "firing": True,
                "ticket": 12,
                "ticket_status": "acknowledged",
                "ticket_opened_ms": NOW - 3_600_000,
            },
            NOW,
        ),
        Point(
            RULE_STATUS,
            tags("press-2", "hot", "threshold"),
            {
                "verdict": "hold",
                "firing": False,
                "ticket": 14,
                "ticket_status": "open",
                "ticket_opened_ms": NOW - 50_000,
            },
            NOW,
        ),
        Point(
            RULE_STATUS,
            tags("press-2", "shaky", "drift"),
            {
                "verdict": "clear",
                "firing": False,
                "ticket": 13,
                "ticket_status": "in_progress",
                "ticket_opened_ms": NOW - 60_000,
            },
            NOW,
        ),
    ]
    # The types InfluxDB keeps forever: a float progress even when the share is whole.
    (whole,) = rule_status_points(
        config, [Finding("oil", "press-1", "fire", NOW, {"progress": 1})], {}, {}, NOW
    )
    assert whole.fields["progress"] == 1.0 and isinstance(whole.fields["progress"], float)
    # A meter with nothing to count from holds without a progress.
    (held,) = rule_status_points(
        config, [Finding("oil", "press-1", "hold", NOW, {"value": ""})], {}, {}, NOW
    )
    assert held.fields == {
        "verdict": "hold",
        "firing": False,
        "ticket": 0,
        "ticket_status": "",
        "ticket_opened_ms": 0,
    }


def test_reliability_point_leaves_undefined_figures_out() -> None:
    config = plant(HOT)
    press = config.machines[0]
    point = reliability_point("coop", press, ReliabilityFigures(720.0, 1.5, 3), 2, NOW)
    assert point == Point(
        RELIABILITY,
        {"factory": "coop", "sector": seed.SECTOR, "machine": "press-1"},
        {"failures": 3, "open_tickets": 2, "window_days": 90, "mtbf_h": 720.0, "mttr_h": 1.5},
        NOW,
    )
    bare = reliability_point("coop", press, ReliabilityFigures(None, None, 0), 0, NOW)
    assert bare.fields == {"failures": 0, "open_tickets": 0, "window_days": 90}


# -- the publisher holds the newest snapshot ----------------------------------------------------


def snapshot(time_ms: int) -> list[Point]:
    return [Point(RELIABILITY, seed.tags("press-1"), {"failures": 0}, time_ms)]


class NoStore:
    """The publisher needs the store only to queue notices; status points queue none."""

    def queue_notice(self, *args: Any) -> None:
        raise AssertionError("no notice expected")


async def test_status_points_wait_for_influxdb_and_only_the_newest_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink()
    publisher = TicketPublisher(
        plant(HOT),
        NoStore(),  # type: ignore[arg-type]
        sink,
        base_url="http://plant.test",
    )
    sink.fail_next(2, RetryableWriteError("http://influx.test: connection refused"))
    publisher.hold_status(snapshot(NOW))
    with caplog.at_level(logging.WARNING):
        await publisher.flush()
    assert sink.points == [] and "rule status not written" in caplog.text
    publisher.hold_status(snapshot(NOW + 60_000))  # the older one is dropped
    await publisher.flush()
    assert sink.points == []
    await publisher.flush()
    assert sink.points == snapshot(NOW + 60_000)
    await publisher.flush()  # written once, not again
    assert sink.points == snapshot(NOW + 60_000) and sink.attempts == 3


async def test_refused_status_points_are_not_tried_again() -> None:
    sink = MemorySink(reject=lambda point: "field type conflict")
    publisher = TicketPublisher(
        plant(HOT),
        NoStore(),  # type: ignore[arg-type]
        sink,
        base_url="http://plant.test",
    )
    publisher.hold_status(snapshot(NOW))
    await publisher.flush()
    await publisher.flush()
    assert sink.attempts == 1


async def test_while_influxdb_is_away_one_flush_tries_once_and_then_writes_both() -> None:
    sink = MemorySink()
    publisher = TicketPublisher(
        plant(HOT),
        NoStore(),  # type: ignore[arg-type]
        sink,
        base_url="http://plant.test",
    )
    publisher.hold_status(snapshot(NOW))
    sink.fail_next(1, RetryableWriteError("http://influx.test: timed out"))
    event = TicketEvent(ticket(3, "press-1", "hot"), "opened", "aguante", NOW)
    await publisher.publish([event], NOW)
    assert sink.attempts == 1 and sink.points == []  # the status write waits too
    await publisher.flush()
    assert [batch[0].measurement for batch in sink.batches] == ["ticket", RELIABILITY]
    assert sink.points[1:] == snapshot(NOW)
