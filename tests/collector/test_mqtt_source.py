"""The MQTT source's routing, counting and time stamps, without a broker (messages handed in)."""

from __future__ import annotations

import json

from collector.config import parse_config
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
