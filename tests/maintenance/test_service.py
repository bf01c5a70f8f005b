"""The maintenance service end to end: seeded InfluxDB → rules → tickets in a real store →
`ticket` points in InfluxDB and notices on a real Mosquitto; restarts change nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import Config
from collector.influxql import InfluxQL
from collector.sinks.influxdb import InfluxDBSink
from maintenance.notify import build_notifiers
from maintenance.service import MaintenanceService, TicketPublisher, render
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
