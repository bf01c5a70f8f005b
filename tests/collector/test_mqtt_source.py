"""The MQTT source's routing, counting and time stamps, without a broker (messages handed in)."""

from __future__ import annotations

import json

from collector.config import parse_config
from collector.sources.mqtt import Delivered, MqttSource

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
