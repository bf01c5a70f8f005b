"""The network's message format, topics, and what the network side refuses (no services)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collector.config import ConfigError, parse_config
from network.config import parse_network
from network.ingest import BadMessage, alias_of, message_points
from network.rollup import CATEGORIES, COUNTS, SECONDS, GroupHour, PlantHour
from network.share import ShareState, partition_of, topic_of

NETWORK = """
network: red-sul
broker: {url: "mqtts://red.example.org:8883"}
partitions: 4
plants:
  - {id: coop-a, processes: [turning]}
  - {id: coop-b}
"""


def _network() -> Any:
    return parse_network(NETWORK, environ={})


def _message(plant: str = "coop-a", **changes: Any) -> dict[str, Any]:
    group = GroupHour("turning", "process", machines=2)
    group.sums["planned_s"] = 7200.0
    group.lost_s["demand"] = 1800.0
    data = PlantHour(plant, None, 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000, [group])
    payload = data.payload()
    payload.update(changes)
    return payload


def _topic(plant: str = "coop-a") -> str:
    return f"aguante/network/{partition_of(plant, 4)}/{plant}/hourly"


def test_a_plant_hour_becomes_one_point_per_group() -> None:
    config = _network()
    (point,) = message_points(config, _topic(), json.dumps(_message()).encode())
    assert point.measurement == "plant_hourly"
    assert point.tags == {
        "network": "red-sul",
        "plant": alias_of("red-sul", "coop-a"),
        "group": "turning",
        "kind": "process",
    }
    assert point.fields["planned_s"] == 7200.0 and point.fields["lost_demand_s"] == 1800.0
    assert point.fields["machines"] == 2
    lost = {f"lost_{c}_s" for c in CATEGORIES}
    assert set(point.fields) == {*SECONDS, *COUNTS, "machines", "name", *lost}
    assert point.fields["name"] == ""
    named = message_points(config, _topic(), json.dumps(_message(name="Coop A")).encode())
    assert named[0].tags["plant"] == point.tags["plant"]  # one series, named or not
    assert named[0].fields["name"] == "Coop A"


@pytest.mark.parametrize(
    ("topic", "payload", "words"),
    [
        ("aguante/network/0/coop-a", _message(), "is not"),
        (_topic("coop-z"), _message("coop-z"), "not a member"),
        (_topic(), _message("coop-b"), "speaks for"),
        (_topic(), _message(v=2), "version 1"),
        (_topic(), _message(hour=1_700_000_000_001), "start of an hour"),
        (_topic(), _message(groups={}), "not a list"),
        (_topic(), _message(groups=[{"group": "a b", "kind": "process"}]), "valid name"),
        (_topic(), _message(name=""), "short line"),
        (_topic(), _message(name="Coop A\\"), "short line"),
        (_topic(), _message(name="Coop\nA"), "short line"),
    ],
)
def test_what_no_plant_sends_is_refused(topic: str, payload: dict[str, Any], words: str) -> None:
    with pytest.raises(BadMessage, match=words):
        message_points(_network(), topic, json.dumps(payload).encode())


@pytest.mark.parametrize(
    "group_change",
    [
        {"planned_s": -1},
        {"planned_s": float("inf")},
        {"produced": "12"},
        {"machines": True},
        {"lost_s": {"theft": 5}},
    ],
)
def test_numbers_are_checked(group_change: dict[str, Any]) -> None:
    payload = _message()
    payload["groups"][0].update(group_change)
    with pytest.raises(BadMessage):
        message_points(_network(), _topic(), json.dumps(payload, allow_nan=True).encode())


def test_not_json_is_refused() -> None:
    with pytest.raises(BadMessage, match="JSON"):
        message_points(_network(), _topic(), b"\xff\xfe")


def test_aliases_are_stable_and_say_nothing_of_the_id() -> None:
    assert alias_of("red-sul", "coop-a") == alias_of("red-sul", "coop-a")
    assert alias_of("red-sul", "coop-a") != alias_of("red-sul", "coop-b")
    assert alias_of("red-norte", "coop-a") != alias_of("red-sul", "coop-a")
    assert "coop" not in alias_of("red-sul", "coop-a")


def test_partitions_spread_plants_and_topics_carry_the_plant() -> None:
    counts = [0] * 8
    for number in range(800):
        counts[partition_of(f"coop-{number}", 8)] += 1
    assert min(counts) > 60  # every partition takes a share
    config = parse_config(
        "factory: coop-a\nsectors: [{id: s}]\n"
        "machines: [{id: m, sector: s, modbus: {host: h, port: 1, signals: "
        "[{name: r, table: coil, address: 0, type: bool}]}}]\n"
        "network: {url: 'mqtt://red:1883', partitions: 8}\n",
        environ={},
    )
    topic = topic_of(config.network, "coop-a")
    assert topic == f"aguante/network/{partition_of('coop-a', 8)}/coop-a/hourly"


def test_the_share_state_survives_and_a_damaged_one_costs_a_resend(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    ShareState(3_600_000, {3_600_000: "abc"}).save(path)
    assert ShareState.load(path) == ShareState(3_600_000, {3_600_000: "abc"})
    path.write_text("{not json")
    assert ShareState.load(path) == ShareState()
    assert ShareState.load(tmp_path / "none.json") == ShareState()


@pytest.mark.parametrize(
    ("network", "where"),
    [
        ("{url: 'http://red:1883'}", "network.url"),
        ("{url: 'mqtt://red:1883', topic_prefix: 'a/#'}", "network.topic_prefix"),
        ("{url: 'mqtt://red:1883', password: x}", "network.password"),
        ("{share: all}", "network.share"),
    ],
)
def test_a_plants_network_section_is_checked(network: str, where: str) -> None:
    text = (
        "factory: coop-a\nsectors: [{id: s}]\n"
        "machines: [{id: m, sector: s, modbus: {host: h, port: 1, signals: "
        "[{name: r, table: coil, address: 0, type: bool}]}}]\n"
        f"network: {network}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert where in str(caught.value)


def test_the_network_file_is_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_network(NETWORK.replace("coop-b}", "coop-a}") + "take_partitions: [9]\n", environ={})
    text = str(caught.value)
    assert "listed twice" in text or "take_partitions" in text
    with pytest.raises(ConfigError, match="secrets"):
        parse_network(NETWORK.replace('8883"}', '8883", password: x}'), environ={})
    env = {"AGUANTE_NETWORK_URL": "mqtt://other:1883"}
    assert parse_network(NETWORK, environ=env).broker.url == "mqtt://other:1883"


def test_the_example_network_file_validates() -> None:
    from network.config import load_network

    example = Path(__file__).parent.parent.parent / "examples" / "network" / "red-metalurgica.yaml"
    config = load_network(example, environ={})
    assert config.plant("cooperativa-metalurgica") is not None
    assert "printing" in config.processes


def test_the_network_dashboard_is_the_same_in_every_language_but_its_words() -> None:
    from network.view import UID, network_dashboard

    config = _network()
    boards = {lang: network_dashboard(config, lang) for lang in ("es", "pt-BR", "en")}
    queries = {
        lang: [t["query"] for p in board["panels"] for t in p["targets"]]
        for lang, board in boards.items()
    }
    assert queries["es"] == queries["pt-BR"] == queries["en"]
    titles = {lang: [p["title"] for p in board["panels"]] for lang, board in boards.items()}
    assert len({tuple(t) for t in titles.values()}) == 3  # translated, not copied
    for board in boards.values():
        assert board["uid"] == UID and board["timezone"] == config.timezone
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) == 5
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24
            assert all("$timeFilter" in t["query"] for t in panel["targets"])


def test_a_plant_on_another_partition_is_stored_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _network()
    right = partition_of("coop-b", 4)
    topic = f"aguante/network/{(right + 1) % 4}/coop-b/hourly"
    with caplog.at_level("WARNING", logger="network.ingest"):
        for _ in range(3):
            points = message_points(config, topic, json.dumps(_message("coop-b")).encode())
            assert len(points) == 1
    said = [r for r in caplog.records if "partition" in r.getMessage()]
    assert len(said) == 1 and "coop-b" in said[0].getMessage()
