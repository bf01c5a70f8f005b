"""MQTT topics: where each payload format publishes, placeholders, wildcards and overlaps.

Pure functions and data, shared by the config check (overlapping subscriptions are refused at
load time) and the MQTT source (which routes each message to its subscription).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "AVAILABILITY_KINDS",
    "TopicPattern",
    "filters_overlap",
    "to_filter",
    "topic_layout",
]

# Kinds of topic that say whether a board is online; they carry no values, so several
# subscriptions may share them (a Sparkplug node's death ends its devices too).
AVAILABILITY_KINDS = frozenset({"availability", "NDEATH", "DDEATH"})

_PLACEHOLDER = re.compile(r"^\{(machine|signal|key)\}$")


def topic_layout(payload_format: str, base: str) -> dict[str, str]:
    """Kind of topic → topic template for a subscription's `topic` (its base) in a format.

    Templates may hold MQTT wildcards and whole-level placeholders: {machine}, {signal} (from
    the config) and {key} (a level the format reads: an ESPHome sensor id, a Shelly component).
    """
    if payload_format in ("plain", "json"):
        return {"value": base}
    if payload_format == "tasmota":
        return {
            "sensor": f"tele/{base}/SENSOR",
            "state": f"tele/{base}/STATE",
            "availability": f"tele/{base}/LWT",
        }
    if payload_format == "esphome":
        return {
            "sensor": f"{base}/sensor/{{key}}/state",
            "binary_sensor": f"{base}/binary_sensor/{{key}}/state",
            "availability": f"{base}/status",
        }
    if payload_format == "shelly":
        return {"status": f"{base}/status/{{key}}", "availability": f"{base}/online"}
    if payload_format == "sparkplug":
        group, node, *device = base.split("/")
        if not device:
            return {
                kind: f"spBv1.0/{group}/{kind}/{node}" for kind in ("NBIRTH", "NDATA", "NDEATH")
            }
        layout = {
            kind: f"spBv1.0/{group}/{kind}/{node}/{device[0]}"
            for kind in ("DBIRTH", "DDATA", "DDEATH")
        }
        layout["NDEATH"] = f"spBv1.0/{group}/NDEATH/{node}"
        return layout
    raise ValueError(f"unknown payload format {payload_format!r}")


def to_filter(template: str) -> str:
    """The MQTT subscription filter of a template: each placeholder level becomes '+'."""
    return "/".join("+" if _PLACEHOLDER.match(level) else level for level in template.split("/"))


def filters_overlap(first: str, second: str) -> bool:
    """Whether some topic matches both MQTT filters."""
    a, b = first.split("/"), second.split("/")
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True


@dataclass(frozen=True)
class TopicPattern:
    """A template compiled for matching topics and reading its placeholders."""

    template: str
    filter: str
    _regex: re.Pattern[str]

    @classmethod
    def compile(cls, template: str) -> TopicPattern:
        parts = []
        levels = template.split("/")
        for level in levels:
            placeholder = _PLACEHOLDER.match(level)
            if placeholder:
                parts.append(f"(?P<{placeholder.group(1)}>[^/]+)")
            elif level == "+":
                parts.append("[^/]+")
            elif level == "#":
                # '#' also matches its parent level: a/# matches a.
                parts[-1:] = [parts[-1] + "(?:/.*)?"] if parts else [".*"]
                continue
            else:
                parts.append(re.escape(level))
        return cls(template, to_filter(template), re.compile("/".join(parts)))

    def match(self, topic: str) -> dict[str, str] | None:
        """The placeholders' values if the topic matches, else None."""
        found = self._regex.fullmatch(topic)
        return None if found is None else found.groupdict()
