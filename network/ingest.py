"""The network side: `aguante network run NETWORK.yaml` takes the plants' hourly messages from the
network's broker and stores them in the network's InfluxDB, one point per (plant, group, hour),
acknowledging each message only once InfluxDB has stored it.

The broker keeps this service's session (QoS 1, a fixed client id, no clean session), so what the
plants send while the service or InfluxDB is down waits at the broker; a message stored twice
overwrites itself (same series, same time). A message that is not what a plant sends — unknown
plant, another plant's id in the payload, a malformed body — is counted, logged once per plant,
acknowledged and dropped: it can never be stored, and must not block the ones after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import InfluxDBConfig
from collector.lineprotocol import InvalidPointError, encode_point
from collector.mqtt_publish import REFUSED_FOR_GOOD, tls_context
from collector.schema import Point
from collector.sinks import RejectedWriteError, WriteError
from collector.sinks.influxdb import InfluxDBSink
from network.config import NetworkConfig
from network.rollup import CATEGORIES, COUNTS, HOUR_MS, SECONDS
from network.share import partition_of

__all__ = [
    "MEASUREMENT",
    "BadMessage",
    "IngestStats",
    "Ingester",
    "alias_of",
    "message_points",
]

log = logging.getLogger(__name__)

MEASUREMENT = "plant_hourly"
BATCH = 1000  # messages written at once, at most
# Messages taken from the broker and not yet stored, at most: past it, paho's thread waits
# (reading nothing more from the socket), so a catch-up of many plants stays at the broker
# instead of in this process's memory. Brokers do not all honour an in-flight limit.
MAX_BACKLOG = 5000
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_KINDS = ("process", "sector", "machine")
_WRONG_PARTITION: set[str] = set()  # plants already said to publish on another partition


class BadMessage(ValueError):
    """A message no plant of this network sends: why, in a few words."""


def alias_of(network: str, plant: str, key: str = "") -> str:
    """The key a plant's points are stored under, and the name it is shown by when it chose
    not to be named: stable, and not its id. With `key` (AGUANTE_NETWORK_ALIAS_KEY, known to
    the network service only) nobody who knows the plants' ids can work the aliases out."""
    secret = (key or network).encode()
    return "plant-" + hmac.new(secret, plant.encode(), hashlib.sha256).hexdigest()[:8]


def message_points(
    config: NetworkConfig, topic: str, body: bytes, *, alias_key: str = ""
) -> list[Point]:
    """The points of one plant-hour message; BadMessage when it is not one. Every point of a
    plant is stored under its alias (a name it chose is a field, `name`, "" when none): a
    plant that starts or stops being named, or renames itself, keeps one series per group, and
    no plant can write over another by taking its name."""
    parts = topic.split("/")
    prefix = config.topic_prefix.split("/")
    if len(parts) != len(prefix) + 3 or parts[: len(prefix)] != prefix or parts[-1] != "hourly":
        raise BadMessage(f"topic {topic!r} is not {config.topic_prefix}/<partition>/<plant>/hourly")
    plant_id = parts[-2]
    if config.plant(plant_id) is None:
        raise BadMessage(f"plant {plant_id!r} is not a member of {config.network}")
    partition = parts[-3]
    expected = partition_of(plant_id, config.partitions)
    if partition != str(expected) and plant_id not in _WRONG_PARTITION:
        # Stored all the same (it arrived, and was acknowledged to the plant), but said once:
        # with take_partitions, the plant's next messages may go where no service listens.
        _WRONG_PARTITION.add(plant_id)
        log.warning(
            "%s: partition %s, not %d: the plant's network.partitions differs from the "
            "network's (%d)",
            plant_id,
            partition,
            expected,
            config.partitions,
        )
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadMessage("the body is not JSON") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise BadMessage("not a version 1 plant-hour message")
    if data.get("plant") != plant_id:
        raise BadMessage(f"the body speaks for {data.get('plant')!r}, the topic for {plant_id!r}")
    hour = data.get("hour")
    if not isinstance(hour, int) or isinstance(hour, bool) or hour % HOUR_MS or hour < 0:
        raise BadMessage("hour is not the start of an hour in UTC milliseconds")
    name = data.get("name")
    if name is not None and (
        not isinstance(name, str)
        or not 0 < len(name) <= 100
        or not name.isprintable()
        or "\\" in name
    ):
        raise BadMessage("name is not a short line of text")
    shown = alias_of(config.network, plant_id, alias_key)
    groups = data.get("groups")
    if not isinstance(groups, list):
        raise BadMessage("groups is not a list")
    points = []
    for group in groups:
        points.append(_group_point(config, shown, name or "", hour, group))
    return points


