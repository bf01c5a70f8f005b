"""The MQTT source's routing, counting and time stamps, without a broker (messages handed in)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from collector.config import parse_config
from collector.sources import Unavailable
from collector.sources.mqtt import Delivered, MqttSource
from collector.sources.sparkplug import DATATYPES, SparkplugMetric, encode_payload

CONFIG = """
factory: coop
timezone: America/Argentina/Buenos_Aires
mqtt:
  max_payload: 200
  subscriptions:
    - topic: planta/{machine}/valor/{signal}
      format: plain
      signals: [{name: blade_speed, path: speed}]
sectors: [{id: shop}]
machines:
  - id: bender-1
    sector: shop
    mqtt:
      - topic: planta/bender-1/datos
        format: json
        signals:
          - {name: bends, path: count, type: int}
          - {name: oil_temp_c, path: "sensors[0].temp"}
  - id: saw-1
    sector: shop
"""
NOW = 1_764_075_600_000


def source() -> MqttSource:
    return MqttSource(parse_config(CONFIG, environ={}))


def counts(mqtt: MqttSource, topic: str) -> dict[str, object]:
    return next(dict(r.fields) for r in mqtt.health_records() if r.tags.get("topic") == topic)


def test_exact_and_placeholder_topics_are_routed_to_their_machine() -> None:
    mqtt = source()
    payload = json.dumps({"count": 3, "sensors": [{"temp": 40.5}]}).encode()
    (bender,) = mqtt.handle(Delivered("planta/bender-1/datos", payload, NOW))
    assert (bender.machine, dict(bender.values), bender.time_ms) == (
        "bender-1",
        {"bends": 3, "oil_temp_c": 40.5},
        NOW,
    )
    (saw,) = mqtt.handle(Delivered("planta/saw-1/valor/speed", b"2890", NOW))
    assert (saw.machine, dict(saw.values)) == ("saw-1", {"blade_speed": 2890.0})


def test_unknown_machine_oversize_and_malformed_are_counted_per_topic() -> None:
    mqtt = source()
    assert mqtt.handle(Delivered("planta/ghost/valor/speed", b"1", NOW)) == []
    assert mqtt.handle(Delivered("planta/bender-1/datos", b"x" * 201, NOW)) == []
    assert mqtt.handle(Delivered("planta/bender-1/datos", b'{"count": ', NOW)) == []
    assert counts(mqtt, "planta/ghost/valor/speed") == {"unknown_machine": 1}
    assert counts(mqtt, "planta/bender-1/datos") == {"oversize": 1, "messages": 1, "malformed": 1}


def test_messages_without_a_time_of_their_own_never_share_a_millisecond() -> None:
    mqtt = source()
    stamps = [
        mqtt.handle(Delivered("planta/saw-1/valor/speed", str(n).encode(), NOW))[0].time_ms
        for n in range(5)
    ]
    assert stamps == [NOW, NOW + 1, NOW + 2, NOW + 3, NOW + 4]
    # Another machine keeps its own clock.
    (other,) = mqtt.handle(Delivered("planta/bender-1/datos", b'{"count": 1}', NOW))
    assert other.time_ms == NOW


def test_different_fields_of_one_instant_share_a_point() -> None:
    mqtt = source()
    (first,) = mqtt.handle(Delivered("planta/saw-1/valor/speed", b"10", NOW))
    (second,) = mqtt.handle(Delivered("planta/bender-1/datos", b'{"count": 2}', NOW))
    assert (first.time_ms, second.time_ms) == (NOW, NOW)
    mqtt = MqttSource(
        parse_config(
            CONFIG.replace(
                "signals: [{name: blade_speed, path: speed}]",
                "signals: [{name: blade_speed, path: speed}, {name: feed, path: feed}]",
            ),
            environ={},
        )
    )
    (speed,) = mqtt.handle(Delivered("planta/saw-1/valor/speed", b"10", NOW))
    (feed,) = mqtt.handle(Delivered("planta/saw-1/valor/feed", b"3", NOW))
    assert speed.time_ms == feed.time_ms == NOW  # two fields, one point: nothing to move


SPARKPLUG = """
factory: coop
mqtt:
  subscriptions:
    - topic: metalworks/{machine}
      format: sparkplug
      signals: [{name: line_speed, path: Conveyor/Speed}]
sectors: [{id: shop}]
machines: [{id: line-a, sector: shop}, {id: line-b, sector: shop}]
"""


def test_each_sparkplug_node_under_a_placeholder_is_asked_for_its_own_rebirth() -> None:
    mqtt = MqttSource(parse_config(SPARKPLUG, environ={}))
    by_alias = encode_payload(
        [SparkplugMetric(alias=7, datatype=DATATYPES["Double"], value=1.5)], timestamp=NOW
    )
    for node in ("line-a", "line-b", "line-a"):
        assert mqtt.handle(Delivered(f"spBv1.0/metalworks/NDATA/{node}", by_alias, NOW)) == []
    assert counts(mqtt, "spBv1.0/metalworks/NDATA/line-a") == {
        "messages": 2,
        "unknown_alias": 2,
        "rebirth_requests": 1,  # the second within REBIRTH_EVERY is not asked again
    }
    assert counts(mqtt, "spBv1.0/metalworks/NDATA/line-b")["rebirth_requests"] == 1
    # After its birth, a node's data by alias is read.
    birth = encode_payload(
        [SparkplugMetric(name="Conveyor/Speed", alias=7, datatype=DATATYPES["Double"], value=1.0)],
        timestamp=NOW,
    )
    mqtt.handle(Delivered("spBv1.0/metalworks/NBIRTH/line-a", birth, NOW))
    (reading,) = mqtt.handle(Delivered("spBv1.0/metalworks/NDATA/line-a", by_alias, NOW + 5))
    assert (reading.machine, dict(reading.values)) == ("line-a", {"line_speed": 1.5})


BOARDS = """
factory: coop
timezone: UTC
mqtt:
  url: mqtt://127.0.0.1:{port}
  subscriptions:
    - topic: planta/{{machine}}/valor/{{signal}}
      format: plain
      signals: [{{name: blade_speed, path: speed}}, {{name: feed, path: feed}}]
    - topic: metalworks/{{machine}}
      format: sparkplug
      signals: [{{name: line_speed, path: Conveyor/Speed}}]
