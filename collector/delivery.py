"""The bounded buffer and delivery loop in front of a sink: batching, retries with backoff,
quarantine of refused lines, and counters for the `collector` measurement."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from collector.buffer import append_locked
from collector.lineprotocol import (
    InvalidPointError,
    drop_nonfinite,
    encode_counting,
    line_time_ms,
)
from collector.schema import Point
from collector.sinks import AuthWriteError, RejectedWriteError, Sink, WriteError

__all__ = ["Buffer", "Delivery", "DeliveryStats", "MemoryBuffer"]

log = logging.getLogger(__name__)

RATE_WINDOW = 10.0  # seconds over which `write_rate` is measured
# A sync falling due while a write is under way waits for it (a stored line needs none), for at
# most this share of fsync_interval: with flush_interval = fsync_interval, the oldest lines of
# every batch fall due while the batch is being written.
SYNC_GRACE = 0.25


class Buffer(Protocol):
    """Lines of line protocol waiting for the sink, oldest first. `take` hands out the oldest
    lines without removing them; `ack` removes what the last `take` handed out, once stored.
    `collector.buffer.DiskBuffer` keeps them on disk; `MemoryBuffer` is for tests and tools."""

    @property
    def depth(self) -> int: ...

    @property
    def size_bytes(self) -> int: ...

    @property
    def when_full(self) -> str:
        """Which lines `put` drops when full: "drop_oldest" or "drop_newest"."""
        ...

    @property
    def corrupt_lines(self) -> int: ...

    def put(self, lines: Sequence[str]) -> int:
        """Add lines; returns how many lines were dropped to stay within bounds."""
        ...

    def take(self, max_n: int) -> list[str]: ...

    def ack(self) -> None: ...

    @property
    def fsync_interval(self) -> float:
        """At most this many seconds between a put and its `sync` (unless the sink stored it
        first); 0 when the buffer needs no `sync` from outside."""
        ...

    @property
    def sync_due(self) -> float | None:
        """When (`time.monotonic`) `sync` is due; None while nothing waits for one."""
        ...

    def sync(self) -> None:
        """Make what was put durable; called from a thread, so it must be thread-safe."""
        ...

    def close(self) -> None: ...


class MemoryBuffer:
    """A bounded in-memory `Buffer`. Drops the oldest lines that are not being sent."""

    corrupt_lines = 0
    when_full = "drop_oldest"
    fsync_interval = 0.0  # nothing to make durable
    sync_due = None

    def __repr__(self) -> str:
        return f"the delivery buffer ({self.max_points} lines in memory)"

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self._waiting: deque[str] = deque()
        self._taken: list[str] = []
        self.size_bytes = 0

    @property
    def depth(self) -> int:
        return len(self._waiting) + len(self._taken)

    def put(self, lines: Sequence[str]) -> int:
        waiting = self._waiting
        waiting.extend(lines)
        excess = len(waiting) + len(self._taken) - self.max_points
        if excess <= 0:
            return 0  # the usual case: called for every reading
        # The taken batch may be stored already; dropping the next-oldest loses nothing twice.
        excess = min(excess, len(waiting))
        for _ in range(excess):
            waiting.popleft()
        return excess

    def take(self, max_n: int) -> list[str]:
        if not self._taken:
            n = min(max_n, len(self._waiting))
            self._taken = [self._waiting.popleft() for _ in range(n)]
        return list(self._taken)

    def ack(self) -> None:
        self._taken = []

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """Counters since start; `depth` and `last_*` are current values."""

    depth: int  # lines waiting, in the buffer
    size_bytes: int  # the buffer's size (on disk for the durable buffer)
    written: int
    retried: int
    quarantined: int
    dropped: int  # lines dropped because the buffer was full
    corrupt: int  # lines the buffer could not read back (torn or corrupt records)
    nonfinite_fields: int
    unsent: int
    last_error: str | None
    last_write_s: float | None
    max_write_s: float | None
    backlog_s: float  # how old the oldest line waiting is (its time stamp), 0 when none
    write_rate: float  # lines stored per second over the last RATE_WINDOW seconds
    draining: bool  # a backlog from an outage is being written


class Delivery:
    """Delivers submitted points through `sink`, at least once and in order.

    `async with Delivery(sink, quarantine_path=..., buffer=DiskBuffer(...)) as delivery:
    delivery.submit(points)`. Points are encoded once, into the buffer (in memory, bounded by
    `max_points`, when none is given); batches of the oldest lines go to the sink and leave the
    buffer only once stored. Retryable and auth errors are retried with capped exponential
    backoff and jitter (auth errors at the cap: a person must act); lines the server refuses,
    and points no server could store, go to `quarantine_path`, one JSON object per line (time,
    reason, line or point). The delivery closes the buffer when it closes.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        batch_size: int = 5000,
        flush_interval: float = 1.0,
        max_points: int = 1_000_000,
        quarantine_path: Path,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        close_timeout: float = 10.0,
        buffer: Buffer | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if max_points < batch_size:
            raise ValueError(
                f"max_points ({max_points}) must be at least batch_size ({batch_size})"
            )
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be more than 0 seconds, not {flush_interval}")
        if not 0 < retry_initial <= retry_max:
            raise ValueError(
                f"retry_initial ({retry_initial}) must be more than 0 and at most "
                f"retry_max ({retry_max})"
            )
        self.sink = sink
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.quarantine_path = quarantine_path
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.close_timeout = close_timeout
        self._buffer: Buffer = buffer if buffer is not None else MemoryBuffer(max_points)
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._not_writing = asyncio.Event()  # cleared while a batch is being written
        self._not_writing.set()
        self._random = random.Random()
        self._down_since: float | None = None
        self._down_kind: type[Exception] | None = None
        self._dropping = 0  # points dropped in the current overflow episode
        self._written = 0
        self._retried = 0
        self._quarantined = 0
        self._dropped = 0
        self._nonfinite = 0
        self._unsent = 0
        self._last_error: str | None = None
        self._last_write_s: float | None = None
        self._max_write_s: float | None = None
        self._oldest_ms: int | None = None
        self._recent_writes: deque[tuple[float, int]] = deque()  # (when, lines) stored
        self._draining = False
        self._drain_started = (0.0, 0, 0)
        self._dropped_lately = False  # since the last batch stored
        self._put_failing = False
        self._durable = not isinstance(self._buffer, MemoryBuffer)

    async def __aenter__(self) -> Self:
        await self.sink.__aenter__()
        if self._buffer.depth >= self.batch_size:  # lines left from before a restart
            self._draining = True
            self._drain_started = (time.monotonic(), self._written, self._buffer.depth)
        self._task = asyncio.create_task(self._run(), name=f"delivery to {self.sink!r}")
        if self._buffer.fsync_interval > 0:
            self._sync_task = asyncio.create_task(self._sync(), name="buffer fsync")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(self.close_timeout)

    def submit(self, points: Sequence[Point]) -> bool:
        """Queue points for delivery; never blocks. NaN/±inf fields are left out and counted;
        a point no server can store (a name InfluxDB cannot hold) goes to quarantine at once.

        False when the buffer could not take them (a disk full or failing): they are counted
        as dropped and an MQTT message must not be acknowledged."""
        if self._closing:
            raise RuntimeError("Delivery is closed: submit() after close() would lose points")
        lines: list[str] = []
        for point in points:
            try:
                line, nonfinite = encode_counting(point)
            except InvalidPointError as exc:
                kept, nonfinite = drop_nonfinite(point)
                self._nonfinite += nonfinite
                self._keep_refused([("point", repr(kept), exc.reason)], str(exc))
                continue
            self._nonfinite += nonfinite
            if line is not None:
                lines.append(line)
        try:
            dropped = self._buffer.put(lines)
        except OSError as exc:
            self._dropped += len(lines)
            self._dropped_lately = True
            if not self._put_failing:
                log.error(
                    "cannot keep readings in %r: %s; they are lost (counted as `dropped`) "
                    "until it can be written again",
                    self._buffer,
                    exc,
                )
            self._put_failing = True
            return False
        if self._put_failing:
            log.warning("%r takes readings again", self._buffer)
            self._put_failing = False
        if dropped:
            if not self._dropping:
                log.error(
                    "%r is full while %s is not keeping up: dropping the %s lines (counted as "
                    "`dropped`); give the buffer more room or fix the writes",
                    self._buffer,
                    self.sink,
                    "newest" if self._buffer.when_full == "drop_newest" else "oldest",
                )
            self._dropping += dropped
            self._dropped += dropped
            self._dropped_lately = True
        if self._buffer.depth >= self.batch_size:
            self._wake.set()
        return True

    def stats(self) -> DeliveryStats:
        now = time.monotonic()
        recent = self._recent_writes
        while recent and recent[0][0] < now - RATE_WINDOW:
            recent.popleft()
        rate = sum(n for _, n in recent) / RATE_WINDOW
        oldest = self._oldest_ms
        backlog = max(0.0, time.time() - oldest / 1000) if oldest is not None else 0.0
        return DeliveryStats(
            depth=self._buffer.depth,
            size_bytes=self._buffer.size_bytes,
            written=self._written,
            retried=self._retried,
            quarantined=self._quarantined,
            dropped=self._dropped,
            corrupt=self._buffer.corrupt_lines,
            nonfinite_fields=self._nonfinite,
            unsent=self._unsent,
            last_error=self._last_error,
            last_write_s=self._last_write_s,
            max_write_s=self._max_write_s,
            backlog_s=backlog if self._buffer.depth else 0.0,
            write_rate=rate,
            draining=self._draining,
        )

    # A deadline argument, not asyncio.timeout: on expiry close still counts and logs the rest.
    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Write what is held, for at most `timeout` seconds (none while the sink is down and the
        buffer is on disk: the lines wait there for the next start); log what is left."""
        if self._task is None:
            return
        task, self._task = self._task, None
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        self._closing = True
        self._wake.set()
        if self._durable and self._down_since is not None:
            timeout = 0  # the sink is down and the lines are safe on disk: no use waiting
        try:
            _, pending = await asyncio.wait({task}, timeout=timeout)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif task.exception() is not None:
                log.error("delivery to %s failed", self.sink, exc_info=task.exception())
            self._unsent = self._buffer.depth
            if self._unsent:
                log.error(
                    "could not write %d points to %s within %s s of closing (last error: %s)%s",
                    self._unsent,
                    self.sink,
                    timeout,
                    self._last_error,
                    "; they wait in the buffer for the next start" if self._durable else "",
                )
        finally:
            try:
                self._buffer.close()
            finally:
                await self.sink.__aexit__(None, None, None)

    async def _sync(self) -> None:
        # When the buffer says (a line not stored by the sink within fsync_interval), in a
        # thread: an fsync on a slow SD card takes tens of milliseconds, which the event loop,
        # polling the machines, must not wait for. A line stored meanwhile needs none.
        buffer = self._buffer
        waited = False
        while True:
            due = buffer.sync_due
            wait = buffer.fsync_interval if due is None else due - time.monotonic()
            if wait > 0:
                # Nothing can fall due before this: older lines only leave, newer come later.
                # (A millisecond more: uvloop's timers may fire that early, and a shorter
                # sleep than theirs returns at once.)
                await asyncio.sleep(wait + 0.001)
                waited = False
                continue
            if not self._not_writing.is_set() and not waited:
                waited = True  # once per time due: a hanging sink holds no sync for long
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(buffer.fsync_interval * SYNC_GRACE):
                        await self._not_writing.wait()
                continue  # due still? the lines were not in that batch, or it failed
            waited = False
            try:
                await asyncio.to_thread(buffer.sync)
            except OSError as exc:
                log.error("cannot sync the buffer to disk: %s", exc)
                # What it had to sync may still be due: try again an interval on, not at once.
                await asyncio.sleep(buffer.fsync_interval)

    async def _run(self) -> None:
        delay = self.retry_initial
        loop = asyncio.get_running_loop()
        taken_at = loop.time()
        while True:
            # A batch every flush_interval from the last one taken, however long writing it
            # took: no line waits longer than that for its turn (see _sync).
            wait = taken_at + self.flush_interval - loop.time()
            if self._buffer.depth < self.batch_size and not self._closing and wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            self._wake.clear()
            taken_at = loop.time()
            try:
                batch = self._buffer.take(self.batch_size)
            except OSError as exc:  # a failing disk: say so, and try again, as for the sink
                self._retried += 1
                self._failed(exc)
                await asyncio.sleep(self._random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.retry_max)
                continue
            if not batch:
                self._oldest_ms = None
                if self._closing:
                    return
                continue
            self._oldest_ms = _time_ms(batch[0])
            started = time.monotonic()
            self._not_writing.clear()
            try:
                await self.sink.write_lines(batch)
            except RejectedWriteError as exc:
                refused = zip(exc.lines, exc.reasons, strict=True)
                self._keep_refused([("line", line, why) for line, why in refused], exc.reason)
                self._stored(len(batch) - len(exc.lines), time.monotonic() - started)
                delay = self.retry_initial
            except Exception as exc:  # any failure holds the batch: only a write stores it
                self._not_writing.set()  # before the pause: the batch was not stored
                self._retried += 1
                self._failed(exc)
                pause = self.retry_max if isinstance(exc, AuthWriteError) else delay
                await asyncio.sleep(self._random.uniform(pause / 2, pause))
                delay = min(delay * 2, self.retry_max)
            else:
                self._stored(len(batch), time.monotonic() - started)
                delay = self.retry_initial
            finally:
                self._not_writing.set()  # after the batch's ack, when it was stored

    def _stored(self, n: int, seconds: float) -> None:
        try:
            self._buffer.ack()
        except OSError as exc:
            # Stored, but the position could not be saved: after a restart these lines are
            # written again, which InfluxDB takes as the same points.
            log.error("cannot save the buffer's acknowledged position: %s", exc)
        self._written += n
        now = time.monotonic()
        self._recent_writes.append((now, n))
        while self._recent_writes[0][0] < now - RATE_WINDOW:
            self._recent_writes.popleft()
        self._last_write_s = seconds
        self._max_write_s = max(seconds, self._max_write_s or 0.0)
        depth = self._buffer.depth
        if self._down_since is not None:
            log.warning(
                "writing to %s again after %.0f s; %d points still queued",
                self.sink,
                time.monotonic() - self._down_since,
                depth,
            )
            self._down_since = self._down_kind = None
            if depth >= self.batch_size:
                self._draining = True
                self._drain_started = (time.monotonic(), self._written, depth)
        elif self._draining and depth < self.batch_size:
            started, written, backlog = self._drain_started
            seconds = time.monotonic() - started
            log.warning(
                "backlog of %d points written in %.1f s (%.0f points/s)",
                backlog,
                seconds,
                (self._written - written) / seconds if seconds > 0 else 0.0,
            )
            self._draining = False
        if self._dropping and not self._dropped_lately:
            log.warning("delivery buffer has room again; %d points were dropped", self._dropping)
            self._dropping = 0
        self._dropped_lately = False

    def _failed(self, exc: Exception) -> None:
        self._last_error = str(exc) or type(exc).__name__
        if self._down_kind is type(exc):
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._down_kind = type(exc)
        if isinstance(exc, AuthWriteError):
            log.error(
                "cannot write to %s until someone fixes it: %s; holding %d points, "
                "retrying every %s s",
                self.sink,
                exc,
                self._buffer.depth,
                self.retry_max,
            )
        elif isinstance(exc, WriteError):
            log.warning(
                "cannot write to %s: %s; holding %d points, retrying",
                self.sink,
                exc,
                self._buffer.depth,
            )
        elif isinstance(exc, OSError):  # reading the buffer back, not the sink
            log.error("cannot read %r back: %s; retrying", self._buffer, exc)
        else:  # a bug in the sink, not an outage: show where
            log.error("%s failed; holding the points, retrying", self.sink, exc_info=exc)

    def _keep_refused(self, refused: list[tuple[str, str, str]], summary: str) -> None:
        """Append (kind, text, reason) records to the quarantine file: kind "line" can be
        replayed once the cause is fixed (`aguante buffer --replay-quarantine`), kind "point" is
        a point no server can store, kept so that nothing vanishes without a trace."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        records = [
            json.dumps({"time": now, "reason": reason, kind: text}, ensure_ascii=False) + "\n"
            for kind, text, reason in refused
        ]
        try:
            append_locked(self.quarantine_path, "".join(records))
        except OSError as error:
            # The log is then the only copy left of these lines.
            log.error(
                "cannot keep refused lines in %s (%s):\n%s",
                self.quarantine_path,
                error,
                "".join(records),
            )
        self._quarantined += len(refused)
        log.warning(
            "%d lines refused by %s, kept in %s: %s",
            len(refused),
            self.sink,
            self.quarantine_path,
            summary,
        )


def _time_ms(line: str) -> int | None:
    try:
        return line_time_ms(line)
    except ValueError:
        return None