def _group_point(
    config: NetworkConfig, plant: str, plant_name: str, hour: int, group: Any
) -> Point:
    if not isinstance(group, dict):
        raise BadMessage("a group is not a mapping")
    name, kind = group.get("group"), group.get("kind")
    if not isinstance(name, str) or not _NAME.match(name) or kind not in _KINDS:
        raise BadMessage("a group has no valid name or kind")
    fields: dict[str, float | int | str] = {"name": plant_name}
    machines = group.get("machines")
    if not isinstance(machines, int) or isinstance(machines, bool) or machines < 0:
        raise BadMessage("machines is not a count")
    fields["machines"] = machines
    for key in SECONDS + COUNTS:
        fields[key] = _number(group.get(key), key)
    lost = group.get("lost_s")
    if not isinstance(lost, dict) or set(lost) - set(CATEGORIES):
        raise BadMessage("lost_s is not a mapping of reason categories")
    for category in CATEGORIES:
        fields[f"lost_{category}_s"] = _number(lost.get(category, 0), f"lost_s.{category}")
    tags = {"network": config.network, "plant": plant, "group": name, "kind": str(kind)}
    return Point(MEASUREMENT, tags, fields, hour)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadMessage(f"{what} is not a number")
    number = float(value)
    if not math.isfinite(number) or number < 0 or number > 1e12:
        raise BadMessage(f"{what} is not a count or a number of seconds")
    return number


@dataclass
class IngestStats:
    """What the service did since it started."""

    received: int = 0
    stored: int = 0  # messages
    points: int = 0
    bad: int = 0
    retries: int = 0
    largest_backlog: int = 0  # messages received and not yet stored, at the most
    bad_by_plant: dict[str, int] = field(default_factory=dict)


@dataclass
class _Message:
    topic: str
    body: bytes
    ack: Callable[[], None]


