"""How the MQTT source hands messages on: all that one turn of the event loop read, in one call,
their acks after it; a socket that gave only a few rests before it is read again; a consumer's
failure costs only its own messages.

paho's client is replaced by a small one through the seam the source reads with (`_read` takes
the client, which calls `_on_message` as paho does); the socket is a real one the loop watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Sequence

import paho.mqtt.client as paho
import pytest

from collector.config import parse_config
from collector.sources import Reading
from collector.sources.mqtt import READ_PAUSE_BELOW, MqttSource

CONFIG = """
factory: coop
timezone: UTC
mqtt:
  subscriptions:
    - topic: planta/{machine}/valor/{signal}
      format: plain
      signals: [{name: speed, path: speed}]
sectors: [{id: shop}]
machines:
  - {id: saw-1, sector: shop}
"""


class Board:
    """paho's side as the source uses it: `loop_read` hands one waiting message a call."""

    def __init__(self, source: MqttSource, sock: socket.socket) -> None:
        self.source = source
        self.sock = sock
        self.waiting: deque[paho.MQTTMessage] = deque()
        self.acked: list[int] = []
        self.reads = 0
        self._mid = 0

    def send(self, *speeds: int, qos: int = 1) -> list[int]:
        mids = []
        for speed in speeds:
            self._mid += 1
            message = paho.MQTTMessage(self._mid, b"planta/saw-1/valor/speed")
            message.payload, message.qos = str(speed).encode(), qos
            self.waiting.append(message)
            mids.append(self._mid)
        return mids

    def loop_read(self) -> int:
        self.reads += 1
        with contextlib.suppress(BlockingIOError):
            self.sock.recv(1)  # what woke the loop, as paho reads what the broker sent
        if self.waiting:
            self.source._on_message(self, None, self.waiting.popleft())
        return paho.MQTT_ERR_SUCCESS

    @property
    def buffered(self) -> bool:
        return bool(self.waiting)

    def socket(self) -> socket.socket:
        return self.sock

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)

    def loop_write(self) -> int:
        return paho.MQTT_ERR_SUCCESS

    def want_write(self) -> bool:
        return False


class Kept:
    """The consumer, acknowledging as the collector does once it kept them: each call's readings
    and when it came (the loop's clock)."""

    def __init__(self, refuse: float | None = None) -> None:
        self.calls: list[tuple[float, list[Reading]]] = []
        self.refuse = refuse  # a speed it fails on, as a bug would
        self.arrived = asyncio.Event()

    def __call__(self, readings: Sequence[Reading]) -> None:
        self.arrived.set()
        if any(reading.values["speed"] == self.refuse for reading in readings):
            raise RuntimeError("a bug while keeping readings")
        self.calls.append((asyncio.get_running_loop().time(), list(readings)))
        for reading in readings:
            if reading.ack is not None:
                reading.ack()

    async def call(self, n: int) -> tuple[float, list[Reading]]:
        """The n-th call (from 0), once it came."""
        async with asyncio.timeout(5):
            while len(self.calls) <= n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.calls[n]


@pytest.fixture
async def linked() -> AsyncIterator[tuple[MqttSource, Board, socket.socket]]:
    async with link(CONFIG) as made:
        yield made


@contextlib.asynccontextmanager
async def link(config: str) -> AsyncIterator[tuple[MqttSource, Board, socket.socket]]:
    """A source linked as if a broker had accepted it on a socket the loop watches (no broker:
    the source is not entered, so it connects nowhere); the peer socket to wake it."""
    source = MqttSource(parse_config(config, environ={}))
    source._loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    board = Board(source, ours)
    source._accepted = True  # as after a CONNACK
    source._watch(board, ours)  # type: ignore[arg-type]
    yield source, board, peer
    source._unwatch(ours)
    ours.close()
    peer.close()


@contextlib.asynccontextmanager
async def consuming(source: MqttSource, kept: Kept) -> AsyncIterator[None]:
    running = asyncio.create_task(source.run(kept))
    await asyncio.sleep(0)  # run has started: it consumes from here on
    try:
        yield
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


def speeds(readings: list[Reading]) -> list[object]:
    return [reading.values["speed"] for reading in readings]


