"""End to end over MQTT: a real Mosquitto, the collector, a real InfluxDB.

Payloads are published by a plain paho client in the test, shaped as each firmware documents
them, so what InfluxDB stores is compared with values and times worked out by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from collector.app import Collector
from collector.config import Config, parse_config
from collector.sinks.influxdb import InfluxDBSink
from tests.conftest import InfluxDBDatabase
from tests.services import Mosquitto
from tests.waiting import eventually as _eventually

# Their checks query InfluxDB, blocking the collector's loop meanwhile: asked every 0.1 s.
eventually = functools.partial(_eventually, every=0.1)

pytestmark = pytest.mark.integration

CONFIG = """
factory: coop
timezone: America/Argentina/Buenos_Aires
stats_interval: 0.3
influxdb: {{url: "{influx}", database: {database}, flush_interval: 0.1}}
mqtt:
  url: "{broker}"
  client_id: {client_id}
  subscriptions:  # plain values of any machine: planta/<machine>/valor/<signal>
    - topic: planta/{{machine}}/valor/{{signal}}
      format: plain
      signals: [{{name: blade_speed, path: speed}}]
sectors: [{{id: shop}}]
machines:
  - id: drill-1
    sector: shop
    mqtt:
      - topic: drill1
        format: tasmota
        signals:
          - {{name: power_w, path: ENERGY.Power}}
          - {{name: energy_kwh, path: ENERGY.Total}}
          - {{name: relay_on, path: POWER, type: bool}}
  - id: grinder-1
    sector: shop
    mqtt:
      - topic: grinder1
        format: esphome
        signals:
          - {{name: vibration_mm_s, path: vibration}}
          - {{name: motor_on, path: motor, type: bool}}
  - id: furnace-2
    sector: shop
    mqtt:
      - topic: shellyplus1pm-furnace2
        format: shelly
        signals:
          - {{name: furnace_power_w, path: "switch:0.apower"}}
          - {{name: furnace_energy_wh, path: "switch:0.aenergy.total"}}
          - {{name: relay_temp_c, path: "switch:0.temperature.tC"}}
  - id: bender-1
    sector: shop
    mqtt:
      - topic: planta/bender-1/datos
        format: json
        signals:
          - {{name: bends, path: count, type: int}}
          - {{name: oil_temp_c, path: "sensors[0].temp"}}
          - {{name: bending, path: running, type: bool}}
  - id: saw-1
    sector: shop
