"""Take readings from add-on boards over MQTT (paho-mqtt 2.x): Tasmota, ESPHome, Shelly, JSON,
plain values and Sparkplug B, as the factory file maps their topics to machines and signals.

One broker connection for the whole config, with a persistent session and QoS 1: messages sent
while the collector was away are delivered when it returns, and each is acknowledged only after
its readings are in the buffer. paho runs on the event loop (its socket callbacks), no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
import zoneinfo
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import Config, MqttConfig, MqttSignal, MqttSubscription
from collector.schema import FieldValue
from collector.sources import HealthRecord, Reading, Unavailable
from collector.sources.mqtt_formats import (
    PayloadError,
    PayloadParser,
    coerce,
    make_parser,
    plausible_time,
)
from collector.sources.sparkplug import DATATYPES, SparkplugMetric, encode_payload
from collector.topics import AVAILABILITY_KINDS, TopicPattern, topic_layout

__all__ = ["Delivered", "MqttSource", "mqtt_sources"]

log = logging.getLogger(__name__)

RECONNECT_MIN, RECONNECT_MAX = 1.0, 60.0  # seconds between connection attempts
MAX_TOPICS = 2000  # topics counted one by one in the collector measurement; the rest together
OTHER_TOPICS = "_other"
CONNECT_WAIT = 15.0  # seconds a stop waits for a connection attempt under way
STALE_TIME_MS = 3_600_000  # a payload time this far behind arrival is stored, and counted
READ_BURST = 256  # packets paho may read per wake-up of the socket
# A Sparkplug edge node is asked for a rebirth at most once per this many seconds.
REBIRTH_EVERY = 30.0
# A topic's bad messages are logged at most once per this many seconds, with a sample.
LOG_EVERY = 600.0
SAMPLE_BYTES = 120


@dataclass
class _Route:
    """One topic kind of one subscription: how to match it and what to read from it."""

    subscription: MqttSubscription
    kind: str
    pattern: TopicPattern
    parser: PayloadParser
    machine: str | None  # None: the topic's {machine} level names it
    by_selector: dict[str, list[MqttSignal]]
    wanted: tuple[str, ...]


@dataclass
class _TopicHealth:
    machine: str | None
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    logged_at: float = -LOG_EVERY


@dataclass(frozen=True)
class Delivered:
    """A message as the source sees it; `ack` confirms it to the broker (QoS ≥ 1)."""

    topic: str
    payload: bytes
    received_ms: int
    ack: Callable[[], None] | None = None


class MqttSource:
    """All the config's MQTT boards: `async with source: async for reading in source`."""

    kind = "mqtt"

    def __init__(self, config: Config, *, client_id: str | None = None) -> None:
        self.config = config
        self.settings: MqttConfig = config.mqtt
        self.client_id = client_id or self.settings.client_id or f"aguante-{config.factory}"
        self.name = f"mqtt {self.settings.url}"
        zone = zoneinfo.ZoneInfo(config.timezone)
        self._machines = {m.id for m in config.machines}
        self._routes: list[_Route] = []
        boards: list[tuple[str | None, MqttSubscription]] = [
            (m.id, s) for m in config.machines for s in m.mqtt
        ]
        boards += [(s.machine, s) for s in self.settings.subscriptions]
        for machine, subscription in boards:
            parser = make_parser(subscription.format, zone=zone)  # one per board: Sparkplug state
            by_selector: dict[str, list[MqttSignal]] = defaultdict(list)
            for signal in subscription.signals:
                by_selector[signal.selector].append(signal)
            for kind, template in topic_layout(subscription.format, subscription.topic).items():
                self._routes.append(
                    _Route(
                        subscription,
                        kind,
                        TopicPattern.compile(template),
                        parser,
                        machine,
                        dict(by_selector),
                        tuple(by_selector),
                    )
                )
        self.filters = sorted({route.pattern.filter for route in self._routes})
        # A plant has a board or more per machine: topics without wildcards or placeholders are
        # found by a dict lookup, not by trying every pattern on every message.
        self._exact: dict[str, list[_Route]] = defaultdict(list)
        self._patterned: list[_Route] = []
        for route in self._routes:
            if route.pattern.filter == route.pattern.template and not {"+", "#"} & set(
                route.pattern.template.split("/")
            ):
                self._exact[route.pattern.template].append(route)
            else:
                self._patterned.append(route)
        self._topics: dict[str, _TopicHealth] = {}
        self._online: dict[tuple[str, str], bool] = {}  # (machine, board topic) → online
        self._last_arrival: dict[tuple[str, str], int] = {}  # (machine, field) → last stamp
        self._rebirth_asked: dict[str, float] = {}
        self._connected = False
        self._refused = False
        self._connect_failures = 0
        self._closing = False
        self._last_error = ""  # paho's last error, for a connection dropped before its CONNACK
        self._accepted = False
        self._refused_now = False
        self._generation = 0
        self._connecting: asyncio.Future[Any] | None = None
        self._client: paho.Client | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._sockets: set[Any] = set()
        self._loop_thread = threading.get_ident()
        self._queue: asyncio.Queue[Delivered] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.messages = 0

    # -- the broker ----------------------------------------------------------------------------

    async def __aenter__(self) -> MqttSource:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue = asyncio.Queue()
        self._client = self._make_client()
        # connect_async only records where to connect; _keep_connected does it, off the loop.
        self._client.connect_async(
            self.settings.host, self.settings.port, keepalive=self.settings.keepalive
        )
        self._keeper = asyncio.create_task(self._keep_connected(), name=f"{self.name} link")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            # The worker thread connects on whatever we cancel: let it end, then close.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connecting, CONNECT_WAIT)
        client, self._client = self._client, None
        if client is None:
            return
        if client.socket() is not None:
            client.disconnect()
            # paho closes the socket once its DISCONNECT is written; give it a moment.
            for _ in range(20):
                if client.socket() is None:
                    break
                client.loop_write()
                await asyncio.sleep(0.01)
        self._forget_sockets()
        sock = client.socket()
        if sock is not None:
            sock.close()  # the DISCONNECT could not be written: close it ourselves
        await asyncio.sleep(0)  # the transport's close runs on the next iteration

    async def _keep_connected(self) -> None:
        """Connect, reconnect with capped backoff, and run paho's keepalive every second."""
        client = self._client
        assert client is not None
        backoff, first = RECONNECT_MIN, True
        while True:
            try:
                if client.socket() is None:
                    if not first:
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, RECONNECT_MAX)
                    first = False
                    self._accepted = False
                    # A blocking TCP connect and TLS handshake: in a worker thread, shielded so
                    # a stop waits for it and closes what it opened.
                    self._connecting = asyncio.ensure_future(asyncio.to_thread(client.reconnect))
                    await asyncio.shield(self._connecting)
                    self._connecting = None
                await asyncio.sleep(1.0)
                if client.socket() is not None:
                    client.loop_misc()  # keepalive pings; drops a link that stopped answering
                    if self._connected:
                        backoff = RECONNECT_MIN
            except (OSError, ValueError) as exc:
                self._connecting = None
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, ssl.SSLCertVerificationError):
                    reason += " (is mqtt.tls.ca_file the CA that signed the broker's certificate?)"
                self._connect_failed(f"cannot connect: {reason}")
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not leave the collector deaf for good: log it and go on.
                log.exception("%s: link keeper failed; reconnecting", self.name)
                self._connecting = None
                first = False

    # paho calls these four from reconnect() (in a worker thread) or from loop_read/loop_write
    # (on the loop): reader and writer are (un)registered on the loop's thread either way.

    def _on_socket_open(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._watch, client, sock)

    def _on_socket_close(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._unwatch, sock)

    def _on_register_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, client, sock)

    def _on_unregister_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer, sock)

    def _on_loop(self, function: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            function(*args)
        else:
            loop.call_soon_threadsafe(function, *args)

    def _watch(self, client: paho.Client, sock: Any) -> None:
        assert self._loop is not None
        if self._closing:
            return
        # Up to READ_BURST packets per wake-up: a burst of queued messages is read in few turns.
        self._loop.add_reader(sock, client.loop_read, READ_BURST)
        self._sockets.add(sock)

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._sockets.discard(sock)

    def _add_writer(self, client: paho.Client, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _forget_sockets(self) -> None:
        for sock in list(self._sockets):
            self._unwatch(sock)

    def _make_client(self) -> paho.Client:
        settings = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # the broker keeps our QoS 1 messages while we are away
            protocol=paho.MQTTv311,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.use_tls:
            tls = settings.tls
            client.tls_set(
                ca_certs=tls.ca_file if tls else None,
                certfile=tls.cert_file if tls else None,
                keyfile=tls.key_file if tls else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(bool(tls and tls.insecure))
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_log = self._on_log
        client.on_message = self._on_message
        return client

    # paho's callbacks below run on the event loop's thread (inside loop_read and loop_write).

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            text = str(reason)
            hint = (
                " (check AGUANTE_MQTT_USERNAME and AGUANTE_MQTT_PASSWORD)"
                if "authori" in text.lower() or "password" in text.lower()
                else ""
            )
            self._connect_failed(f"the broker refused the connection: {text}{hint}")
            self._refused_now = True  # the disconnect that follows is the same failure
            return
        # Subscriptions are renewed on every connect: a broker that lost its state (restarted
        # without persistence) would otherwise keep us connected and deaf.
        self._accepted = True
        self._generation += 1
        if self._generation > 1 and not getattr(_f, "session_present", True):
            log.warning(
                "%s: the broker kept no session for %s: messages sent while we were away are "
                "lost (is persistence on?)",
                self.name,
                self.client_id,
            )
        qos: int = self.settings.qos
        client.subscribe([(f, qos) for f in self.filters])
        self._link_state(True, "")

    def _on_log(self, _c: paho.Client, _u: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self._last_error = text

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        accepted, self._accepted = self._accepted, False
        refused_now, self._refused_now = self._refused_now, False
        if not accepted and not self._closing and not refused_now:
            # Dropped before its CONNACK: paho says "Unspecified error"; its log says why.
            why = self._last_error or str(reason)
            self._connect_failed(f"the broker closed the connection before accepting it: {why}")
            return
        self._link_state(False, str(reason))

    def _on_message(self, client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        received_ms = time.time_ns() // 1_000_000
        ack = None
        if message.qos > 0:
            mid, qos, generation = message.mid, message.qos, self._generation

            def ack() -> None:
                # A message id belongs to one connection: after a reconnect the broker sends
                # the message again, and an old id could confirm another message.
                if generation == self._generation and client.socket() is not None:
                    client.ack(mid, qos)

        assert self._queue is not None
        self._queue.put_nowait(Delivered(message.topic, bytes(message.payload), received_ms, ack))

    def _connect_failed(self, reason: str) -> None:
        self._connect_failures += 1
        if not self._refused:
            log.warning("%s: %s; retrying with backoff", self.name, reason)
        self._refused = True
        self._connected = False

    def _link_state(self, up: bool, reason: str) -> None:
        if up and not self._connected:
            log.info("%s: connected, %d subscriptions", self.name, len(self.filters))
            self._refused = False
        elif not up and self._connected and not self._closing:
            log.warning("%s: connection lost (%s); reconnecting with backoff", self.name, reason)
        self._connected = up

    # -- messages → readings -------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Reading]:
        return self._readings()

    async def _readings(self) -> AsyncIterator[Reading]:
        if self._queue is None:
            raise RuntimeError("use the source inside `async with MqttSource(...)`")
        while True:
            delivered = await self._queue.get()
            readings = self.handle(delivered)
            if not readings:
                if delivered.ack is not None:
                    delivered.ack()  # nothing to keep: bad, unknown or availability only
                continue
            for reading in readings[:-1]:
                yield reading
            # The message is confirmed with its last reading, once all are in the buffer.
            last = readings[-1]
            yield Reading(last.machine, last.time_ms, last.values, delivered.ack)

    def handle(self, delivered: Delivered) -> list[Reading]:
        """The readings one message gives; every problem is counted against its topic."""
        self.messages += 1
        topic = delivered.topic
        empty: dict[str, str] = {}
        matches = [(route, empty) for route in self._exact.get(topic, ())]
        matches += [
            (route, found)
            for route in self._patterned
            if (found := route.pattern.match(topic)) is not None
        ]
        if not matches:
            self._bad(topic, None, "unknown_topic", "no subscription maps this topic", delivered)
            return []
        if len(delivered.payload) > self.settings.max_payload:
            self._bad(
                topic,
                matches[0][0].machine,
                "oversize",
                f"{len(delivered.payload)} bytes, over max_payload {self.settings.max_payload}",
                delivered,
            )
            return []
        readings: list[Reading] = []
        for route, found in matches:
            machine = route.machine or found.get("machine")
            if machine not in self._machines:
                self._bad(
                    topic, None, "unknown_machine", f"{machine!r} is not a machine id", delivered
                )
                continue
            assert machine is not None
            self._count(topic, machine, "messages")
            try:
                # The level the format reads; for Sparkplug boards under a {machine} placeholder,
                # the machine, so each edge node keeps its own aliases.
                key = found.get("key") or found.get("signal") or found.get("machine")
                parsed = route.parser.parse(route.kind, key, delivered.payload, route.wanted)
            except PayloadError as exc:
                if exc.kind == "unknown_alias":
                    # Normal after a start: counted, and answered with a rebirth request.
                    self._count(topic, machine, exc.kind)
                    self._request_rebirth(topic, machine)
                else:
                    self._bad(topic, machine, exc.kind, str(exc), delivered)
                continue
            board = route.subscription.topic
            if parsed.online is not None:
                self._availability(machine, board, parsed.online, topic)
            if route.kind in AVAILABILITY_KINDS and not parsed.values:
                continue
            by_time: dict[int, dict[str, FieldValue]] = defaultdict(dict)
            on_arrival: dict[str, FieldValue] = {}
            for value in parsed.values:
                for signal in route.by_selector.get(value.selector, ()):
                    try:
                        stored = coerce(value.value, signal)
                    except PayloadError as exc:
                        self._bad(topic, machine, exc.kind, str(exc), delivered)
                        continue
                    stamp = plausible_time(value.time_ms, delivered.received_ms)
                    if stamp != value.time_ms:
                        on_arrival[signal.name] = stored
                        continue
                    if delivered.received_ms - stamp > STALE_TIME_MS:
                        self._count(topic, machine, "old_time")
                    by_time[stamp][signal.name] = stored
            if on_arrival:
                stamp = self._arrival_stamp(machine, on_arrival, delivered.received_ms)
                by_time[stamp].update(on_arrival)
            if by_time and self._online.get((machine, board)) is False:
                self._availability(machine, board, True, topic)  # its data: it is back
            readings.extend(
                Reading(machine, stamp, values) for stamp, values in sorted(by_time.items())
            )
        return readings

    def _request_rebirth(self, topic: str, machine: str) -> None:
        # Data by alias whose birth we missed (we subscribed after it) is unreadable until the
        # edge node is born again: ask it, as Sparkplug host applications do, at most every
        # REBIRTH_EVERY seconds per node. spBv1.0/<group>/<type>/<node>[/<device>]
        levels = topic.split("/")
        group, node = levels[1], levels[3]
        now = time.monotonic()
        node_key = f"{group}/{node}"
        if now - self._rebirth_asked.get(node_key, -REBIRTH_EVERY) < REBIRTH_EVERY:
            return
        self._rebirth_asked[node_key] = now
        self._count(topic, machine, "rebirth_requests")
        if self._client is None:
            return
        request = SparkplugMetric(
            name="Node Control/Rebirth",
            datatype=DATATYPES["Boolean"],
            value_field="boolean_value",
            value=True,
        )
        payload = encode_payload([request], timestamp=time.time_ns() // 1_000_000)
        self._client.publish(f"spBv1.0/{group}/NCMD/{node}", payload, qos=0)
        log.info("%s/%s: asked for a rebirth (data by alias before any birth)", group, node)

    def _arrival_stamp(self, machine: str, fields: dict[str, FieldValue], received_ms: int) -> int:
        # A message without a time of its own is stamped on arrival. Messages queued by the
        # broker arrive in a burst within one millisecond, and InfluxDB keeps one value per
        # series, field and time: a field met again in the same millisecond moves on to the
        # next free one, or all but the last would be overwritten. Different fields share it.
        stamp = received_ms
        for name in fields:
            stamp = max(stamp, self._last_arrival.get((machine, name), 0) + 1)
        for name in fields:
            self._last_arrival[(machine, name)] = stamp
        return stamp

    def _availability(self, machine: str, board: str, online: bool, topic: str) -> None:
        before = self._online.get((machine, board))
        self._online[(machine, board)] = online
        if online and before is False:
            log.info("%s: board back online (%s)", machine, topic)
        elif not online and before is not False:
            log.warning(
                "%s: board offline (%s); its signals are stale until it returns", machine, topic
            )

    def _count(self, topic: str, machine: str | None, what: str) -> _TopicHealth:
        health = self._topics.get(topic)
        if health is None:
            if len(self._topics) >= MAX_TOPICS:
                # Wildcards can bring any number of topics: beyond the cap, one shared series.
                topic, machine = OTHER_TOPICS, None
                health = self._topics.get(topic)
            if health is None:
                health = self._topics[topic] = _TopicHealth(machine)
        health.counts[what] += 1
        return health

    def _bad(
        self, topic: str, machine: str | None, kind: str, reason: str, delivered: Delivered
    ) -> None:
        health = self._count(topic, machine, kind)
        now = time.monotonic()
        if now - health.logged_at >= LOG_EVERY:
            health.logged_at = now
            sample = delivered.payload[:SAMPLE_BYTES]
            log.warning(
                "%s: %s (%s); sample %r — further problems on this topic are counted, "
                "logged again in %.0f min",
                topic,
                kind.replace("_", " "),
                reason,
                sample,
                LOG_EVERY / 60,
            )

    # -- health --------------------------------------------------------------------------------

    def unavailable(self) -> list[Unavailable]:
        return []  # TODO(#4): boards offline and a lost broker link

    def health_records(self) -> list[HealthRecord]:
        records = [
            HealthRecord(
                None,
                {
                    "connected": self._connected,
                    "connect_failures": self._connect_failures,
                    "messages": self.messages,
                    "topics": len(self._topics),
                },
            )
        ]
        for (machine, board), online in sorted(self._online.items()):
            records.append(
                HealthRecord(machine, {"up": online}, {"source": "mqtt", "board": board})
            )
        for topic, health in sorted(self._topics.items()):
            fields: dict[str, FieldValue] = dict(health.counts)
            records.append(HealthRecord(health.machine, fields, {"topic": topic}))
        return records


def mqtt_sources(config: Config) -> list[MqttSource]:
    """One source for the broker when any board or subscription is configured."""
    if not config.mqtt.subscriptions and not any(m.mqtt for m in config.machines):
        return []
    return [MqttSource(config)]
