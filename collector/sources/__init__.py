"""Sources of readings: polled (Modbus) and streamed (MQTT) both hand on `Reading`s.

A source is used as `async with source: await source.run(consume)`: it hands its readings to
`consume` as it takes them (a poll's, or every message read in one turn of the event loop) until
it is cancelled. It never raises for a device's or a payload's trouble (timeouts, exception
codes, a dead link, a malformed message) — it counts it in its health records and goes on. The
registry maps a kind of source to the code that builds its sources from the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from collector.config import Config
from collector.schema import FieldValue

__all__ = [
    "SOURCES",
    "Consume",
    "DeviceHealth",
    "HealthRecord",
    "Reading",
    "Source",
    "Unavailable",
    "build_sources",
]


@dataclass(frozen=True, slots=True)
class Reading:
    """The signals of one machine read at one instant (UTC milliseconds).

    `ack`, when set, is called once the reading is in the buffer: a streamed source confirms
    its message to the broker only then (the buffer is in memory until it becomes durable).
    """

    machine: str
    time_ms: int
    values: Mapping[str, FieldValue]
    ack: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """One point of the `collector` measurement: about a machine, or (machine None) a source."""

    machine: str | None
    fields: Mapping[str, FieldValue]
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Signals of a machine its source knows it cannot see now (a device down, a board offline),
    since a UTC time in milliseconds: the machine's state turns `unknown` at once, not after a
    staleness timeout."""

    machine: str
    signals: frozenset[str]
    since_ms: int


@dataclass(slots=True)
class DeviceHealth:
    """Counters about one machine's device, written to the `collector` measurement."""

    machine: str
    polls: int = 0
    good_polls: int = 0
    timeouts: int = 0
    exceptions: dict[int, int] = field(default_factory=dict)
    decode_errors: int = 0
    bad_answers: int = 0  # answers that do not fit their request (a late or stray frame)
    link_errors: int = 0
    requests: int = 0
    last_latency_ms: float = 0.0
    up: bool | None = None  # None until the first poll says

    @property
    def errors(self) -> int:
        return self.timeouts + sum(self.exceptions.values()) + self.link_errors + self.bad_answers

    def record(self) -> HealthRecord:
        fields: dict[str, FieldValue] = {
            "polls": self.polls,
            "good_polls": self.good_polls,
            "requests": self.requests,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "exceptions": sum(self.exceptions.values()),
            "decode_errors": self.decode_errors,
            "bad_answers": self.bad_answers,
            "link_errors": self.link_errors,
            "latency_ms": self.last_latency_ms,
        }
        if self.up is not None:  # unknown before the first poll: no value, not false
            fields["up"] = self.up
        for code, count in sorted(self.exceptions.items()):
            fields[f"exception_{code:02d}"] = count
        return HealthRecord(self.machine, fields)


# What a source hands its readings to; the consumer calls each reading's `ack` once it keeps it.
Consume = Callable[[Sequence[Reading]], None]


class Source(Protocol):
    """What the collector runs: one task runs one source."""

    name: str
    kind: str  # "modbus", "mqtt": names the source's own health points (machine=_<kind>)

    def health_records(self) -> list[HealthRecord]: ...

    def unavailable(self) -> list[Unavailable]: ...

    async def run(self, consume: Consume) -> None:
        """Hand readings to `consume` as they are taken, until cancelled."""

    async def __aenter__(self) -> Source: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _modbus(config: Config) -> list[Source]:
    from collector.sources.modbus import modbus_sources

    return list(modbus_sources(config))


def _mqtt(config: Config) -> list[Source]:
    if not config.mqtt.subscriptions and not any(m.mqtt for m in config.machines):
        return []  # and paho, protobuf and the parsers stay out of memory (about 4 MiB)
    from collector.sources.mqtt import MqttSource

    return [MqttSource(config)]


# One line per kind of source: a builder of its sources from the config.
SOURCES: dict[str, Callable[[Config], list[Source]]] = {
    "modbus": _modbus,
    "mqtt": _mqtt,
}


def build_sources(config: Config) -> list[Source]:
    """Every source the config describes, one per connection."""
    return [source for build in SOURCES.values() for source in build(config)]
