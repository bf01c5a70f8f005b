"""Take readings from add-on boards over MQTT (paho-mqtt 2.x): Tasmota, ESPHome, Shelly, JSON,
plain values and Sparkplug B, as the factory file maps their topics to machines and signals.

One broker connection for the whole config, with a persistent session and QoS 1: messages sent
while the collector was away are delivered when it returns, and each is acknowledged only after
its readings are in the buffer. (Two exceptions, both counted: a message that gives no reading —
malformed, unknown topic, availability only — is acknowledged as it is handled; and one whose
readings a bug keeps from being kept is counted as `not_kept`, logged and acknowledged, lost,
or enough of them would fill the broker's window and stop delivery.) paho runs on the event
loop (its socket callbacks), no thread.

The messages one turn of the loop reads are handled and handed on together (one write to the
buffer, then their acks). When a turn reads only a few, the socket is left unread for
`mqtt.read_pause` (50 ms) before the next: at a plant's trickle of messages (a few hundred a
second), waking for each one costs more than the message itself, so they are taken some at a
time instead, at most that much later. A busier link is read at once, every turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
import zoneinfo
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import Config, MqttConfig, MqttSubscription
from collector.lograte import Occasional
from collector.schema import FieldValue
from collector.sources import Consume, HealthRecord, Reading, Unavailable
from collector.sources.mqtt_formats import (
    Coercer,
    PayloadError,
    Reader,
    coercer,
    make_parser,
    plausible_time,
)
from collector.sources.sparkplug import DATATYPES, SparkplugMetric, encode_payload
from collector.topics import AVAILABILITY_KINDS, TopicPattern, topic_layout

__all__ = ["Delivered", "MqttSource"]

log = logging.getLogger(__name__)

RECONNECT_MIN, RECONNECT_MAX = 1.0, 60.0  # seconds between connection attempts
MAX_TOPICS = 2000  # topics counted one by one in the collector measurement; the rest together
OTHER_TOPICS = "_other"
MAX_ROUTED_TOPICS = 10_000  # topics whose routes are kept worked out; others are matched anew
CONNECT_WAIT = 15.0  # seconds a stop waits for a connection attempt under way
STALE_TIME_MS = 3_600_000  # a payload time this far behind arrival is stored, and counted
READ_BURST = 256  # packets read per turn of the event loop, at most
# After a turn that read fewer than READ_PAUSE_BELOW messages, the socket rests `mqtt.read_pause`
# seconds. Below the broker's window of unacknowledged messages (Mosquitto's 20, EMQX's 32): a
# busy link is never held back waiting for acks.
READ_PAUSE_BELOW = 8
RECV_BYTES = 65536  # read from the socket at once
# A Sparkplug edge node is asked for a rebirth at most once per this many seconds.
REBIRTH_EVERY = 30.0
# A topic's bad messages are logged at most once per this many seconds, with a sample.
LOG_EVERY = 600.0
SAMPLE_BYTES = 120


@dataclass
class _Route:
    """One topic kind of one subscription: how to match it and what to read from it, compiled
    once: its reader, and per selector the fields it fills and how each value is stored."""

    subscription: MqttSubscription
    kind: str
    pattern: TopicPattern
    read: Reader
    machine: str | None  # None: the topic's {machine} level names it
    fields: dict[str, tuple[tuple[str, Coercer], ...]]  # selector → (field name, coercer)
    availability: bool  # a kind that says whether the board is up, and carries no values

    @property
    def board(self) -> str:
        return self.subscription.topic


@dataclass
class _TopicHealth:
    machine: str | None
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    logged_at: float = -LOG_EVERY


@dataclass
class _Target:
    """A route as one topic reaches it, worked out at the topic's first message."""

    route: _Route
    named: str | None  # the machine the route or the topic names
    machine: str | None  # the same if it is a machine of the config, else None
    key: str | None  # the topic level the format reads
    board: tuple[str, str] | None  # (machine, board topic)
    health: _TopicHealth | None = None  # the topic's counters, once counted


