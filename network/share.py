"""The plant side: `aguante share CONFIG` sends the plant's hourly rollups to its network's
broker, as the plant's config allows, and catches up after the link was down for days.

Why a second sender of the plant's own and not Mosquitto's bridge: the plant's InfluxDB already
keeps every hour for good, so the sender needs no queue of its own — it remembers the last hour
the network's broker acknowledged (`network.state_file`) and, each round, computes again and sends
every hour since then, plus the last `revise_hours` whose content changed (a stop reason given
the next morning). A bridge would queue messages in the plant broker's memory and persistence
file, bounded by its queue limit, and lose the oldest past it; here an outage of any length
costs nothing but a longer catch-up. The network stores each (plant, group, hour) at one time
stamp, so a message sent twice overwrites itself: nothing doubles.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import time
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from collector.config import Config, NetworkSharing
from collector.influxql import InfluxQL
from collector.mqtt_publish import BrokerLink, publish_all, tls_context
from network.rollup import HOUR_MS, GroupHour, PlantHour, plant_hours

__all__ = [
    "CHUNK",
    "GRACE_MS",
    "MqttPublisher",
    "Publisher",
    "RoundResult",
    "ShareState",
    "Sharer",
    "partition_of",
    "remove_state",
    "topic_of",
]

log = logging.getLogger(__name__)

GRACE_MS = 10 * 60_000  # an hour is shared once it ended this long ago (its sums are written)
CHUNK = 500  # messages published (and acknowledged) at a time


def partition_of(plant: str, partitions: int) -> int:
    """The partition a plant's topics live in: the same on every machine and every run."""
    digest = hashlib.sha256(plant.encode()).digest()
    return int.from_bytes(digest[:4], "big") % partitions


def topic_of(sharing: NetworkSharing, plant: str) -> str:
    """`<prefix>/<partition>/<plant>/hourly`: the broker's ACL lets a plant write only below
    its own id; a network side takes its partitions with one subscription each."""
    return f"{sharing.topic_prefix}/{partition_of(plant, sharing.partitions)}/{plant}/hourly"


class Publisher(Protocol):
    """Sends messages and returns once the broker took every one; `PublishError` otherwise."""

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None: ...


class MqttPublisher:
    """To the network's broker with the plant's own credentials (AGUANTE_NETWORK_USERNAME /
    AGUANTE_NETWORK_PASSWORD, the user name defaulting to the plant's id)."""

    def __init__(self, config: Config, environ: Mapping[str, str]) -> None:
        sharing = config.network
        if sharing.url is None:
            raise ValueError("network.url is not set: this plant shares nothing")
        plant = sharing.plant or config.factory
        self.timeout = sharing.timeout
        self.link = BrokerLink(
            sharing.url,
            username=environ.get("AGUANTE_NETWORK_USERNAME") or sharing.username or plant,
            password=environ.get("AGUANTE_NETWORK_PASSWORD") or sharing.password,
            tls=sharing.tls,
            credentials_hint="AGUANTE_NETWORK_USERNAME and AGUANTE_NETWORK_PASSWORD",
            mqtt5=True,  # a refused publish must say so: the hours would be marked sent
        )
        self.context = tls_context(sharing.tls) if self.link.uses_tls else None  # ValueError

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        publish_all(self.link, messages, timeout=self.timeout, context=self.context)


