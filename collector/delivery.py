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

from collector.lineprotocol import drop_nonfinite
from collector.schema import Point
from collector.sinks import AuthWriteError, RejectedWriteError, Sink, WriteError

__all__ = ["Buffer", "Delivery", "DeliveryStats", "MemoryBuffer"]

log = logging.getLogger(__name__)


class Buffer(Protocol):
    """Points waiting for the sink, oldest first. `take` hands out the oldest points without
    removing them; `ack` removes what the last `take` handed out, once it is stored."""

    @property
    def depth(self) -> int: ...

    def put(self, points: Sequence[Point]) -> int:
        """Add points; returns how many of the oldest were dropped to stay within bounds."""
        ...

    def take(self, max_n: int) -> list[Point]: ...

    def ack(self) -> None: ...


class MemoryBuffer:
    """A bounded in-memory `Buffer`. Drops the oldest points that are not being sent."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self._waiting: deque[Point] = deque()
        self._taken: list[Point] = []

    @property
    def depth(self) -> int:
        return len(self._waiting) + len(self._taken)

    def put(self, points: Sequence[Point]) -> int:
        waiting = self._waiting
        waiting.extend(points)
        excess = len(waiting) + len(self._taken) - self.max_points
        if excess <= 0:
            return 0  # the usual case: called for every reading
        # The taken batch may be stored already; dropping the next-oldest loses nothing twice.
        excess = min(excess, len(waiting))
        for _ in range(excess):
            waiting.popleft()
        return excess

    def take(self, max_n: int) -> list[Point]:
        if not self._taken:
            n = min(max_n, len(self._waiting))
            self._taken = [self._waiting.popleft() for _ in range(n)]
        return list(self._taken)

    def ack(self) -> None:
        self._taken = []


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """Counters since start; `depth` and `last_*` are current values."""

    depth: int
    written: int
    retried: int
    quarantined: int
    dropped: int
    nonfinite_fields: int
    unsent: int
    last_error: str | None
    last_write_s: float | None
    max_write_s: float | None


class Delivery:
    """Delivers submitted points through `sink`, at least once and in order.

    `async with Delivery(sink, quarantine_path=...) as delivery: delivery.submit(points)`.
    Retryable and auth errors are retried with capped exponential backoff and jitter (auth errors
    at the cap: a person must act); lines the server refuses go to `quarantine_path`, one JSON
    object per line (time, reason, line); past `max_points` the oldest points are dropped.
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
        self._max_points = max_points
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
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

    async def __aenter__(self) -> Self:
        await self.sink.__aenter__()
        self._task = asyncio.create_task(self._run(), name=f"delivery to {self.sink!r}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(self.close_timeout)

    def submit(self, points: Sequence[Point]) -> None:
        """Queue points for delivery; never blocks. NaN/±inf fields are left out and counted."""
        if self._closing:
            raise RuntimeError("Delivery is closed: submit() after close() would lose points")
        storable: list[Point] = []
        for point in points:
            kept, nonfinite = drop_nonfinite(point)
            self._nonfinite += nonfinite
            if kept.fields:
                storable.append(kept)
        dropped = self._buffer.put(storable)
        if dropped:
            if not self._dropping:
                log.warning(
                    "delivery buffer full (%d points) while %s is not keeping up: "
                    "dropping the oldest points",
                    self._max_points,
                    self.sink,
                )
            self._dropping += dropped
            self._dropped += dropped
        if self._buffer.depth >= self.batch_size:
            self._wake.set()

    def stats(self) -> DeliveryStats:
        return DeliveryStats(
            depth=self._buffer.depth,
            written=self._written,
            retried=self._retried,
            quarantined=self._quarantined,
            dropped=self._dropped,
            nonfinite_fields=self._nonfinite,
            unsent=self._unsent,
            last_error=self._last_error,
            last_write_s=self._last_write_s,
            max_write_s=self._max_write_s,
        )

    # A deadline argument, not asyncio.timeout: on expiry close still counts and logs the rest.
    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Write what is held, for at most `timeout` seconds; log and count what is left."""
        if self._task is None:
            return
        task, self._task = self._task, None
        self._closing = True
        self._wake.set()
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
                    "could not write %d points to %s within %s s of closing (last error: %s)",
                    self._unsent,
                    self.sink,
                    timeout,
                    self._last_error,
                )
        finally:
            await self.sink.__aexit__(None, None, None)

    async def _run(self) -> None:
        delay = self.retry_initial
        while True:
            if self._buffer.depth < self.batch_size and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._wake.wait()
                self._wake.clear()
            batch = self._buffer.take(self.batch_size)
            if not batch:
                if self._closing:
                    return
                continue
            started = time.monotonic()
            try:
                await self.sink.write(batch)
            except RejectedWriteError as exc:
                self._quarantine(exc)
                self._stored(len(batch) - len(exc.lines), time.monotonic() - started)
                delay = self.retry_initial
            except Exception as exc:  # any failure holds the batch: only a write stores it
                self._retried += 1
                self._failed(exc)
                pause = self.retry_max if isinstance(exc, AuthWriteError) else delay
                await asyncio.sleep(self._random.uniform(pause / 2, pause))
                delay = min(delay * 2, self.retry_max)
            else:
                self._stored(len(batch), time.monotonic() - started)
                delay = self.retry_initial

    def _stored(self, n: int, seconds: float) -> None:
        self._buffer.ack()
        self._written += n
        self._last_write_s = seconds
        self._max_write_s = max(seconds, self._max_write_s or 0.0)
        if self._down_since is not None:
            log.warning(
                "writing to %s again after %.0f s; %d points still queued",
                self.sink,
                time.monotonic() - self._down_since,
                self._buffer.depth,
            )
            self._down_since = self._down_kind = None
        if self._dropping and self._buffer.depth < self._max_points:
            log.warning("delivery buffer has room again; %d points were dropped", self._dropping)
            self._dropping = 0

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
        else:  # a bug in the sink, not an outage: show where
            log.error("%s failed; holding the points, retrying", self.sink, exc_info=exc)

    def _quarantine(self, exc: RejectedWriteError) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        records = [
            json.dumps({"time": now, "reason": reason, "line": line}, ensure_ascii=False) + "\n"
            for line, reason in zip(exc.lines, exc.reasons, strict=True)
        ]
        try:
            self.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
            with self.quarantine_path.open("a", encoding="utf-8") as file:
                file.writelines(records)
        except OSError as error:
            # The log is then the only copy left of these lines.
            log.error(
                "cannot keep refused lines in %s (%s):\n%s",
                self.quarantine_path,
                error,
                "".join(records),
            )
        self._quarantined += len(exc.lines)
        log.warning(
            "%d lines refused by %s, kept in %s: %s",
            len(exc.lines),
            self.sink,
            self.quarantine_path,
            exc.reason,
        )
