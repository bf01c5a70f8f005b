"""Sources of readings: polled (Modbus) and, later, streamed (MQTT) both yield `Reading`s.

A source is used as `async with source: async for reading in source: ...`; it never raises for a
device's trouble (timeouts, exception codes, a dead link) — it counts it in its `health` and
goes on. The registry maps a machine's config block (`modbus:`) to the code that builds sources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from collector.config import Config
from collector.schema import FieldValue

__all__ = ["SOURCES", "DeviceHealth", "Reading", "Source", "build_sources"]


@dataclass(frozen=True, slots=True)
class Reading:
    """The signals of one machine read at one instant (UTC milliseconds)."""

    machine: str
    time_ms: int
    values: Mapping[str, FieldValue]


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


class Source(Protocol):
    """What the collector runs: one task iterates one source."""

    name: str

    def health(self) -> list[DeviceHealth]: ...

    def __aiter__(self) -> AsyncIterator[Reading]: ...

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


# One line per kind of source: the machine's config block → a builder of sources.
SOURCES: dict[str, Callable[[Config], list[Source]]] = {
    "modbus": _modbus,
}


def build_sources(config: Config) -> list[Source]:
    """Every source the config describes, one per connection."""
    return [source for build in SOURCES.values() for source in build(config)]