@dataclass
class ShareState:
    """What the network already has: every hour before `cursor_ms` was acknowledged, and the
    digest of each recent hour as sent (to send it again only when it changed)."""

    cursor_ms: int | None = None
    digests: dict[int, str] = field(default_factory=dict)
    # The groups each recent hour was sent with: a group gone since (a process renamed, a
    # machine moved) is sent again with zeros, or the network would count its hours twice.
    groups: dict[int, list[list[str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ShareState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                data.get("cursor_ms"),
                {int(k): str(v) for k, v in data["digests"].items()},
                {int(k): [list(g) for g in v] for k, v in data.get("groups", {}).items()},
            )
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A damaged file costs a resend of network.backfill_days: start again from there.
            log.warning("%s cannot be read (%s); sending the last days again", path, exc)
            return cls()

    def save(self, path: Path) -> None:
        data = {
            "cursor_ms": self.cursor_ms,
            "digests": {str(k): v for k, v in self.digests.items()},
            "groups": {str(k): v for k, v in self.groups.items()},
        }
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)


@dataclass(frozen=True)
class RoundResult:
    """One round: hours looked at, hours sent (new or changed), up to which hour."""

    looked_at: int
    sent: int
    up_to_ms: int | None
    skipped: str | None = None  # why nothing was looked at


class Sharer:
    """Computes and sends what is due; synchronous (the service runs it in a worker thread)."""

    def __init__(
        self,
        config: Config,
        db: InfluxQL,
        publisher: Publisher,
        state_path: Path,
        *,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.config = config
        self.sharing = config.network
        self.plant = self.sharing.plant or config.factory
        self.db = db
        self.publisher = publisher
        self.state_path = state_path
        self.state = ShareState.load(state_path)
        self.now_ms = now_ms

    def round(self) -> RoundResult:
        """Send every hour the network lacks or has an older version of. Raises
        PublishError (nothing more is marked sent) or QueryError."""
        end = self.now_ms() - GRACE_MS
        end -= end % HOUR_MS  # hours before this one are over and summed
        if self.sharing.share == "none":
            # A pause: the hours of the pause stay home, also when sharing starts again.
            if self.state.cursor_ms is not None and self.state.cursor_ms < end:
                self.state.cursor_ms = end
                self.state.save(self.state_path)
            return RoundResult(0, 0, self.state.cursor_ms, skipped="share: none")
        revise = self.sharing.revise_hours * HOUR_MS
        start = end - revise
        if self.state.cursor_ms is not None:
            start = min(start, self.state.cursor_ms)
        else:  # nothing known of what the network has: the last days again, to be sure
            start = min(start, end - self.sharing.backfill_days * 24 * HOUR_MS)
        if self.sharing.since is not None:
            start = max(start, _local_midnight_ms(self.sharing.since, self.config.timezone))
        if start >= end:
            return RoundResult(0, 0, self.state.cursor_ms)
        hours = plant_hours(self.db, self.config, start, end)
        for hour in hours.values():
            present = {(g.group, g.kind) for g in hour.groups}
            for group, kind in self.state.groups.get(hour.hour_ms, []):
                if (group, kind) not in present:
                    hour.groups.append(GroupHour(group, kind))  # zeros over what was sent
        due = [h for h in hours.values() if self.state.digests.get(h.hour_ms) != h.digest()]
        topic = topic_of(self.sharing, self.plant)
        if not due:
            # Nothing to send: log in all the same, so a refused password shows at once and
            # not on the day there is something to share.
            self.publisher.publish([])
        for first in range(0, len(due), CHUNK):
            chunk: list[PlantHour] = due[first : first + CHUNK]
            self.publisher.publish([(topic, hour.body()) for hour in chunk])
            for hour in chunk:
                self.state.digests[hour.hour_ms] = hour.digest()
                self.state.groups[hour.hour_ms] = sorted([g.group, g.kind] for g in hour.groups)
            # Acknowledged up to here: a failure after this chunk resumes after it.
            self.state.cursor_ms = max(self.state.cursor_ms or start, chunk[-1].hour_ms)
            self.state.save(self.state_path)
        self.state.cursor_ms = end
        keep_from = end - revise
        self.state.digests = {h: d for h, d in self.state.digests.items() if h >= keep_from}
        self.state.groups = {h: g for h, g in self.state.groups.items() if h >= keep_from}
        self.state.save(self.state_path)
        return RoundResult(len(hours), len(due), end)


def _local_midnight_ms(day: dt.date, zone: str) -> int:
    moment = dt.datetime(day.year, day.month, day.day, tzinfo=zoneinfo.ZoneInfo(zone))
    return int(moment.timestamp() * 1000)


def remove_state(path: Path) -> None:
    """Forget what was sent (the next round sends the revision window again)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