async def test_a_turns_messages_are_handed_on_together_and_acked_after(
    linked: tuple[MqttSource, Board, socket.socket],
) -> None:
    source, board, peer = linked
    kept = Kept()
    async with consuming(source, kept):
        mids = board.send(1, 2, 3)
        peer.send(b"x")  # the socket is readable: the loop calls the source's reader
        _, readings = await kept.call(0)
        assert speeds(readings) == [1.0, 2.0, 3.0]
        assert board.acked == mids  # after the one call that kept them
        assert [r.ack is not None for r in readings] == [True, True, True]


async def test_messages_read_before_the_consumer_came_are_handed_to_it(
    linked: tuple[MqttSource, Board, socket.socket],
) -> None:
    source, board, _ = linked
    board.send(7, 8)
    source._read(board)  # type: ignore[arg-type]  # read while nobody consumes yet
    assert board.acked == []
    kept = Kept()
    async with consuming(source, kept):
        _, readings = await kept.call(0)
        assert speeds(readings) == [7.0, 8.0]
        assert board.acked == [1, 2]


async def test_a_socket_that_gave_a_few_rests_and_a_busy_one_is_read_again_at_once(
    linked: tuple[MqttSource, Board, socket.socket],
) -> None:
    source, board, peer = linked
    kept = Kept()
    pause = source.settings.read_pause
    assert pause > 0
    async with consuming(source, kept):
        # A few: the socket rests, so what comes meanwhile waits for the read pause.
        board.send(*range(READ_PAUSE_BELOW - 1))
        peer.send(b"x")
        first, readings = await kept.call(0)
        assert len(readings) == READ_PAUSE_BELOW - 1
        assert source._resting is not None
        board.send(100, 101)
        peer.send(b"x")
        second, readings = await kept.call(1)
        assert speeds(readings) == [100.0, 101.0]
        # The loop's timers may fire up to its clock resolution early.
        assert second - first >= pause - 0.005

        # The rest over, a turn that reads nothing starts no other: an idle link sleeps.
        await asyncio.sleep(pause * 3)
        assert source._resting is None

        # A busy turn: no rest, what comes next is read as soon as the socket says so.
        board.send(*range(READ_PAUSE_BELOW))
        peer.send(b"x")
        _, readings = await kept.call(2)
        assert len(readings) == READ_PAUSE_BELOW
        assert source._resting is None
        board.send(200)
        peer.send(b"x")
        _, readings = await kept.call(3)
        assert speeds(readings) == [200.0]


async def test_a_message_the_consumer_fails_on_costs_only_itself_and_is_logged_once(
    linked: tuple[MqttSource, Board, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    source, board, _ = linked
    kept = Kept(refuse=2.0)
    async with consuming(source, kept):
        with caplog.at_level(logging.ERROR, logger="collector.sources.mqtt"):
            mids = board.send(1, 2, 3)
            source._read(board)  # type: ignore[arg-type]
            mids += board.send(2, 4)
            source._read(board)  # type: ignore[arg-type]
    # The turn's call failed; then one call per message: the bad one alone is left out.
    assert [speeds(readings) for _, readings in kept.calls] == [[1.0], [3.0], [4.0]]
    # Acknowledged all the same: unacknowledged, they would fill the broker's window.
    assert sorted(board.acked) == sorted(mids)
    failures = [r for r in caplog.records if "could not be kept" in r.getMessage()]
    assert len(failures) == 1  # logged once, counted every time
    assert failures[0].exc_info is not None
    [record] = [r for r in source.health_records() if r.tags.get("topic")]
    assert record.fields["not_kept"] == 2


async def test_a_message_that_gives_no_reading_is_acked_at_once(
    linked: tuple[MqttSource, Board, socket.socket],
) -> None:
    source, board, peer = linked
    kept = Kept()
    async with consuming(source, kept):
        message = paho.MQTTMessage(99, b"planta/saw-1/valor/speed")
        message.payload, message.qos = b"not a number", 1
        board.waiting.append(message)
        good = board.send(5)
        peer.send(b"x")
        _, readings = await kept.call(0)
        assert speeds(readings) == [5.0]
        assert sorted(board.acked) == sorted([99, *good])


async def test_with_no_read_pause_a_few_messages_leave_the_socket_watched() -> None:
    config = CONFIG.replace("mqtt:\n", "mqtt:\n  read_pause: 0\n")
    async with link(config) as (source, board, peer):
        kept = Kept()
        async with consuming(source, kept):
            board.send(1)
            peer.send(b"x")
            await kept.call(0)
            assert source._resting is None
            board.send(2)
            peer.send(b"x")
            _, readings = await kept.call(1)
            assert speeds(readings) == [2.0]
