"""MQTT topic layouts, patterns with placeholders and wildcards, and overlap detection."""

from __future__ import annotations

import pytest

from collector.topics import TopicPattern, filters_overlap, to_filter, topic_layout


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("tele/+/SENSOR", "tele/drill1/SENSOR", True),
        ("tele/drill1/SENSOR", "tele/drill2/SENSOR", False),
        ("a/#", "a", True),  # '#' matches its parent level too
        ("a/#", "a/b/c", True),
        ("a/+", "a/b/c", False),
        ("#", "x/y", True),
        ("a/b", "a/b/c", False),
        ("+/+/state", "node/sensor/+/state", False),
    ],
)
def test_filters_overlap(first: str, second: str, overlap: bool) -> None:
    assert filters_overlap(first, second) is overlap
    assert filters_overlap(second, first) is overlap


def test_placeholders_become_wildcards_and_are_read_back() -> None:
    pattern = TopicPattern.compile("planta/{machine}/valor/{signal}")
    assert pattern.filter == "planta/+/valor/+"
    assert pattern.match("planta/saw-1/valor/speed") == {"machine": "saw-1", "signal": "speed"}
    assert pattern.match("planta/saw-1/valor/speed/extra") is None
    assert pattern.match("planta/saw-1/valor") is None


def test_wildcards_match_like_a_broker() -> None:
    assert TopicPattern.compile("a/#").match("a") == {}
    assert TopicPattern.compile("a/#").match("a/b/c") == {}
    assert TopicPattern.compile("a/#").match("ab") is None
    assert TopicPattern.compile("a/+/c").match("a/b/c") == {}
    assert TopicPattern.compile("a.b/c").match("aXb/c") is None  # dots are not regex


def test_layouts_of_each_format() -> None:
    assert topic_layout("tasmota", "drill1") == {
        "sensor": "tele/drill1/SENSOR",
        "state": "tele/drill1/STATE",
        "availability": "tele/drill1/LWT",
    }
    assert to_filter(topic_layout("esphome", "grinder1")["sensor"]) == "grinder1/sensor/+/state"
    assert topic_layout("shelly", "sh1")["status"] == "sh1/status/{key}"
    node = topic_layout("sparkplug", "metalworks/paint-line")
    assert node["NDATA"] == "spBv1.0/metalworks/NDATA/paint-line"
    device = topic_layout("sparkplug", "metalworks/paint-line/booth-1")
    assert device["DDATA"] == "spBv1.0/metalworks/DDATA/paint-line/booth-1"
    assert device["NDEATH"] == "spBv1.0/metalworks/NDEATH/paint-line"  # ends its devices too
