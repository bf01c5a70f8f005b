"""The maintenance service end to end: seeded InfluxDB → rules → tickets in a real store →
`ticket` points in InfluxDB and notices on a real Mosquitto; restarts change nothing."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import Config
from collector.influxql import InfluxQL
from collector.schema import Point
from collector.sinks import RetryableWriteError, Sink
from collector.sinks.influxdb import InfluxDBSink
from maintenance.model import Finding
from maintenance.notify import build_notifiers
from maintenance.service import CycleReport, MaintenanceService, TicketPublisher, render
from maintenance.store import TicketStore
from tests.conftest import InfluxDBDatabase
from tests.maintenance import seed
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

HOT = {
    "id": "hot-press",
    "machines": ["press-1"],
    "severity": "critical",
    "threshold": {"signal": "temperature", "above": 80, "for_minutes": 5, "clear_below": 70},
    "title": {
        "es": "{machine}: temperatura {value} °C (límite {limit})",
        "en": "{machine}: temperature {value} °C (limit {limit})",
    },
}


def plant(influxdb: InfluxDBDatabase, broker: Mosquitto, tmp_path: Path) -> Config:
    config = seed.plant(influxdb.url, influxdb.database, HOT)
    data: dict[str, Any] = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["mqtt"] = {"url": broker.url}
    data["maintenance"] |= {
        "store": f"sqlite:///{tmp_path / 'tickets.db'}",
        "crews": [{"id": "mecanica", "sectors": [seed.SECTOR], "notify": ["tablero"]}],
        "notifications": [{"type": "mqtt", "id": "tablero", "topic": "aguante/tickets"}],
    }
    return Config.model_validate(data)


@pytest.fixture
def listener(mosquitto: Mosquitto) -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: received.append(json.loads(m.payload))
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe("aguante/tickets", qos=1)
    client.loop_start()
    assert subscribed.wait(5)
    yield received
    client.loop_stop()
    client.disconnect()


async def one_cycle(config: Config, now_ms: int) -> tuple[Any, TicketStore]:
    store = TicketStore(config.maintenance.store)
    with InfluxQL.from_config(config.influxdb) as db:
        async with InfluxDBSink.from_config(config.influxdb) as sink:
            publisher = TicketPublisher(config, store, sink, base_url="http://plant:8080")
            service = MaintenanceService(
                config,
                store=store,
                db=db,
                publisher=publisher,
                notifiers=build_notifiers(config, {}),
                clock=lambda: now_ms / 1000,
            )
            report = await service.cycle()
    return report, store


async def test_a_hot_press_opens_one_ticket_tells_the_crew_and_survives_restarts(
    influxdb: InfluxDBDatabase,
    mosquitto: Mosquitto,
    listener: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    config = plant(influxdb, mosquitto, tmp_path)
    now = seed.NOW_MS
    hot = seed.series(
        "press-1", "temperature", [(t, 85.0) for t in seed.every(now - 3_600_000, now, 10_000)]
    )
    cool = seed.series(
        "press-2", "temperature", [(t, 40.0) for t in seed.every(now - 3_600_000, now, 10_000)]
    )
    await seed.write(config, hot + cool)

    report, store = await one_cycle(config, now)
    assert (report.findings, report.events, report.errors) == (1, 1, [])
    assert report.notices_sent == 1
    (ticket,) = store.list(readings=True)
    assert ticket.machine == "press-1" and ticket.status == "open" and ticket.crew == "mecanica"
    assert ticket.title == "press-1: temperatura 85 °C (límite 80)", ticket.title
    assert ticket.readings and ticket.readings[-1].value == 85.0
    store.close()

    # Another process later (a restart): the same condition updates, never a second ticket.
    report, store = await one_cycle(config, now + 60_000)
    assert len(store.list()) == 1 and report.notices_failed == 0
    store.close()

    points = influxdb.query("SELECT * FROM ticket")
    assert [(p["machine"], p["status"], p["severity"], p["event"]) for p in points] == [
        ("press-1", "open", "critical", "opened")
    ]
    assert listener and listener[0]["event"] == "opened" and listener[0]["ticket"] == ticket.id
    assert listener[0]["url"] == f"http://plant:8080/tickets/{ticket.id}"


def test_titles_fall_back_to_another_language_and_then_to_the_default() -> None:
    values = {"machine": "prensa", "value": 85, "limit": 80, "signal": "temperatura"}
    assert render({"en": "{machine} hot"}, "maintenance.title.threshold", "es", values) == (
        "prensa hot"
    )
    assert render({}, "maintenance.title.threshold", "pt-BR", values) == (
        "prensa: temperatura em 85 (limite 80)"
    )
    assert render({"es": "{machine} {missing}"}, "", "es", values) == "prensa {missing}"
    # Numbers the way the crew writes them: a decimal comma in es and pt-BR.
    assert render({"es": "{value}"}, "", "es", {"value": 7.25}) == "7,25"
    assert render({"en": "{value}"}, "", "en", {"value": 7.25}) == "7.25"
    assert render({"es": "{value}"}, "", "es", {"value": 1234567.5}) == "1234567,5"


async def test_aguante_maintenance_once_runs_one_cycle(
    influxdb: InfluxDBDatabase, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    import asyncio

    import yaml

    from collector.cli import main

    config = plant(influxdb, mosquitto, tmp_path)
    now = seed.NOW_MS
    await seed.write(
        config,
        seed.series(
            "press-1", "temperature", [(t, 85.0) for t in seed.every(now - 600_000, now, 10_000)]
        ),
    )
    path = tmp_path / "factory.yaml"
    path.write_text(
        yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    # The seeded data is older than the wall clock: the rule holds (no data in its window),
    # so the cycle finds, opens nothing, and says so.
    code = await asyncio.to_thread(main, ["maintenance", str(path), "--once"])
    assert code == 0
    with TicketStore(config.maintenance.store) as store:
        assert store.list() == []


# -- what the dashboards read: rule_status and reliability ---------------------------------------

HOT_BOTH = {**HOT, "machines": ["press-1", "press-2"]}
OIL = {"id": "oil-change", "machines": ["press-1"], "meter": {"run_hours": 10, "cycles": 1000}}


def status_plant(influxdb: InfluxDBDatabase, tmp_path: Path) -> Config:
    config = seed.plant(influxdb.url, influxdb.database, HOT_BOTH, OIL)
    data: dict[str, Any] = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["maintenance"] |= {"store": f"sqlite:///{tmp_path / 'tickets.db'}"}
    return Config.model_validate(data)


async def status_cycle(config: Config, now_ms: int, sink: Sink | None = None) -> CycleReport:
    with (
        TicketStore(config.maintenance.store) as store,
        InfluxQL.from_config(config.influxdb) as db,
    ):
        async with contextlib.AsyncExitStack() as stack:
            if sink is None:
                sink = await stack.enter_async_context(InfluxDBSink.from_config(config.influxdb))
            publisher = TicketPublisher(config, store, sink, base_url="http://plant")
            service = MaintenanceService(
                config,
                store=store,
                db=db,
                publisher=publisher,
                notifiers={},
                clock=lambda: now_ms / 1000,
            )
            return await service.cycle()


def rows(influxdb: InfluxDBDatabase, measurement: str) -> list[dict[str, Any]]:
    found = influxdb.query(f'SELECT * FROM "{measurement}" GROUP BY *')
    return sorted(
        ({k: v for k, v in row.items() if v is not None and k != "_name"} for row in found),
        key=lambda row: (row["time"], row["machine"], row.get("rule", "")),
    )


async def test_each_cycle_writes_each_rule_status_and_each_machines_reliability(
    influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    config = status_plant(influxdb, tmp_path)
    now = seed.NOW_MS
    hour = seed.HOUR_MS
    # press-1: hot for the last hour, and 4 hours at 30 s of each minute, 2 parts a minute:
    # 2 run-hours of 10 (0.2) and 480 cycles of 1000 (0.48).
    await seed.write(
        config,
        [
            *seed.series(
                "press-1", "temperature", [(t, 85.0) for t in seed.every(now - hour, now, 10_000)]
            ),
            *seed.series(
                "press-2", "temperature", [(t, 40.0) for t in seed.every(now - hour, now, 10_000)]
            ),
            *seed.minutes("press-1", now - 4 * hour, now, running_s=30, produced=2),
        ],
    )
    # The hot press had the same trouble this morning: opened 5 hours ago, repaired 2 hours
    # ago; firing again within a day, this cycle reopens that ticket.
    with TicketStore(config.maintenance.store) as store:
        hot = Finding("hot-press", "press-1", "fire", now - 5 * hour)
        shown: dict[str, Any] = {
            "sector": seed.SECTOR,
            "severity": "critical",
            "crew": None,
            "title": "hot",
            "description": "",
            "reopen_window_ms": seed.DAY_MS,
        }
        opened = store.apply(hot, **shown, now_ms=now - 5 * hour)
        assert opened is not None
        store.resolve(opened.ticket.id, "Ana", now - 2 * hour)

    report = await status_cycle(config, now)
    assert (report.findings, report.events, report.errors) == (3, 1, [])
    with TicketStore(config.maintenance.store) as store:
        (ticket,) = store.list()
        assert ticket.status == "open" and ticket.opened_ms == now - 5 * hour
        window = (now - 90 * seed.DAY_MS, now)
        mtbf_s, mttr_s = store.mtbf_mttr("press-1", *window, rules=["hot-press"])
        assert mtbf_s is not None and mttr_s is not None

    tags = {"factory": seed.FACTORY, "sector": seed.SECTOR}
    assert rows(influxdb, "rule_status") == [
        {
            **tags,
            "time": now,
            "machine": "press-1",
            "rule": "hot-press",
            "test": "threshold",
            "verdict": "fire",
            "firing": True,
            "ticket": ticket.id,
            "ticket_status": "open",
            "ticket_opened_ms": now,  # reopened now: its age counts from the reopening
        },
        {
            **tags,
            "time": now,
            "machine": "press-1",
            "rule": "oil-change",
            "test": "meter",
            "verdict": "clear",
            "firing": False,
            "progress": 480 / 1000,
            "ticket": 0,
            "ticket_status": "",
            "ticket_opened_ms": 0,
        },
        {
            **tags,
            "time": now,
            "machine": "press-2",
            "rule": "hot-press",
            "test": "threshold",
            "verdict": "clear",
            "firing": False,
            "ticket": 0,
            "ticket_status": "",
            "ticket_opened_ms": 0,
        },
    ]
    assert rows(influxdb, "reliability") == [
        {
            **tags,
            "time": now,
            "machine": "press-1",
            "mtbf_h": mtbf_s / 3600,  # 90 days over the one failure begun before now
            "mttr_h": mttr_s / 3600,
            "failures": 1,
            "open_tickets": 1,
            "window_days": 90,
        },
        {
            **tags,
            "time": now,
            "machine": "press-2",
            "failures": 0,
            "open_tickets": 0,
            "window_days": 90,
        },
    ]
    assert mttr_s / 3600 == 3.0 and mtbf_s / 3600 == 90 * 24

    # A restart: the new service reads when the ticket was reopened from its history.
    later = now + 60_000
    report = await status_cycle(config, later)
    assert report.errors == []
    newest = [r for r in rows(influxdb, "rule_status") if r["time"] == later]
    assert [(r["machine"], r["rule"], r.get("ticket_opened_ms")) for r in newest] == [
        ("press-1", "hot-press", now),
        ("press-1", "oil-change", 0),
        ("press-2", "hot-press", 0),
    ]
    (press_1, _) = [r for r in rows(influxdb, "reliability") if r["time"] == later]
    assert press_1["failures"] == 2  # the reopening is in this window
    assert press_1["mtbf_h"] == 45 * 24


async def test_status_points_held_while_influxdb_is_away_the_newest_are_written(
    influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    config = status_plant(influxdb, tmp_path)
    now = seed.NOW_MS
    await seed.write(
        config, seed.minutes("press-1", now - seed.HOUR_MS, now, running_s=60, produced=5)
    )
    async with InfluxDBSink.from_config(config.influxdb) as influx:
        sink = FlakySink(influx)
        with (
            TicketStore(config.maintenance.store) as store,
            InfluxQL.from_config(config.influxdb) as db,
        ):
            publisher = TicketPublisher(config, store, sink, base_url="http://plant")
            clock = [now / 1000]
            service = MaintenanceService(
                config,
                store=store,
                db=db,
                publisher=publisher,
                notifiers={},
                clock=lambda: clock[0],
            )
            sink.down = True
            for minute in range(3):  # three cycles while InfluxDB takes no writes
                clock[0] = (now + minute * 60_000) / 1000
                assert (await service.cycle()).errors == []
            assert rows(influxdb, "rule_status") == []
            sink.down = False
            clock[0] = (now + 3 * 60_000) / 1000
            await service.cycle()
    # Only the newest snapshot (the fourth cycle's) was written: the held ones were replaced.
    assert {r["time"] for r in rows(influxdb, "rule_status")} == {now + 3 * 60_000}
    assert {r["time"] for r in rows(influxdb, "reliability")} == {now + 3 * 60_000}
    assert sink.refused == 3 and len(sink.written) == 1
    (meter,) = [r for r in rows(influxdb, "rule_status") if r["rule"] == "oil-change"]
    assert meter["progress"] == 300 / 1000  # an hour of 5 parts a minute, of 1000


class FlakySink:
    """The real InfluxDB sink behind a switch: `down` refuses every write as a lost link."""

    def __init__(self, sink: InfluxDBSink) -> None:
        self.sink = sink
        self.down = False
        self.refused = 0
        self.written: list[list[Point]] = []

    async def write(self, points: Sequence[Point]) -> None:
        if self.down:
            self.refused += 1
            raise RetryableWriteError("http://influx.test: connection refused")
        await self.sink.write(points)
        self.written.append(list(points))

    async def write_lines(self, lines: Sequence[str]) -> None:
        raise AssertionError("the publisher writes points")

    async def __aenter__(self) -> FlakySink:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None