sectors: [{{id: shop}}]
machines:
  - id: drill-1
    sector: shop
    mqtt:
      - topic: drill1
        format: tasmota
        signals:
          - {{name: power_w, path: ENERGY.Power}}
          - {{name: relay_on, path: POWER, type: bool}}
      - topic: drill1-vib
        format: esphome
        signals: [{{name: vibration_mm_s, path: vibration}}]
  - id: saw-1
    sector: shop
  - id: line-a
    sector: shop
  - id: press-1
    sector: shop
    modbus:
      host: 127.0.0.1
      port: 502
      signals: [{{name: strokes, table: holding, address: 0, type: uint16}}]
"""


def boards(port: int = 1883) -> MqttSource:
    return MqttSource(parse_config(BOARDS.format(port=port), environ={}))


def test_an_offline_board_makes_its_own_signals_unavailable_until_it_is_back() -> None:
    mqtt = boards()
    assert mqtt.unavailable() == []
    assert mqtt.handle(Delivered("tele/drill1/LWT", b"Offline", NOW)) == []
    mqtt.handle(Delivered("tele/drill1/LWT", b"Offline", NOW + 50))  # still since the first
    assert mqtt.unavailable() == [Unavailable("drill-1", frozenset({"power_w", "relay_on"}), NOW)]
    # The machine's other board is offline too: one entry per board, each with its signals.
    mqtt.handle(Delivered("drill1-vib/status", b"offline", NOW + 100))
    assert mqtt.unavailable() == [
        Unavailable("drill-1", frozenset({"power_w", "relay_on"}), NOW),
        Unavailable("drill-1", frozenset({"vibration_mm_s"}), NOW + 100),
    ]
    mqtt.handle(Delivered("tele/drill1/LWT", b"Online", NOW + 200))
    # Data from a board also says it is back.
    mqtt.handle(Delivered("drill1-vib/sensor/vibration/state", b"2.5", NOW + 300))
    assert mqtt.unavailable() == []


def test_a_sparkplug_death_under_a_placeholder_names_the_machine_of_its_topic() -> None:
    mqtt = boards()
    mqtt.handle(Delivered("spBv1.0/metalworks/NDEATH/line-a", encode_payload([]), NOW))
    assert mqtt.unavailable() == [Unavailable("line-a", frozenset({"line_speed"}), NOW)]
    birth = encode_payload(
        [SparkplugMetric(name="Conveyor/Speed", datatype=DATATYPES["Double"], value=1.0)],
        timestamp=NOW,
    )
    mqtt.handle(Delivered("spBv1.0/metalworks/NBIRTH/line-a", birth, NOW + 10))
    assert mqtt.unavailable() == []


class PahoStandIn:
    """What the source's paho callbacks touch of their client."""

    def subscribe(self, topics: list[tuple[str, int]]) -> tuple[int, int]:
        self.subscribed = topics
        return 0, 1  # paho's (result, message id)

    def socket(self) -> None:
        return None


def test_a_lost_broker_link_makes_every_mqtt_board_unavailable_since_it_was_lost() -> None:
    mqtt = boards()
    client: Any = PahoStandIn()
    flags = paho.ConnectFlags(session_present=False)
    mqtt._on_connect(client, None, flags, ReasonCode(PacketTypes.CONNACK, "Success"), None)
    # Machines under a {machine} placeholder are known by their messages.
    mqtt.handle(Delivered("planta/saw-1/valor/speed", b"10", NOW))
    mqtt.handle(Delivered("tele/drill1/LWT", b"Offline", NOW))
    assert [u.machine for u in mqtt.unavailable()] == ["drill-1"]
    before = time.time_ns() // 1_000_000
    lost = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    mqtt._on_disconnect(client, None, flags, lost, None)
    after = time.time_ns() // 1_000_000
    found = mqtt.unavailable()
    assert [(u.machine, u.signals) for u in found] == [
        ("drill-1", {"power_w", "relay_on"}),
        ("drill-1", {"vibration_mm_s"}),
        ("saw-1", {"blade_speed", "feed"}),
    ]
    assert found[0].since_ms == NOW  # offline before the link was lost: since then
    assert all(before <= u.since_ms <= after for u in found[1:])
    # Reconnected: only the board that said it is offline stays unavailable.
    mqtt._on_connect(client, None, flags, ReasonCode(PacketTypes.CONNACK, "Success"), None)
    assert [(u.machine, u.since_ms) for u in mqtt.unavailable()] == [("drill-1", NOW)]


async def test_a_broker_never_reached_makes_every_configured_board_unavailable() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = time.time_ns() // 1_000_000
    async with boards(port) as mqtt, asyncio.timeout(10):
        while not mqtt.health_records()[0].fields["connect_failures"]:  # noqa: ASYNC110 - no event
            await asyncio.sleep(0.01)
        found = mqtt.unavailable()
    assert [(u.machine, u.signals) for u in found] == [
        ("drill-1", {"power_w", "relay_on"}),
        ("drill-1", {"vibration_mm_s"}),
    ]
    assert all(before <= u.since_ms <= time.time_ns() // 1_000_000 for u in found)
