"""Delivery: batching, retries, quarantine, overflow and closing; MemorySink and real InfluxDB."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from collector.buffer import DiskBuffer
from collector.delivery import SYNC_GRACE, Delivery, MemoryBuffer
from collector.lineprotocol import encode_point
from collector.schema import Point
from collector.sinks import AuthWriteError, RetryableWriteError
from collector.sinks.influxdb import InfluxDBSink
from collector.sinks.memory import MemorySink
from tests.collector.failing_disk import FailingDisk
from tests.conftest import InfluxDBDatabase
from tests.services import InfluxDB
from tests.waiting import eventually

T0 = 1_700_000_000_000
FAST: dict[str, Any] = {"flush_interval": 0.02, "retry_initial": 0.01, "retry_max": 0.05}


def points(n: int, start: int = 0) -> list[Point]:
    return [
        Point("reading", {"machine": "m1"}, {"v": float(i)}, T0 + i)
        for i in range(start, start + n)
    ]


def test_memory_buffer_hands_out_the_same_batch_until_acked() -> None:
    buffer = MemoryBuffer(max_points=10)
    assert buffer.put(points(4)) == 0
    assert buffer.take(3) == points(3)
    assert buffer.take(3) == points(3)  # not acked: the same batch again
    buffer.ack()
    assert buffer.depth == 1
    assert buffer.take(3) == points(1, start=3)


def test_memory_buffer_drops_oldest_but_never_the_batch_being_sent() -> None:
    buffer = MemoryBuffer(max_points=5)
    buffer.put(points(3))
    assert buffer.take(2) == points(2)
    assert buffer.put(points(4, start=3)) == 2  # 2 taken + 5 waiting > 5: drop points 2 and 3
    assert buffer.depth == 5
    buffer.ack()
    assert buffer.take(10) == points(3, start=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, not 0"),
        ({"batch_size": 10, "max_points": 5}, "max_points (5) must be at least batch_size (10)"),
        ({"flush_interval": 0}, "flush_interval must be more than 0 seconds, not 0"),
        (
            {"retry_initial": 5, "retry_max": 1},
            "retry_initial (5) must be more than 0 and at most retry_max (1)",
        ),
    ],
)
def test_bad_arguments_are_refused_at_once(
    tmp_path: Path, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Delivery(MemorySink(), quarantine_path=tmp_path / "q.jsonl", **kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


async def test_points_arrive_in_order_in_batches(tmp_path: Path) -> None:
    sink = MemorySink()
    async with Delivery(sink, batch_size=3, quarantine_path=tmp_path / "q", **FAST) as delivery:
        for i in range(10):
            delivery.submit(points(1, start=i))
    assert sink.entered and sink.exited
    assert sink.points == points(10)
    assert all(1 <= len(batch) <= 3 for batch in sink.batches)
    stats = delivery.stats()
    assert (stats.written, stats.depth, stats.retried, stats.unsent) == (10, 0, 0, 0)
    assert stats.last_write_s is not None and stats.max_write_s is not None


async def test_a_lone_point_is_sent_after_flush_interval(tmp_path: Path) -> None:
    sink = MemorySink()
    async with Delivery(sink, batch_size=100, quarantine_path=tmp_path / "q", **FAST) as delivery:
        delivery.submit(points(1))
        await eventually(lambda: sink.points == points(1))


async def test_retries_lose_and_reorder_nothing_and_log_once_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    sink.fail_next(5, RetryableWriteError("InfluxDB at http://h: HTTP 503: busy"))
    with caplog.at_level(logging.INFO, logger="collector.delivery"):
        async with Delivery(sink, batch_size=4, quarantine_path=tmp_path / "q", **FAST) as d:
            for i in range(0, 20, 2):
                d.submit(points(2, start=i))
                await asyncio.sleep(0.005)
    assert sink.points == points(20)
    stats = d.stats()
    assert (stats.retried, stats.written) == (5, 20)
    assert stats.last_error == "InfluxDB at http://h: HTTP 503: busy"
    messages = [r.getMessage() for r in caplog.records]
    down = [m for m in messages if m.startswith("cannot write to")]
    back = [m for m in messages if m.startswith("writing to")]
    assert len(down) == 1 and len(back) == 1, messages
    assert re.fullmatch(
        r"cannot write to MemorySink\(\): InfluxDB at http://h: HTTP 503: busy; "
        r"holding \d+ points, retrying",
        down[0],
    )
    assert re.fullmatch(
        r"writing to MemorySink\(\) again after 0 s; \d+ points still queued", back[0]
    )


async def test_auth_errors_hold_the_data_and_are_logged_as_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    sink.fail_next(3, AuthWriteError("InfluxDB at http://h: authentication failed"))
    with caplog.at_level(logging.INFO, logger="collector.delivery"):
        async with Delivery(sink, quarantine_path=tmp_path / "q", **FAST) as delivery:
            delivery.submit(points(5))
            await eventually(lambda: len(sink.points) == 5)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert (
        "authentication failed; holding 5 points, retrying every 0.05 s" in errors[0].getMessage()
    )
    assert not (tmp_path / "q").exists()


async def test_refused_lines_go_to_quarantine_and_the_rest_is_written(tmp_path: Path) -> None:
    sink = MemorySink(reject=lambda p: "negative" if p.fields["v"] in (3.0, 7.0) else None)
    quarantine = tmp_path / "spool" / "quarantine.jsonl"
    async with Delivery(sink, batch_size=5, quarantine_path=quarantine, **FAST) as delivery:
        delivery.submit(points(10))
    assert [p.fields["v"] for p in sink.points] == [0, 1, 2, 4, 5, 6, 8, 9]
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(r["reason"], r["line"]) for r in records] == [
        ("negative", encode_point(points(1, start=3)[0])),
        ("negative", encode_point(points(1, start=7)[0])),
    ]
    assert all(r["time"].endswith("+00:00") for r in records)
    stats = delivery.stats()
    assert (stats.quarantined, stats.written, stats.retried) == (2, 8, 0)


async def test_overflow_drops_the_oldest_waiting_points_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    sink.pause()
    with caplog.at_level(logging.INFO, logger="collector.delivery"):
        async with Delivery(
            sink, batch_size=5, max_points=10, quarantine_path=tmp_path / "q", **FAST
        ) as delivery:
            delivery.submit(points(5))
            await eventually(lambda: sink.attempts == 1)  # the first batch is being sent
            for i in range(5, 30):
                delivery.submit(points(1, start=i))
            assert delivery.stats().dropped == 20
            sink.resume()
    assert sink.points == points(5) + points(5, start=25)
    assert delivery.stats().dropped == 20
    full = [r for r in caplog.records if " is full while " in r.getMessage()]
    assert [r.getMessage() for r in full] == [
        "the delivery buffer (10 lines in memory) is full while MemorySink() is not keeping up: "
        "dropping the oldest lines (counted as `dropped`); give the buffer more room or fix "
        "the writes"
    ]
    assert [
        r
        for r in caplog.records
        if r.getMessage() == "delivery buffer has room again; 20 points were dropped"
    ]


async def test_nonfinite_fields_are_left_out_and_counted(tmp_path: Path) -> None:
    sink = MemorySink()
    async with Delivery(sink, quarantine_path=tmp_path / "q", **FAST) as delivery:
        delivery.submit(
            [
                Point("reading", {}, {"a": math.nan, "b": 1.0}, T0),
                Point("reading", {}, {"a": math.inf}, T0 + 1),
            ]
        )
    assert sink.points == [Point("reading", {}, {"b": 1.0}, T0)]
    assert delivery.stats().nonfinite_fields == 2


async def test_close_gives_up_at_its_deadline_and_reports_what_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    sink.fail_next(10_000, RetryableWriteError("InfluxDB at http://h: down"))
    delivery = Delivery(sink, quarantine_path=tmp_path / "q", close_timeout=0.3, **FAST)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with delivery:
        delivery.submit(points(7))
    assert loop.time() - started < 5  # generous: it must not hang until the sink recovers
    assert delivery.stats().unsent == 7
    assert sink.exited
    assert caplog.records[-1].getMessage() == (
        "could not write 7 points to MemorySink() within 0.3 s of closing "
        "(last error: InfluxDB at http://h: down)"
    )
    with pytest.raises(RuntimeError, match="Delivery is closed"):
        delivery.submit(points(1))


async def test_close_also_gives_up_on_a_hanging_sink(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.pause()
    async with Delivery(sink, quarantine_path=tmp_path / "q", close_timeout=0.2, **FAST) as d:
        d.submit(points(3))
    assert d.stats().unsent == 3


# --- against the real InfluxDB ------------------------------------------------------------------


@pytest.mark.integration
async def test_influxdb_restart_mid_run_loses_nothing(
    start_influxdb: Callable[..., InfluxDB], tmp_path: Path
) -> None:
    server = start_influxdb()
    sink = InfluxDBSink(url=server.url, database="plant", create_database=True, timeout=2.0)
    async with Delivery(
        sink, batch_size=50, quarantine_path=tmp_path / "q", close_timeout=30, **FAST
    ) as delivery:
        for i in range(0, 3000, 10):
            delivery.submit(points(10, start=i))
            if i == 1000:
                server.stop()
            if i == 2000:
                assert delivery.stats().depth > 0  # it really had to hold points
                server.start()
            await asyncio.sleep(0.001)
    stats = delivery.stats()
    assert (stats.written, stats.unsent, stats.quarantined) == (3000, 0, 0)
    assert stats.retried > 0
    rows = server.query('SELECT "v" FROM "reading"', database="plant")
    assert [r["time"] for r in rows] == [T0 + i for i in range(3000)]


@pytest.mark.integration
async def test_type_conflict_quarantines_only_the_bad_line(
    influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    influxdb.create()
    bad = Point("reading", {"machine": "m1"}, {"v": "text"}, T0 + 500)
    batch = points(1000)
    batch[500] = bad
    quarantine = tmp_path / "q.jsonl"
    sink = InfluxDBSink(url=influxdb.url, database=influxdb.database)
    async with Delivery(sink, batch_size=1000, quarantine_path=quarantine, **FAST) as delivery:
        delivery.submit(batch)
    [record] = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert record["line"] == encode_point(bad)
    assert record["reason"] == (
        'partial write: field type conflict: input field "v" on measurement "reading" '
        "is type string, already exists as type float dropped=1"
    )
    rows = influxdb.query('SELECT "v" FROM "reading"')
    assert [r["time"] for r in rows] == [T0 + i for i in range(1000) if i != 500]
    assert (delivery.stats().written, delivery.stats().quarantined) == (999, 1)


@pytest.mark.integration
async def test_missing_database_holds_points_until_it_exists(
    influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    sink = InfluxDBSink(url=influxdb.url, database=influxdb.database)
    async with Delivery(sink, quarantine_path=tmp_path / "q", **FAST) as delivery:
        delivery.submit(points(20))
        await eventually(lambda: delivery.stats().retried >= 2)
        assert delivery.stats().depth == 20
        assert "not found (404" in (delivery.stats().last_error or "")
        influxdb.create()
        await eventually(lambda: delivery.stats().written == 20)
    assert len(influxdb.query('SELECT "v" FROM "reading"')) == 20
    assert not (tmp_path / "q").exists()


# --- with the durable buffer ----------------------------------------------------------------


async def test_points_held_on_disk_are_sent_by_the_next_delivery(tmp_path: Path) -> None:
    down = MemorySink()
    down.fail_next(10_000, RetryableWriteError("InfluxDB at http://h: down"))
    loop = asyncio.get_running_loop()
    buffer = DiskBuffer(tmp_path / "buffer", max_bytes=1 << 20, segment_bytes=1 << 16)
    async with Delivery(down, quarantine_path=tmp_path / "q", buffer=buffer, **FAST) as delivery:
        delivery.submit(points(30))
        await eventually(lambda: delivery.stats().retried > 0)
        closing = loop.time()
    # The sink is down and the points are on disk: closing does not wait for it.
    assert loop.time() - closing < 1.0
    assert delivery.stats().unsent == 30 and not down.points

    up = MemorySink()
    buffer = DiskBuffer(tmp_path / "buffer", max_bytes=1 << 20, segment_bytes=1 << 16)
    assert buffer.recovery.lines == 30
    async with Delivery(up, quarantine_path=tmp_path / "q", buffer=buffer, **FAST) as delivery:
        await eventually(lambda: len(up.points) == 30)
    assert up.points == points(30)
    assert delivery.stats().depth == 0


async def test_a_backlog_is_drained_in_large_batches_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    sink.fail_next(3, RetryableWriteError("InfluxDB at http://h: down"))
    buffer = DiskBuffer(
        tmp_path / "buffer", max_bytes=1 << 24, segment_bytes=1 << 20, cache_lines=100
    )
    with caplog.at_level(logging.INFO, logger="collector.delivery"):
        async with Delivery(
            sink, batch_size=500, quarantine_path=tmp_path / "q", buffer=buffer, **FAST
        ) as delivery:
            for i in range(0, 5000, 10):
                delivery.submit(points(10, start=i))
            await eventually(lambda: delivery.stats().written == 5000)
            stats = delivery.stats()
    assert sink.points == points(5000)  # in order, read back from disk past the cache
    assert max(len(batch) for batch in sink.batches) == 500
    assert stats.write_rate > 0 and stats.depth == 0 and stats.backlog_s == 0
    assert any(
        re.fullmatch(r"backlog of \d+ points written in [\d.]+ s \(\d+ points/s\)", r.getMessage())
        for r in caplog.records
    )


async def test_a_point_no_server_can_store_is_quarantined_at_once(tmp_path: Path) -> None:
    sink = MemorySink()
    quarantine = tmp_path / "q.jsonl"
    bad = Point("#comment", {}, {"v": 1.0}, T0)
    async with Delivery(sink, quarantine_path=quarantine, **FAST) as delivery:
        delivery.submit([bad, *points(2)])
    assert sink.points == points(2)
    [record] = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert record["point"] == repr(bad)
    assert record["reason"] == "a measurement name cannot start with '#'"
    assert delivery.stats().quarantined == 1


async def test_a_failing_disk_read_is_retried_not_the_end_of_delivery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink, disk = MemorySink(), FailingDisk()
    disk.fail_take = 3
    async with Delivery(sink, quarantine_path=tmp_path / "q", buffer=disk, **FAST) as delivery:
        delivery.submit(points(10))
        await eventually(lambda: len(sink.points) == 10)
    assert sink.points == points(10)
    assert delivery.stats().retried == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "cannot read the delivery buffer (10000 lines in memory) back: "
        "[Errno 5] Input/output error; retrying"
    ]


async def test_a_full_disk_refuses_readings_counts_them_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink, disk = MemorySink(), FailingDisk()
    async with Delivery(sink, quarantine_path=tmp_path / "q", buffer=disk, **FAST) as delivery:
        assert delivery.submit(points(2))
        disk.fail_put = True
        assert not delivery.submit(points(3, start=2))  # an MQTT message stays unacknowledged
        assert not delivery.submit(points(1, start=5))
        disk.fail_put = False
        assert delivery.submit(points(1, start=6))
        await eventually(lambda: len(sink.points) == 3)
    assert sink.points == points(2) + points(1, start=6)
    assert delivery.stats().dropped == 4
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("cannot keep readings")] == [
        "cannot keep readings in the delivery buffer (10000 lines in memory): [Errno 28] No "
        "space left on device; they are lost (counted as `dropped`) until it can be written again"
    ]
    assert "the delivery buffer (10000 lines in memory) takes readings again" in messages


async def test_a_backlog_left_by_a_restart_is_reported_as_draining(tmp_path: Path) -> None:
    buffer = DiskBuffer(tmp_path / "buffer", max_bytes=1 << 22, segment_bytes=1 << 18)
    buffer.put([encode_point(p) for p in points(2000)])
    buffer.close()
    sink = MemorySink()
    sink.pause()
    buffer = DiskBuffer(tmp_path / "buffer", max_bytes=1 << 22, segment_bytes=1 << 18)
    async with Delivery(
        sink, batch_size=500, quarantine_path=tmp_path / "q", buffer=buffer, **FAST
    ) as delivery:
        stats = delivery.stats()
        assert stats.draining and stats.depth == 2000
        await eventually(lambda: delivery.stats().backlog_s > 0)  # the oldest line's age
        sink.resume()
        await eventually(lambda: not delivery.stats().draining)
    assert sink.points == points(2000)


# --- when the durable buffer is fsynced -------------------------------------------------------


class CountingBuffer(DiskBuffer):
    """The durable buffer, counting its syncs (and when each came, on the loop's clock)."""

    syncs: list[float]

    def sync(self) -> None:
        self.syncs.append(time.monotonic())
        super().sync()


def counting_buffer(tmp_path: Path, fsync_interval: float) -> CountingBuffer:
    buffer = CountingBuffer(
        tmp_path / "buffer", max_bytes=1 << 22, segment_bytes=1 << 18, fsync_interval=fsync_interval
    )
    buffer.syncs = []
    buffer.sync()  # its first segment's name: synced, as the delivery would soon after opening
    buffer.syncs.clear()
    return buffer


async def submit_for(delivery: Delivery, seconds: float, every: float = 0.005) -> int:
    loop = asyncio.get_running_loop()
    end, n = loop.time() + seconds, 0
    while loop.time() < end:
        delivery.submit(points(1, start=n))
        n += 1
        await asyncio.sleep(every)
    return n


async def stored_with_syncs(
    tmp_path: Path,
    sink: MemorySink,
    seconds: float,
    *,
    fsync_interval: float,
    flush_interval: float,
) -> tuple[int, int]:
    """Points submitted for `seconds` and all stored by `sink`: how many, and the buffer's
    syncs meanwhile."""
    buffer = counting_buffer(tmp_path, fsync_interval=fsync_interval)
    async with Delivery(
        sink, quarantine_path=tmp_path / "q", buffer=buffer, flush_interval=flush_interval
    ) as delivery:
        n = await submit_for(delivery, seconds)
        await eventually(lambda: len(sink.points) == n)
        return n, len(buffer.syncs)


async def test_lines_the_sink_stores_in_time_are_never_fsynced(tmp_path: Path) -> None:
    sink = MemorySink()
    n, syncs = await stored_with_syncs(tmp_path, sink, 1.0, fsync_interval=0.2, flush_interval=0.02)
    assert syncs == 0  # five fsync intervals went by, with lines put all along
    assert sink.points == points(n)


class SlowSink(MemorySink):
    """Takes `seconds` to store each batch, as a real server does."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def write(self, points: Sequence[Point], *, lines: Sequence[str] | None = None) -> None:
        await asyncio.sleep(self.seconds)
        await super().write(points, lines=lines)


async def test_with_flush_and_fsync_intervals_alike_a_batch_being_written_is_waited_for(
    tmp_path: Path,
) -> None:
    # Lines put just after a batch was taken wait a flush interval for the next one, and fall
    # due while it is written: the sync waits for the write (up to SYNC_GRACE of the interval)
    # and then finds them stored.
    _, syncs = await stored_with_syncs(
        tmp_path, SlowSink(0.02), 2.0, fsync_interval=0.1, flush_interval=0.1
    )
    assert syncs <= 5  # of 16 batches; each would sync if its write were not waited for


async def test_lines_the_sink_does_not_store_are_fsynced_every_interval(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.fail_next(10_000, RetryableWriteError("InfluxDB at http://h: down"))
    buffer = counting_buffer(tmp_path, fsync_interval=0.1)
    async with Delivery(sink, quarantine_path=tmp_path / "q", buffer=buffer, **FAST) as delivery:
        started = time.monotonic()
        await submit_for(delivery, 1.0)
        syncs = list(buffer.syncs)
    assert 5 <= len(syncs) <= 12  # about one per interval while lines keep coming
    # None later than an interval (and its grace, and some lateness of the loop) after a put.
    gaps = [b - a for a, b in zip([started, *syncs], syncs, strict=False)]
    assert max(gaps) < 0.1 * (1 + SYNC_GRACE) + 0.1


async def test_a_hanging_sink_holds_a_sync_back_only_for_the_grace(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.pause()  # every write hangs
    buffer = counting_buffer(tmp_path, fsync_interval=0.1)
    async with Delivery(
        sink, quarantine_path=tmp_path / "q", buffer=buffer, close_timeout=0.1, **FAST
    ) as delivery:
        await submit_for(delivery, 1.0)
        syncs = len(buffer.syncs)
        sink.resume()
    assert syncs >= 5