class Ingester:
    """Subscribes to the plants' topics (this service's partitions), stores, acknowledges."""

    def __init__(
        self,
        config: NetworkConfig,
        environ: Mapping[str, str],
        *,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.config = config
        self.stats = IngestStats()
        self._environ = environ
        self._retry = (retry_initial, retry_max)
        self._queue: asyncio.Queue[_Message] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._generation = 0
        self._connected = asyncio.Event()
        self._logged_bad: set[str] = set()
        self._room = threading.Semaphore(MAX_BACKLOG)
        self._stopping = False
        self._stop: asyncio.Event | None = None
        self.refused: str | None = None  # why the broker will not take this service, for good
        self._alias_key = environ.get("AGUANTE_NETWORK_ALIAS_KEY", "")

    @property
    def topics(self) -> list[str]:
        prefix = self.config.topic_prefix
        partitions = self.config.take_partitions
        if partitions is None:
            return [f"{prefix}/+/+/hourly"]
        return [f"{prefix}/{number}/+/hourly" for number in partitions]

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: take, store, acknowledge."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._stop = stop
        client = self._make_client()
        self._client = client
        broker = self.config.broker
        host, port = _host_port(broker.url)
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        try:
            async with InfluxDBSink.from_config(self._influx()) as sink:
                while not stop.is_set():
                    batch = await self._next_batch(stop)
                    if batch:
                        await self._store(sink, batch, stop)
        finally:
            self._stopping = True  # paho's thread stops waiting for room
            client.disconnect()
            client.loop_stop()
            self._client = None

    async def subscribed(self) -> None:
        """Until the broker accepted the subscriptions (wrap it in asyncio.timeout)."""
        await self._connected.wait()

    def _influx(self) -> InfluxDBConfig:
        return self.config.influxdb

    def _make_client(self) -> paho.Client:
        broker = self.config.broker
        # One fixed id per service: the broker keeps what this service's subscriptions match
        # while it is away. Several services sharing the partitions each set their own.
        client_id = broker.client_id or f"aguante-network-{self.config.network}"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
            manual_ack=True,
        )
        username = self._environ.get("AGUANTE_NETWORK_USERNAME") or broker.username
        password = self._environ.get("AGUANTE_NETWORK_PASSWORD") or broker.password
        if username:
            client.username_pw_set(username, password)
        if broker.url.startswith("mqtts://") or broker.tls is not None:
            client.tls_set_context(tls_context(broker.tls))
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    # -- paho's thread -----------------------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if reason.value in REFUSED_FOR_GOOD:  # credentials: no retry will do better
                self.refused = f"{self.config.broker.url} refused the network service: {reason}"
                log.error("%s (check AGUANTE_NETWORK_USERNAME and _PASSWORD)", self.refused)
                loop, stop = self._loop, self._stop
                if loop is not None and stop is not None:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(stop.set)
                return
            log.warning("%s refused the network service: %s", self.config.broker.url, reason)
            return
        self._generation += 1
        # Again after every reconnect, whatever the broker kept of the session.
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        refused = [t for t, c in zip(self.topics, codes, strict=False) if c.is_failure]
        if refused:
            log.warning("the broker refused the subscriptions %s", ", ".join(refused))
        log.info("network %s: subscribed to %s", self.config.network, ", ".join(self.topics))
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._connected.set)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("lost the network broker (%s); reconnecting", reason)

    def _on_message(self, client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        generation, mid, qos = self._generation, message.mid, message.qos

        def ack() -> None:
            # A message id belongs to one connection: after a reconnect the broker sends the
            # message again, and an old id could confirm another one.
            if qos > 0 and generation == self._generation:
                client.ack(mid, qos)

        # Wait for room (paho's thread only): the broker keeps what this process cannot hold.
        while not self._room.acquire(timeout=1.0):
            if self._stopping:
                return  # not acknowledged: the broker sends it again at the next start
        item = _Message(message.topic, bytes(message.payload), ack)
        loop, queue = self._loop, self._queue
        if loop is not None and queue is not None:
            with contextlib.suppress(RuntimeError):  # the service is stopping
                loop.call_soon_threadsafe(queue.put_nowait, item)

    # -- the service's loop --------------------------------------------------------------------

    async def _next_batch(self, stop: asyncio.Event) -> list[_Message]:
        queue = self._queue
        assert queue is not None
        batch: list[_Message] = []
        getter = asyncio.ensure_future(queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
        if getter not in done or getter.cancelled():
            return batch
        batch.append(getter.result())
        self.stats.largest_backlog = max(self.stats.largest_backlog, queue.qsize() + 1)
        # What has arrived, and no more waiting: the broker sends only so many unacknowledged
        # messages (Mosquitto: max_inflight_messages, 20 by default), so waiting for more would
        # only wait for the acknowledgements this batch is about to give.
        while len(batch) < BATCH and not queue.empty():
            batch.append(queue.get_nowait())
        return batch

    async def _store(self, sink: InfluxDBSink, batch: list[_Message], stop: asyncio.Event) -> None:
        lines: list[str] = []
        for message in batch:
            self.stats.received += 1
            try:
                points = message_points(
                    self.config, message.topic, message.body, alias_key=self._alias_key
                )
                encoded = [encode_point(point) for point in points]
            except (BadMessage, InvalidPointError) as exc:
                self._bad(message.topic, str(exc))
                continue
            lines.extend(encoded)
            self.stats.points += len(points)
        delay, longest = self._retry
        while lines:
            try:
                await sink.write_lines(lines)
                break
            except RejectedWriteError as exc:  # everything else was written
                log.error("InfluxDB refused %d lines for good: %s", len(exc.lines), exc.reason)
                break
            except WriteError as exc:
                if stop.is_set():
                    return  # not acknowledged: the broker sends them again at the next start
                self.stats.retries += 1
                log.warning("cannot store in InfluxDB (%s); trying again in %.0f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()  # a stop ends the wait, and nothing is acknowledged
                delay = min(delay * 2, longest)
        for message in batch:
            message.ack()
            self._room.release()
        self.stats.stored += len(batch)

    def _bad(self, topic: str, why: str) -> None:
        self.stats.bad += 1
        plant = topic.split("/")[-2] if topic.count("/") >= 2 else topic
        self.stats.bad_by_plant[plant] = self.stats.bad_by_plant.get(plant, 0) + 1
        if plant not in self._logged_bad:
            self._logged_bad.add(plant)
            log.warning("dropped a message on %s: %s (logged once per plant)", topic, why)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (8883 if parts.scheme == "mqtts" else 1883)