class _Client(paho.Client):
    """paho's client, reading its socket a chunk at a time.

    paho reads a packet's first byte, then each byte of its length, then the rest: a system
    call each, and one packet per `loop_read`. Here they are served from one read, and
    `buffered` says whether packets already read wait (in the chunk, or inside TLS), which
    no wake-up of the socket would announce. paho 2.x reads only through `_sock_recv`; the
    end-to-end tests against Mosquitto (TLS among them) would fail if a release changed that.
    """

    _chunk = b""
    _taken = 0
    _chunk_of: object = None  # the socket the chunk was read from

    def _sock_recv(self, bufsize: int) -> bytes:
        chunk, taken = self._chunk, self._taken
        if taken >= len(chunk) or self._chunk_of is not self._sock:
            chunk = super()._sock_recv(RECV_BYTES)  # raises as paho expects
            if not chunk:
                return chunk  # the broker closed the connection
            self._chunk, self._chunk_of, taken = chunk, self._sock, 0
        data = chunk[taken : taken + bufsize]
        self._taken = taken + len(data)
        return data

    @property
    def buffered(self) -> bool:
        sock = self._sock
        if sock is None:
            return False
        if self._taken < len(self._chunk) and self._chunk_of is sock:
            return True
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


class Delivered(NamedTuple):
    """A message as the source sees it; `ack` confirms it to the broker (QoS ≥ 1)."""

    topic: str
    payload: bytes
    received_ms: int
    ack: Callable[[], None] | None = None


