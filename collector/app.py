"""The collector process: every source in its own task, readings into the delivery buffer.

A source task that fails unexpectedly is logged and restarted; nothing a device does can stop
the others or the process. On stop, sources are cancelled first, then the buffer is flushed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from collector.buffer import DiskBuffer
from collector.capacity import CapacityTracker
from collector.config import Config
from collector.delivery import Buffer, Delivery
from collector.lograte import Occasional
from collector.schema import COLLECTOR, READING, Point
from collector.sinks import Sink
from collector.sources import Reading, Source, build_sources

__all__ = ["Collector"]

log = logging.getLogger(__name__)

SOURCE_RESTART_DELAY = 5.0
TICK_INTERVAL = 1.0  # machine states: staleness, pending changes, finished minutes
CHECKPOINT_INTERVAL = 10.0  # at most this much of machine-state time is lost in a crash
UNDECODABLE_LOG_INTERVAL = 600.0
HEALTH_SLICE = 100  # health points submitted at a time (see _report)


class Collector:
    """Runs sources into a sink until `stop` is set, then flushes what it holds."""

    def __init__(
        self,
        config: Config,
        *,
        sink: Sink,
        sources: Sequence[Source] | None = None,
        quarantine_path: Path | None = None,
        buffer_path: Path | None = None,
        flush_timeout: float = 10.0,
        restart_delay: float = SOURCE_RESTART_DELAY,
        state_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        tick_interval: float = TICK_INTERVAL,
        buffer: Buffer | None = None,
    ) -> None:
        """`buffer` stands in for the disk buffer the config describes (tests of a failing
        disk); `clock` for the wall clock."""
        self.config = config
        self.sink = sink
        self.sources = list(build_sources(config) if sources is None else sources)
        self._quarantine = quarantine_path or Path(config.influxdb.quarantine_file)
        self._buffer_path = buffer_path or Path(config.buffer.directory)
        self._flush_timeout = flush_timeout
        self._restart_delay = restart_delay
        sectors = {m.id: m.sector for m in config.machines}
        self._tags = {
            m: {"factory": config.factory, "sector": s, "machine": m} for m, s in sectors.items()
        }
        self.delivery: Delivery | None = None
        self._state_path = state_path
        self._clock = clock
        self._tick_interval = tick_interval
        self._given_buffer = buffer
        self.capacity: CapacityTracker | None = None
        self._undecodable = Occasional(UNDECODABLE_LOG_INTERVAL)
        self._state_errors = Occasional(UNDECODABLE_LOG_INTERVAL)
        self._ack_errors = Occasional(UNDECODABLE_LOG_INTERVAL)
        self._previous_handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
        self._previous_handler = None

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    def to_point(self, reading: Reading) -> Point:
        return Point(READING, self._tags[reading.machine], reading.values, reading.time_ms)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_error)
        try:
            await self._run(stop)
        finally:
            loop.set_exception_handler(self._previous_handler)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        if exception is not None and type(exception).__module__.startswith("pymodbus"):
            # A device answered bytes pymodbus cannot decode: asyncio closes the link (the
            # source opens it again and counts the error) and would log a traceback each time.
            if self._undecodable.happened():
                log.warning(
                    "a Modbus device sent an answer that cannot be decoded (%s); its link is "
                    "closed and opened again (%d such answers so far, said again at most every "
                    "%.0f min)",
                    exception,
                    self._undecodable.count,
                    UNDECODABLE_LOG_INTERVAL / 60,
                )
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    async def _run(self, stop: asyncio.Event) -> None:
        influx, settings = self.config.influxdb, self.config.buffer
        buffer = self._given_buffer
        if buffer is None:
            buffer = DiskBuffer(
                self._buffer_path,
                max_bytes=settings.max_bytes,
                segment_bytes=settings.segment_bytes,
                fsync_interval=settings.fsync_interval,
                when_full=settings.when_full,
                cache_lines=influx.max_buffered_points,
            )
        delivery = Delivery(
            self.sink,
            batch_size=influx.batch_size,
            flush_interval=influx.flush_interval,
            max_points=influx.max_buffered_points,
            quarantine_path=self._quarantine,
            close_timeout=self._flush_timeout,
            buffer=buffer,
        )
        self.delivery = delivery
        if any(m.state is not None for m in self.config.machines):
            self.capacity = CapacityTracker(
                self.config, now_ms=self._now_ms(), state_path=self._state_path
            )
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(delivery)  # opens and closes the sink
            # Close order: sources stop before the delivery flushes what they gave it.
            for source in self.sources:
                await stack.enter_async_context(source)
            tasks = [
                asyncio.create_task(self._pump(source, delivery), name=f"source {source.name}")
                for source in self.sources
            ]
            tasks.append(asyncio.create_task(self._report(delivery), name="collector health"))
            if self.capacity is not None:
                tasks.append(
                    asyncio.create_task(self._track(self.capacity, delivery), name="machine states")
                )
            try:
                await stop.wait()
            finally:
                await _cancel_and_wait(tasks, self._flush_timeout)
                if self.capacity is not None:
                    delivery.submit(self.capacity.close(self._now_ms()))
                delivery.submit(self._health_points())
        log.info("collector stopped")

    async def _pump(self, source: Source, delivery: Delivery) -> None:
        def keep(readings: Sequence[Reading]) -> None:
            # Into the buffer, then acknowledged, then shown to the machine states. Readings the
            # buffer cannot take (disk full) are not acknowledged: the broker keeps their
            # messages and sends them again after a reconnection, and the states count them
            # then; readings that never come back (Modbus, QoS 0: nothing to acknowledge) they
            # count now. (A message's ack rides on its last reading only, so a batch with any
            # ack waits whole.) And when keeping a turn's readings fails, which the MQTT source
            # then tries one message at a time, no state has counted them yet (a counter seen
            # twice would count as a restart).
            stored = delivery.submit([self.to_point(reading) for reading in readings])
            if stored:
                self._acknowledge(readings)
            comes_back = not stored and any(reading.ack is not None for reading in readings)
            if self.capacity is not None and not comes_back:
                self._observe(self.capacity, readings, delivery)

        while True:
            try:
                await source.run(keep)
                # A source that ends is started again, after the same pause as a failed one.
                log.warning(
                    "%s: source ended; restarting in %.0f s", source.name, self._restart_delay
                )
                await asyncio.sleep(self._restart_delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one source must not stop the plant's other machines being read.
                log.exception(
                    "%s: source failed; restarting in %.0f s", source.name, self._restart_delay
                )
                await asyncio.sleep(self._restart_delay)

    def _acknowledge(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            if reading.ack is None:
                continue
            try:
                reading.ack()
            except Exception:
                # Stored already: a failed ack at worst brings the message again (at least
                # once), and must not have the source keep the turn a second time.
                if self._ack_errors.happened():
                    log.exception(
                        "acknowledging a message failed (%d so far, said again at most every "
                        "%.0f min)",
                        self._ack_errors.count,
                        UNDECODABLE_LOG_INTERVAL / 60,
                    )

    def _observe(
        self, capacity: CapacityTracker, readings: Sequence[Reading], delivery: Delivery
    ) -> None:
        # Nothing may escape from here: the readings are stored and acknowledged already, and
        # a failure would have the MQTT source keep them again, one message at a time.
        points: list[Point] = []
        for reading in readings:
            try:
                points += capacity.observe(reading)
            except Exception:
                # A bug in one machine's state must not cost the other machines' states.
                self._state_failed(reading.machine)
        if points:
            try:
                delivery.submit(points)
            except Exception:
                self._state_failed("machine states")

    def _state_failed(self, what: str) -> None:
        if self._state_errors.happened():
            log.exception(
                "%s: machine state could not take a reading (%d such failures so far, said "
                "again at most every %.0f min); please report this bug",
                what,
                self._state_errors.count,
                UNDECODABLE_LOG_INTERVAL / 60,
            )

    async def _track(self, capacity: CapacityTracker, delivery: Delivery) -> None:
        saved = time.monotonic()
        while True:
            await asyncio.sleep(self._tick_interval)
            try:
                unavailable = [u for source in self.sources for u in source.unavailable()]
                points = capacity.tick(self._now_ms(), unavailable)
                if points:
                    delivery.submit(points)
                if time.monotonic() - saved >= CHECKPOINT_INTERVAL:
                    capacity.save()
                    saved = time.monotonic()
            except Exception:
                # A bug here must not stop the readings; it is logged and tried again.
                log.exception("machine states: tick failed")

    async def _report(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            points = self._health_points()
            # In slices with the loop free between them: a thousand machines' health encoded
            # at once held back every poll due meanwhile (the scale benchmark's p99 jitter).
            for start in range(0, len(points), HEALTH_SLICE):
                delivery.submit(points[start : start + HEALTH_SLICE])
                await asyncio.sleep(0)

    def _health_points(self) -> list[Point]:
        now = time.time_ns() // 1_000_000
        points = []
        source_tags = {"factory": self.config.factory, "sector": "_collector"}
        for source in self.sources:
            for record in source.health_records():
                if record.machine is None:
                    tags = source_tags | {"machine": f"_{source.kind}"}
                else:
                    tags = dict(self._tags[record.machine])
                points.append(Point(COLLECTOR, tags | dict(record.tags), record.fields, now))
        if self.capacity is not None:
            for record in self.capacity.health_records():
                if record.machine is not None:
                    tags = self._tags[record.machine]
                    points.append(Point(COLLECTOR, tags, record.fields, now))
        if self.delivery is not None:
            stats = self.delivery.stats()
            tags = {"factory": self.config.factory, "sector": "_collector", "machine": "_buffer"}
            buffer_fields: dict[str, bool | int | float | str] = {
                "buffer_depth": stats.depth,
                "buffer_bytes": stats.size_bytes,
                "backlog_s": round(stats.backlog_s, 3),
                "write_rate": round(stats.write_rate, 1),
                "draining": stats.draining,
                "written": stats.written,
                "retried": stats.retried,
                "quarantined": stats.quarantined,
                "dropped": stats.dropped,
                "corrupt": stats.corrupt,
            }
            points.append(Point(COLLECTOR, tags, buffer_fields, now))
        return points


async def _cancel_and_wait(tasks: list[asyncio.Task[None]], deadline: float) -> None:
    # Python 3.11's asyncio.wait_for, which pymodbus awaits answers with, can swallow a
    # cancellation that races with an answer: cancel again until every task has really ended,
    # but not past the deadline: a stuck task must not keep the buffer from being flushed.
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    pending = set(tasks)
    while pending and loop.time() < give_up:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(1.0, give_up - loop.time()))
    for task in pending:
        log.error("%s did not stop within %.0f s; leaving it behind", task.get_name(), deadline)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("%s ended with an error", task.get_name(), exc_info=task.exception())