"""


@pytest.fixture
def make_config(influxdb: InfluxDBDatabase, mosquitto: Mosquitto) -> Callable[[], Config]:
    influxdb.create()

    def make() -> Config:
        text = CONFIG.format(
            influx=influxdb.url,
            database=influxdb.database,
            broker=mosquitto.url,
            client_id="aguante-test",
        )
        return parse_config(text, environ={})

    return make


@contextlib.contextmanager
def publisher(broker: Mosquitto) -> Iterator[Callable[..., None]]:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="board-sim")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()

    def publish(topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    try:
        yield publish
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.asynccontextmanager
async def running(config: Config, tmp_path: Path) -> AsyncIterator[Collector]:
    influx = config.influxdb
    sink = InfluxDBSink.from_config(influx)
    collector = Collector(
        config,
        sink=sink,
        quarantine_path=tmp_path / "quarantine.jsonl",
        buffer_path=tmp_path / "buffer",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await asyncio.sleep(0.5)  # connected and subscribed
        yield collector
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def rows(influxdb: InfluxDBDatabase, machine: str) -> list[dict[str, Any]]:
    return influxdb.query(f"SELECT * FROM reading WHERE machine = '{machine}' ORDER BY time")


def ms(text: str, zone: str = "America/Argentina/Buenos_Aires") -> int:
    from zoneinfo import ZoneInfo

    local = dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
    return int(local.timestamp() * 1000)


async def test_each_format_arrives_with_machine_signal_type_and_time(
    make_config: Callable[[], Config],
    influxdb: InfluxDBDatabase,
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    config = make_config()
    tasmota = {
        "Time": "2026-11-25T10:00:00",
        "ENERGY": {
            "TotalStartTime": "2026-01-01T00:00:00",
            "Total": 12.345,
            "Yesterday": 1.2,
            "Today": 0.4,
            "Power": 450,
            "Voltage": 220,
            "Current": 2.1,
        },
    }
    shelly = {
        "id": 0,
        "source": "timer",
        "output": True,
        "apower": 1834.5,
        "voltage": 229.7,
        "current": 8.1,
        "aenergy": {"total": 51234.125, "by_minute": [30.5, 30.6, 30.4], "minute_ts": 1764075600},
        "temperature": {"tC": 47.3, "tF": 117.1},
    }

    def grinder_fields() -> dict[str, Any]:
        # Two messages in one millisecond are one point in InfluxDB, their fields merged.
        wanted = ("vibration_mm_s", "motor_on")
        return {k: r[k] for r in rows(influxdb, "grinder-1") for k in wanted if r[k] is not None}

    with publisher(mosquitto) as publish:
        async with running(config, tmp_path):
            publish("tele/drill1/SENSOR", json.dumps(tasmota))
            publish("tele/drill1/STATE", json.dumps({"Time": "2026-11-25T10:00:05", "POWER": "ON"}))
            publish("grinder1/sensor/vibration/state", "4.25")
            publish("grinder1/binary_sensor/motor/state", "ON")
            publish("planta/ghost-9/valor/speed", "1")  # no such machine: counted, not stored
            publish("shellyplus1pm-furnace2/status/switch:0", json.dumps(shelly))
            publish(
                "planta/bender-1/datos",
                json.dumps({"count": 118, "sensors": [{"temp": 41.5}], "running": True}),
            )
            publish("planta/saw-1/valor/speed", "2890")
            await eventually(
                lambda: (
                    all(
                        rows(influxdb, m)
                        for m in ("drill-1", "grinder-1", "furnace-2", "bender-1", "saw-1")
                    )
                    and len(rows(influxdb, "drill-1")) == 2
                    and len(grinder_fields()) == 2
                )
            )
    drill = rows(influxdb, "drill-1")
    assert [
        (r["time"], r["power_w"], r["energy_kwh"]) for r in drill if r["power_w"] is not None
    ] == [(ms("2026-11-25T10:00:00"), 450.0, 12.345)]
    assert [(r["time"], r["relay_on"]) for r in drill if r["relay_on"] is not None] == [
        (ms("2026-11-25T10:00:05"), True)
    ]
    grinder = grinder_fields()
    assert grinder == {"vibration_mm_s": 4.25, "motor_on": True}
    (furnace,) = rows(influxdb, "furnace-2")
    assert (furnace["furnace_power_w"], furnace["furnace_energy_wh"], furnace["relay_temp_c"]) == (
        1834.5,
        51234.125,
        47.3,
    )
    (bender,) = rows(influxdb, "bender-1")
    assert (bender["bends"], bender["oil_temp_c"], bender["bending"]) == (118, 41.5, True)
    assert isinstance(bender["bends"], int) and isinstance(bender["oil_temp_c"], float)
    (saw,) = rows(influxdb, "saw-1")
    assert saw["blade_speed"] == 2890.0
    assert (saw["factory"], saw["sector"]) == ("coop", "shop")
    # The message for a machine the file does not know was counted, not stored.
    unknown = influxdb.query(
        "SELECT last(unknown_machine) AS n FROM collector "
        "WHERE topic = 'planta/ghost-9/valor/speed'"
    )
    assert unknown and unknown[0]["n"] == 1


async def test_bad_payloads_are_counted_and_the_subscription_keeps_working(
    make_config: Callable[[], Config],
    influxdb: InfluxDBDatabase,
    mosquitto: Mosquitto,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config()
    topic = "planta/bender-1/datos"
    garbage: list[bytes] = [
        b'{"count": 1, "sensors": [',  # truncated JSON
        b'{"count": "many"}',  # text where a number goes
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"[" * 5000,  # deeply nested
        b"x" * 70_000,  # oversize
    ]
    with publisher(mosquitto) as publish:
        async with running(config, tmp_path):
            for payload in garbage:
                publish(topic, payload)
            publish(topic, json.dumps({"count": 7, "sensors": [{"temp": 30.0}], "running": False}))
            await eventually(lambda: bool(rows(influxdb, "bender-1")))
            await asyncio.sleep(0.5)  # one more health report
    (stored,) = rows(influxdb, "bender-1")
    assert (stored["bends"], stored["bending"]) == (7, False)
    counts = influxdb.query(f"SELECT last(*) FROM collector WHERE topic = '{topic}'")[0]
    assert counts["last_messages"] == 5  # the oversize one is refused before parsing
    assert counts["last_oversize"] == 1
    assert counts["last_malformed"] + counts["last_invalid_utf8"] + counts["last_wrong_type"] == 4
    # Logged once for the topic, not once per bad message.
    assert caplog.text.count(f"{topic}: ") == 1


async def test_broker_restart_then_queued_messages_are_stored(
    make_config: Callable[[], Config],
    influxdb: InfluxDBDatabase,
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    config = make_config()
    async with running(config, tmp_path) as collector:
        mosquitto.stop()
        mosquitto.start()  # persistence keeps the collector's session and subscriptions
        with publisher(mosquitto) as publish:
            # Published before the collector has reconnected (its backoff is ≥ 1 s).
            for n in range(5):
                publish("planta/saw-1/valor/speed", str(1000 + n))
        await eventually(lambda: len(rows(influxdb, "saw-1")) == 5)
        source = next(s for s in collector.sources if s.kind == "mqtt")
        assert any(r.fields.get("connected") for r in source.health_records())
    assert sorted(r["blade_speed"] for r in rows(influxdb, "saw-1")) == [
        1000.0,
        1001.0,
        1002.0,
        1003.0,
        1004.0,
    ]


async def test_messages_published_while_the_collector_was_stopped_are_stored(
    make_config: Callable[[], Config],
    influxdb: InfluxDBDatabase,
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    config = make_config()
    async with running(config, tmp_path):
        pass  # the first run makes the broker keep a session for our client id
    with publisher(mosquitto) as publish:
        for n in range(20):
            publish("planta/saw-1/valor/speed", str(n))
    async with running(config, tmp_path):
        await eventually(lambda: len(rows(influxdb, "saw-1")) == 20)
    assert sorted(r["blade_speed"] for r in rows(influxdb, "saw-1")) == [
        float(n) for n in range(20)
    ]


async def test_an_offline_board_is_logged_once_and_counted(
    make_config: Callable[[], Config],
    influxdb: InfluxDBDatabase,
    mosquitto: Mosquitto,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config()
    caplog.set_level(logging.INFO)
    with publisher(mosquitto) as publish:
        async with running(config, tmp_path):
            publish("grinder1/status", "online", retain=True)
            publish("grinder1/status", "offline", retain=True)
            publish("grinder1/status", "offline", retain=True)
            await asyncio.sleep(0.8)
            publish("grinder1/sensor/vibration/state", "3.5")
            await eventually(lambda: bool(rows(influxdb, "grinder-1")))
            await asyncio.sleep(0.5)
    assert caplog.text.count("grinder-1: board offline") == 1
    assert caplog.text.count("grinder-1: board back online") == 1
    up = influxdb.query(
        "SELECT up FROM collector WHERE machine = 'grinder-1' AND source = 'mqtt' ORDER BY time"
    )
    assert [r["up"] for r in up][-1] is True
    assert False in [r["up"] for r in up]


async def test_a_broker_that_forgot_everything_is_subscribed_to_again(
    make_config: Callable[[], Config],
    influxdb: InfluxDBDatabase,
    mosquitto: Mosquitto,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Restarted without persistence, the broker has no session and no subscription of ours:
    only subscribing again on connect keeps the collector from going deaf."""
    config = make_config()
    async with running(config, tmp_path) as collector:
        source = next(s for s in collector.sources if s.kind == "mqtt")
        mosquitto.stop()
        mosquitto.persistence = False
        for stale in mosquitto.root.glob("*.db"):
            stale.unlink()
        mosquitto.start()

        def connected() -> bool:
            fields = source.health_records()[0].fields
            return fields["connected"] is True

        await asyncio.sleep(0.5)
        await eventually(connected)
        await asyncio.sleep(0.3)  # the SUBACK
        with publisher(mosquitto) as publish:
            publish("planta/saw-1/valor/speed", "1234")
        await eventually(lambda: bool(rows(influxdb, "saw-1")))
    assert rows(influxdb, "saw-1")[0]["blade_speed"] == 1234.0
    assert "the broker kept no session for aguante-test" in caplog.text