class MqttSource:
    """All the config's MQTT boards: `async with source: await source.run(consume)`."""

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
        # The signals each board gives its machine, (machine, board topic) → names; a board under
        # a {machine} placeholder (machine None) gives them to each machine its topics name.
        self._board_signals: dict[tuple[str | None, str], frozenset[str]] = {}
        for machine, subscription in boards:
            names = frozenset(signal.name for signal in subscription.signals)
            key = (machine, subscription.topic)
            self._board_signals[key] = self._board_signals.get(key, frozenset()) | names
        # The boards a lost broker link blinds: every configured one, and each machine met under
        # a placeholder (which machines publish there is known only from their messages).
        self._boards: set[tuple[str, str]] = {
            (machine, board) for machine, board in self._board_signals if machine is not None
        }
        for machine, subscription in boards:
            parser = make_parser(subscription.format, zone=zone)  # one per board: Sparkplug state
            by_selector: dict[str, list[tuple[str, Coercer]]] = defaultdict(list)
            for signal in subscription.signals:
                by_selector[signal.selector].append((signal.name, coercer(signal)))
            fields = {selector: tuple(each) for selector, each in by_selector.items()}
            for kind, template in topic_layout(subscription.format, subscription.topic).items():
                self._routes.append(
                    _Route(
                        subscription,
                        kind,
                        TopicPattern.compile(template),
                        parser.reader(kind, tuple(fields)),
                        machine,
                        fields,
                        kind in AVAILABILITY_KINDS,
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
        self._targets: dict[str, list[_Target]] = {}  # topic → the routes it reaches
        self._max_payload = self.settings.max_payload
        self._topics: dict[str, _TopicHealth] = {}
        self._online: dict[tuple[str, str], bool] = {}  # (machine, board topic) → online
        self._offline_since: dict[tuple[str, str], int] = {}  # (machine, board) → UTC ms
        self._link_lost_ms: int | None = None  # since when the broker link is down, once tried
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
        self._subscribe_mid: int | None = None
        self._refused_filters: list[str] = []
        self._connecting: asyncio.Future[Any] | None = None
        self._client: paho.Client | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._sockets: set[Any] = set()
        self._writers: set[Any] = set()  # sockets watched for room to write
        self._write_soon = False
        self._acking = False
        self._loop_thread = threading.get_ident()
        # Messages from paho's callback, handled once the turn's reading is done.
        self._inbox: deque[Delivered] = deque()
        self._consume: Consume | None = None
        self._resting: asyncio.TimerHandle | None = None  # the socket's rest (see _rest)
        self._consume_failures = Occasional(LOG_EVERY)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.messages = 0

    # -- the broker ----------------------------------------------------------------------------

    async def __aenter__(self) -> MqttSource:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
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
        self._on_loop(self._want_write, client, sock)

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

    def _watch(self, client: _Client, sock: Any) -> None:
        assert self._loop is not None
        if self._closing:
            return
        self._loop.add_reader(sock, self._read, client)
        self._sockets.add(sock)

    def _read(self, client: _Client) -> None:
        # paho's loop_read reads one packet whatever it is asked: go on while packets already
        # read wait, up to READ_BURST per turn, so a burst is read in few turns of the loop.
        assert self._loop is not None
        waiting = len(self._inbox)  # none once `run` has started: each turn hands all on
        for _ in range(READ_BURST):
            if client.loop_read() != paho.MQTT_ERR_SUCCESS or not client.buffered:
                break
        else:
            self._loop.call_soon(self._read, client)  # read already: no wake-up would come for it
            self._deliver()
            return
        arrived = len(self._inbox) - waiting
        self._deliver()
        if 0 < arrived < READ_PAUSE_BELOW and self.settings.read_pause:
            self._rest(client)  # not after a turn that read none: an idle link sleeps

    def _rest(self, client: _Client) -> None:
        # Leave the socket unread for read_pause: what comes meanwhile waits in the kernel, and
        # is read in one turn. Not before the broker accepted us (the handshake goes at once).
        assert self._loop is not None
        sock = client.socket()
        if (
            self._closing
            or not self._accepted
            or self._resting is not None
            or sock is None
            or sock not in self._sockets
        ):
            return
        self._loop.remove_reader(sock)
        self._resting = self._loop.call_later(self.settings.read_pause, self._wake, client, sock)

    def _wake(self, client: _Client, sock: Any) -> None:
        self._resting = None
        if self._closing or sock not in self._sockets:
            return  # closed meanwhile: a new socket is watched when it opens
        assert self._loop is not None
        self._loop.add_reader(sock, self._read, client)
        self._read(client)

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        if self._resting is not None:
            self._resting.cancel()
            self._resting = None
        self._loop.remove_reader(sock)
        self._remove_writer(sock)
        self._sockets.discard(sock)

    def _want_write(self, client: paho.Client, sock: Any) -> None:
        assert self._loop is not None
        if self._acking:
            return  # the ack writes it at once
        if not self._accepted:
            # Connecting: written when the selector says there is room, after what the broker
            # sent is read (a TLS alert saying why it refuses would be lost to a reset).
            self._add_writer(client, sock)
        elif not self._write_soon:
            # Written after this turn of the loop, without asking the selector to watch for
            # room (two system calls) and waiting for its answer.
            self._write_soon = True
            self._loop.call_soon(self._write_soon_now, client)

    def _write_soon_now(self, client: paho.Client) -> None:
        self._write_soon = False
        self._write(client)

    def _write(self, client: paho.Client) -> None:
        client.loop_write()
        sock = client.socket()
        if client.want_write() and sock is not None:
            self._add_writer(client, sock)  # the socket is full: written as it drains

    def _add_writer(self, client: paho.Client, sock: Any) -> None:
        assert self._loop is not None
        if not self._closing:  # a stop writes its DISCONNECT itself
            self._loop.add_writer(sock, client.loop_write)
            self._writers.add(sock)

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        if sock in self._writers:
            self._writers.discard(sock)
            self._loop.remove_writer(sock)

    def _forget_sockets(self) -> None:
        for sock in list(self._sockets):
            self._unwatch(sock)

    def _make_client(self) -> _Client:
        settings = self.settings
        client = _Client(
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
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_log = self._on_log  # until the broker accepts: see _on_connect
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
        # paho formats a line for its log callback about every packet; the only lines wanted
        # are the errors that explain a connection refused before it is accepted.
        client.on_log = None
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
        _result, self._subscribe_mid = client.subscribe([(f, qos) for f in self.filters])
        self._link_state(True, "")

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, reason_codes: list[Any], _p: Any
    ) -> None:
        # Said once the broker answered the SUBSCRIBE: from here on it keeps our messages. A
        # refusal (Mosquitto 2 refuses a filter its ACL does not let this user read) would
        # otherwise leave those boards silent with nothing in the log.
        if mid != self._subscribe_mid:
            return
        refused = [
            f for f, code in zip(self.filters, reason_codes, strict=False) if code.is_failure
        ]
        if refused != self._refused_filters:
            self._refused_filters = refused
            if refused:
                log.warning(
                    "%s: the broker refused %d of %d subscriptions: %s (does its ACL let this "
                    "user read them?)",
                    self.name,
                    len(refused),
                    len(self.filters),
                    ", ".join(refused),
                )
        log.info("%s: connected, %d subscriptions", self.name, len(self.filters) - len(refused))

    def _on_log(self, _c: paho.Client, _u: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self._last_error = text

    def _on_disconnect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        client.on_log = self._on_log
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
                    # Written at once: acks come from the collector's task, never from inside
                    # paho's callbacks, where writing could re-enter paho.
                    self._acking = True
                    try:
                        client.ack(mid, qos)
                    finally:
                        self._acking = False
                    self._write(client)

        self._inbox.append(Delivered(message.topic, bytes(message.payload), received_ms, ack))

    def _connect_failed(self, reason: str) -> None:
        self._connect_failures += 1
        if not self._refused:
            log.warning("%s: %s; retrying with backoff", self.name, reason)
        self._refused = True
        self._connected = False
        if self._link_lost_ms is None and not self._closing:
            self._link_lost_ms = _now_ms()

    def _link_state(self, up: bool, reason: str) -> None:
        if up and not self._connected:
            self._refused = False
        elif not up and self._connected and not self._closing:
            log.warning("%s: connection lost (%s); reconnecting with backoff", self.name, reason)
            if self._link_lost_ms is None:
                self._link_lost_ms = _now_ms()
        if up:
            self._link_lost_ms = None
        self._connected = up

    # -- messages → readings -------------------------------------------------------------------

    async def run(self, consume: Consume) -> None:
        """Hand the readings of each turn's messages to `consume`, until cancelled."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("use the source inside `async with MqttSource(...)`")
        self._consume = consume
        try:
            self._deliver()  # what came before
            await loop.create_future()  # the socket's callbacks do the rest
        finally:
            self._consume = None

    def _deliver(self) -> None:
        """The waiting messages' readings to the consumer, in one call (whose keeping them sends
        their acks); a message that gives none (bad, unknown or availability only) is
        acknowledged as it is handled."""
        consume, inbox = self._consume, self._inbox
        if consume is None or not inbox:
            return  # kept until `run` starts
        handled: list[tuple[Delivered, list[Reading]]] = []
        while inbox:
            delivered = inbox.popleft()
            try:
                got = self.handle(delivered)
            except Exception as exc:
                self._cannot_keep(delivered, f"handling it failed: {exc!r}")
                continue
            if got:
                handled.append((delivered, got))
            elif delivered.ack is not None:
                delivered.ack()
        if not handled:
            return
        try:
            consume([reading for _, got in handled for reading in got])
        except Exception:
            # A bug with one message's readings: the others are kept one message at a time.
            for delivered, got in handled:
                try:
                    consume(got)
                except Exception as exc:
                    self._cannot_keep(delivered, f"keeping its readings failed: {exc!r}")

    def _cannot_keep(self, delivered: Delivered, why: str) -> None:
        # A bug, not the payload's fault (those are counted in `handle`): logged with its
        # traceback at most once per LOG_EVERY, counted against its topic, and acknowledged
        # all the same, or enough of them would fill the broker's window and stop delivery.
        self._consume_failed(f"{delivered.topic}: {why}")
        targets = self._targets.get(delivered.topic)
        machine = targets[0].machine if targets else None
        self._count(delivered.topic, machine, "not_kept")
        if delivered.ack is not None:
            delivered.ack()

    def _consume_failed(self, what: str) -> None:
        # Logged with its traceback at most once per LOG_EVERY, with how often it happened.
        if self._consume_failures.happened():
            log.exception(
                "%s: a message could not be kept, %s (%d so far, counted as `not_kept`); "
                "it is acknowledged and lost: please report this bug",
                self.name,
                what,
                self._consume_failures.count,
            )

    def handle(self, delivered: Delivered) -> list[Reading]:
        """The readings one message gives, the last carrying the message's `ack` (confirmed once
        all are in the buffer); every problem is counted against its topic."""
        self.messages += 1
        topic = delivered.topic
        targets = self._targets.get(topic)
        if targets is None:
            targets = self._route(topic)
        if not targets:
            self._bad(topic, None, "unknown_topic", "no subscription maps this topic", delivered)
            return []
        payload = delivered.payload
        if len(payload) > self._max_payload:
            self._bad(
                topic,
                targets[0].route.machine,
                "oversize",
                f"{len(payload)} bytes, over max_payload {self._max_payload}",
                delivered,
            )
            return []
        received_ms = delivered.received_ms
        points: list[tuple[str, int, dict[str, FieldValue]]] = []
        for target in targets:
            machine, board = target.machine, target.board
            if machine is None or board is None:
                self._bad(
                    topic,
                    None,
                    "unknown_machine",
                    f"{target.named!r} is not a machine id",
                    delivered,
                )
                continue
            health = target.health
            if health is None:
                health = target.health = self._count(topic, machine, "messages")
            else:
                health.counts["messages"] += 1
            route = target.route
            try:
                values, online = route.read(target.key, payload)
            except PayloadError as exc:
                if exc.kind == "unknown_alias":
                    # Normal after a start: counted, and answered with a rebirth request.
                    self._count(topic, machine, exc.kind)
                    self._request_rebirth(topic, machine)
                else:
                    self._bad(topic, machine, exc.kind, str(exc), delivered)
                continue
            if online is not None:
                self._availability(machine, board[1], online, topic, received_ms)
            if route.availability and not values:
                continue
            by_time: dict[int, dict[str, FieldValue]] = {}
            on_arrival: dict[str, FieldValue] = {}
            fields = route.fields
            # Values of one payload time share a point: its stamp is worked out once.
            time_of_into, into, old = None, on_arrival, False
            for selector, value, time_ms in values:
                for name, to_field in fields.get(selector, ()):
                    try:
                        stored = to_field(value)
                    except PayloadError as exc:
                        self._bad(topic, machine, exc.kind, str(exc), delivered)
                        continue
                    if time_ms is None:
                        on_arrival[name] = stored
                        continue
                    if time_ms != time_of_into:
                        time_of_into = time_ms
                        stamp = plausible_time(time_ms, received_ms)
                        if stamp != time_ms:
                            into, old = on_arrival, False
                        else:
                            into = by_time.setdefault(stamp, {})
                            old = received_ms - stamp > STALE_TIME_MS
                    if old:
                        self._count(topic, machine, "old_time")
                    into[name] = stored
            if on_arrival:
                stamp = self._arrival_stamp(machine, on_arrival, received_ms)
                at = by_time.get(stamp)
                if at is None:
                    by_time[stamp] = on_arrival
                else:
                    at.update(on_arrival)
            if not by_time:
                continue
            if self._online.get(board) is False:
                # Its data says it is back.
                self._availability(machine, board[1], True, topic, received_ms)
            for stamp, at in sorted(by_time.items()) if len(by_time) > 1 else by_time.items():
                points.append((machine, stamp, at))
        if not points:
            return []
        last_machine, last_stamp, last_values = points.pop()
        readings = [Reading(machine, stamp, at) for machine, stamp, at in points]
        readings.append(Reading(last_machine, last_stamp, last_values, delivered.ack))
        return readings

    def _route(self, topic: str) -> list[_Target]:
        """The routes a topic reaches and what its levels say, kept for its next messages."""
        empty: dict[str, str] = {}
        matches = [(route, empty) for route in self._exact.get(topic, ())]
        matches += [
            (route, found)
            for route in self._patterned
            if (found := route.pattern.match(topic)) is not None
        ]
        targets = []
        for route, found in matches:
            named = route.machine or found.get("machine")
            machine = named if named in self._machines else None
            board = None
            if machine is not None:
                board = (machine, route.board)
                if route.machine is None:
                    self._boards.add(board)  # a machine met under a placeholder
            # The level the format reads; for Sparkplug boards under a {machine} placeholder,
            # the machine, so each edge node keeps its own aliases.
            key = found.get("key") or found.get("signal") or found.get("machine")
            targets.append(_Target(route, named, machine, key, board))
        if len(self._targets) < MAX_ROUTED_TOPICS:
            self._targets[topic] = targets
        return targets

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

    def _availability(
        self, machine: str, board: str, online: bool, topic: str, received_ms: int
    ) -> None:
        before = self._online.get((machine, board))
        self._online[(machine, board)] = online
        self._boards.add((machine, board))
        if online:
            self._offline_since.pop((machine, board), None)
        elif before is not False:
            self._offline_since[(machine, board)] = received_ms
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
        """One entry per board that said it is offline, and while the broker link is down, one
        per board at all (since the earlier of the two): each with the signals that board gives
        its machine."""
        since = dict(self._offline_since)
        lost = self._link_lost_ms
        if lost is not None:
            for board in self._boards:
                since[board] = min(since.get(board, lost), lost)
        return [
            Unavailable(machine, self._signals_of(machine, board), since_ms)
            for (machine, board), since_ms in sorted(since.items())
        ]

    def _signals_of(self, machine: str, board: str) -> frozenset[str]:
        names = self._board_signals.get((machine, board))
        return names if names is not None else self._board_signals[(None, board)]

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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
