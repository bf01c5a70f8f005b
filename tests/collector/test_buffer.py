"""The durable disk buffer: order, acks, reopening, rotation, bounds, recovery from torn and
corrupt records, the lock, `inspect_buffer`, and a stateful model check with crashes."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from collector.buffer import (
    MAGIC,
    BufferDirectoryError,
    DiskBuffer,
    Recovery,
    _encode_record,
    inspect_buffer,
)

SEGMENT = 4096
HEADER = 16  # magic, length, lines, crc32


def open_buffer(directory: Path, **options: Any) -> DiskBuffer:
    options.setdefault("segment_bytes", SEGMENT)
    options.setdefault("max_bytes", 1 << 30)
    options.setdefault("fsync_interval", 3600.0)
    return DiskBuffer(directory, **options)


def crash(buffer: DiskBuffer) -> None:
    """The process dies: no close, no fsync; what `os.write` handed the OS stays, and the
    descriptors (and so the directory's lock) go with the process."""
    for fd in (buffer._fd, buffer._cursor_fd, *buffer._retired):
        os.close(fd)
    buffer._fd = buffer._cursor_fd = -1
    buffer._retired = []
    buffer._lock.close()


@pytest.fixture
def buffers() -> Iterator[list[DiskBuffer]]:
    """Buffers a test opens, closed at its end even when it fails."""
    opened: list[DiskBuffer] = []
    yield opened
    for buffer in opened:
        if not buffer._lock.closed:
            buffer.close()


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def disk_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in segment_files(directory))


def line(n: int, pad: int = 0) -> str:
    return f'm,id={n:06d} v={n}i,p="{"x" * pad}" {n}'


def records(count: int, per_record: int, pad: int = 0, first: int = 0) -> list[list[str]]:
    return [
        [line(first + r * per_record + i, pad) for i in range(per_record)] for r in range(count)
    ]


def drain(buffer: DiskBuffer, max_n: int = 1_000_000) -> list[str]:
    """Take and ack until the buffer is empty; the lines in the order they came."""
    out: list[str] = []
    while True:
        batch = buffer.take(max_n)
        if not batch:
            return out
        assert buffer.take(max_n) == batch
        out.extend(batch)
        buffer.ack()


def flatten(batches: Sequence[Sequence[str]]) -> list[str]:
    return [item for batch in batches for item in batch]


def record_offsets(batches: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """(start, end) of each record in one segment written from empty."""
    spans, position = [], 0
    for batch in batches:
        size = len(_encode_record(batch))
        spans.append((position, position + size))
        position += size
    return spans


def flip(path: Path, offset: int, count: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"segment_bytes": 4095}, "segment_bytes"),
        ({"segment_bytes": 4096, "max_bytes": 4 * 4096 - 1}, "max_bytes"),
        ({"fsync_interval": -1.0}, "fsync_interval"),
        ({"when_full": "drop_everything"}, "when_full"),
        ({"cache_lines": 0}, "cache_lines"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_buffer(tmp_path / "buffer", **options)
    # Refused before the directory is locked: it can be opened at once with good options.
    open_buffer(tmp_path / "buffer").close()


# -- put, take, ack --------------------------------------------------------------------------------


def test_take_hands_out_whole_records_in_order_and_the_same_batch_until_ack(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    assert buffer.take(10) == []
    assert buffer.put([]) == 0
    assert buffer.put(["a1", "a2"]) == 0
    assert buffer.put(["b1"]) == 0
    assert buffer.put(["c1", "c2", "c3"]) == 0
    assert buffer.depth == 6
    assert buffer.take(3) == ["a1", "a2", "b1"]
    buffer.put(["d1"])
    assert buffer.take(100) == ["a1", "a2", "b1"]  # the same batch until ack
    assert buffer.depth == 7
    buffer.ack()
    assert buffer.depth == 4
    assert buffer.take(1) == ["c1", "c2", "c3"]  # at least one record, even a larger one
    buffer.ack()
    buffer.ack()  # nothing taken: nothing happens
    assert buffer.depth == 1
    assert buffer.take(2) == ["d1"]
    buffer.ack()
    assert buffer.take(2) == []
    assert buffer.depth == 0


def test_the_lines_handed_in_and_out_are_copies(tmp_path: Path, buffers: list[DiskBuffer]) -> None:
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    batch = ["a1", "a2"]
    buffer.put(batch)
    batch.append("changed after put")
    taken = buffer.take(10)
    taken.append("changed after take")
    assert buffer.take(10) == ["a1", "a2"]


def test_take_stops_before_a_record_that_would_pass_max_n(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    for batch in (["a1", "a2"], ["b1", "b2"], ["c1"]):
        buffer.put(batch)
    assert buffer.take(3) == ["a1", "a2"]
    buffer.ack()
    assert buffer.take(3) == ["b1", "b2", "c1"]


def test_reopening_keeps_what_was_not_acked_in_order(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    batches = records(5, 3)
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    for batch in batches:
        buffer.put(batch)
    assert buffer.take(3) == batches[0]
    buffer.ack()
    assert buffer.take(3) == batches[1]  # taken, not acked: it must come back
    buffer.close()

    again = open_buffer(tmp_path)
    buffers.append(again)
    assert again.recovery == Recovery(segments=1, lines=12, lost_bytes=0, lost_lines=0)
    assert again.depth == 12
    assert drain(again, 4) == flatten(batches[1:])
    again.close()

    empty = open_buffer(tmp_path)
    buffers.append(empty)
    assert empty.recovery.lines == 0
    assert empty.depth == 0
    assert empty.take(10) == []


def test_segments_rotate_and_acked_segments_are_removed(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    batches = records(60, 2, pad=150)  # about 330 bytes a record: 12 records a segment
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    for batch in batches:
        buffer.put(batch)
    files = segment_files(tmp_path)
    assert len(files) >= 5
    assert all(path.stat().st_size <= SEGMENT for path in files)
    assert buffer.size_bytes == disk_size(tmp_path)

    taken: list[str] = []
    while len(taken) < 60:  # half of it
        taken.extend(buffer.take(6))
        buffer.ack()
    assert taken == flatten(batches)[:60]
    left = segment_files(tmp_path)
    assert left == files[len(files) - len(left) :]
    assert len(left) < len(files) - 1
    assert buffer.size_bytes == disk_size(tmp_path)

    assert taken + drain(buffer, 6) == flatten(batches)
    assert segment_files(tmp_path) == files[-1:]
    assert buffer.size_bytes == disk_size(tmp_path)
    buffer.close()

    again = open_buffer(tmp_path)
    buffers.append(again)
    assert again.depth == 0
    assert again.take(10) == []


def test_a_reopened_full_segment_is_followed_by_a_new_one(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    batch = [line(1, pad=SEGMENT)]  # a record larger than a segment
    buffer.put(batch)
    buffer.close()
    again = open_buffer(tmp_path)
    buffers.append(again)
    again.put(["after"])
    assert len(segment_files(tmp_path)) == 2
    assert drain(again) == [*batch, "after"]


def run_script(directory: Path, cache_lines: int, seed: int) -> list[object]:
    """A fixed random sequence of puts, takes, acks and reopenings; what was observed."""
    rng = random.Random(seed)
    seen: list[object] = []
    buffer = open_buffer(directory, cache_lines=cache_lines)
    try:
        n = 0
        for _ in range(400):
            action = rng.random()
            if action < 0.5:
                size = rng.randint(1, 6)
                buffer.put([line(n + i, pad=rng.randint(0, 200)) for i in range(size)])
                n += size
            elif action < 0.8:
                seen.append(buffer.take(rng.randint(1, 12)))
            elif action < 0.97:
                buffer.ack()
            else:
                buffer.close()
                buffer = open_buffer(directory, cache_lines=cache_lines)
            seen.append(buffer.depth)
            assert buffer.size_bytes == disk_size(directory)
        seen.append(drain(buffer, 7))
    finally:
        buffer.close()
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cache_and_disk_give_the_same_lines(tmp_path: Path, seed: int) -> None:
    cached = run_script(tmp_path / "cached", 100_000, seed)
    assert run_script(tmp_path / "disk", 1, seed) == cached
    assert run_script(tmp_path / "some", 8, seed) == cached


# -- full ------------------------------------------------------------------------------------------


def test_drop_oldest_keeps_the_newest_within_max_bytes(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    max_bytes = 4 * SEGMENT
    buffer = open_buffer(tmp_path, max_bytes=max_bytes, when_full="drop_oldest")
    buffers.append(buffer)
    put: list[str] = []
    dropped = 0
    for n in range(0, 600, 3):
        batch = [line(n + i, pad=20) for i in range(3)]
        dropped += buffer.put(batch)
        put.extend(batch)
        assert buffer.size_bytes <= max_bytes
        assert buffer.size_bytes == disk_size(tmp_path)
        assert buffer.dropped == dropped
        assert buffer.depth == len(put) - dropped
    assert dropped > 0
    kept = drain(buffer, 50)
    assert kept == put[dropped:]  # exactly the newest, in order


def test_drop_oldest_survives_reopening(tmp_path: Path, buffers: list[DiskBuffer]) -> None:
    max_bytes = 4 * SEGMENT
    buffer = open_buffer(tmp_path, max_bytes=max_bytes, when_full="drop_oldest")
    buffers.append(buffer)
    put: list[str] = []
    for n in range(0, 400, 2):
        batch = [line(n), line(n + 1)]
        buffer.put(batch)
        put.extend(batch)
    assert buffer.take(5) == put[buffer.dropped : buffer.dropped + 4]
    buffer.ack()
    dropped = buffer.dropped
    buffer.close()
    again = open_buffer(tmp_path, max_bytes=max_bytes)
    buffers.append(again)
    assert drain(again) == put[dropped + 4 :]


def test_drop_oldest_while_a_batch_is_taken(tmp_path: Path, buffers: list[DiskBuffer]) -> None:
    max_bytes = 4 * SEGMENT
    buffer = open_buffer(tmp_path, max_bytes=max_bytes, when_full="drop_oldest")
    buffers.append(buffer)
    put: list[str] = []
    n = 0

    def put_one() -> int:
        nonlocal n
        batch = [line(n, pad=20), line(n + 1, pad=20)]
        n += 2
        put.extend(batch)
        return buffer.put(batch)

    put_one()
    taken = buffer.take(2)
    assert taken == put[:2]
    while buffer.dropped == 0:
        put_one()
    # The taken batch is still handed out (its write may yet store it) but, no longer on
    # disk, it counts as dropped: a restart now would lose it ...
    assert buffer.take(2) == taken
    buffer.ack()
    assert buffer.depth == len(put) - buffer.dropped
    # ... and the lines that follow are the newest, in order.
    assert drain(buffer) == put[buffer.dropped :]
    buffer.close()
    again = open_buffer(tmp_path, max_bytes=max_bytes)
    buffers.append(again)
    assert again.depth == 0  # nothing came back from the dropped segment


def test_drop_newest_keeps_the_oldest(tmp_path: Path, buffers: list[DiskBuffer]) -> None:
    max_bytes = 4 * SEGMENT
    buffer = open_buffer(tmp_path, max_bytes=max_bytes, when_full="drop_newest")
    buffers.append(buffer)
    put: list[str] = []
    dropped = 0
    for n in range(0, 600, 3):
        batch = [line(n + i, pad=20) for i in range(3)]
        lost = buffer.put(batch)
        assert lost in (0, 3)
        dropped += lost
        put.extend(batch)
        assert buffer.size_bytes <= max_bytes
        assert buffer.dropped == dropped
    assert dropped > 0
    assert drain(buffer) == put[: len(put) - dropped]
    # Room again: new lines are kept.
    assert buffer.put(["new"]) == 0
    assert drain(buffer) == ["new"]


# -- recovery ------------------------------------------------------------------------------------


def write_and_close(directory: Path, batches: Sequence[Sequence[str]]) -> Path:
    buffer = open_buffer(directory)
    try:
        for batch in batches:
            buffer.put(batch)
    finally:
        buffer.close()
    (path,) = segment_files(directory)
    return path


@pytest.mark.parametrize("cut", [1, 3, 4, 8, 15, 16, 17, 20, -1])
def test_a_truncated_last_record_is_lost_and_the_rest_kept(
    tmp_path: Path, buffers: list[DiskBuffer], cut: int
) -> None:
    batches = records(5, 2, pad=10)
    path = write_and_close(tmp_path, batches)
    last_start, last_end = record_offsets(batches)[-1]
    end = last_start + cut if cut > 0 else last_end + cut
    with path.open("r+b") as file:
        file.truncate(end)

    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    # Only a cut after the whole header knows how many lines the record held.
    lost_lines = 2 if end - last_start >= HEADER else 0
    assert buffer.recovery == Recovery(1, 8, end - last_start, lost_lines)
    assert buffer.corrupt_lines == lost_lines
    assert buffer.corrupt_bytes == end - last_start
    assert path.stat().st_size == last_start  # the torn tail is cut off
    assert buffer.depth == 8
    buffer.put(["new 1", "new 2"])
    assert buffer.take(100) == [*flatten(batches[:4]), "new 1", "new 2"]
    buffer.close()

    again = open_buffer(tmp_path)
    buffers.append(again)
    assert again.recovery == Recovery(1, 10, 0, 0)
    assert drain(again, 3) == [*flatten(batches[:4]), "new 1", "new 2"]
    assert again.corrupt_lines == 0


def test_a_torn_tail_after_the_acked_position(tmp_path: Path, buffers: list[DiskBuffer]) -> None:
    batches = records(5, 2, pad=10)
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    for batch in batches:
        buffer.put(batch)
    assert buffer.take(8) == flatten(batches)[:8]  # everything before the last record
    buffer.ack()
    assert buffer.take(2) == batches[4]  # the last, not acked
    buffer.close()
    (path,) = segment_files(tmp_path)
    last_start, _ = record_offsets(batches)[-1]
    with path.open("r+b") as file:
        file.truncate(last_start + 20)

    again = open_buffer(tmp_path)
    buffers.append(again)
    assert again.recovery == Recovery(1, 0, 20, 2)
    assert again.depth == 0
    assert path.stat().st_size == last_start  # the torn tail is cut off
    again.put(["new"])
    assert again.depth == 1
    assert again.take(10) == ["new"]
    assert again.corrupt_lines == 2  # counted once, when opening
    assert again.depth == 1
    again.ack()
    assert again.depth == 0
    again.close()

    third = open_buffer(tmp_path)
    buffers.append(third)
    assert third.recovery == Recovery(1, 0, 0, 0)


@pytest.mark.parametrize("garbage", [b"\x00" * 100, b"not a record at all", MAGIC + b"\xff" * 40])
def test_garbage_after_the_last_record_is_cut_off(
    tmp_path: Path, buffers: list[DiskBuffer], garbage: bytes
) -> None:
    batches = records(4, 3)
    path = write_and_close(tmp_path, batches)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(garbage)

    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    assert buffer.recovery == Recovery(1, 12, len(garbage), 0)
    assert path.stat().st_size == size
    buffer.put(["new"])
    buffer.close()
    again = open_buffer(tmp_path)
    buffers.append(again)
    assert again.recovery == Recovery(1, 13, 0, 0)
    assert drain(again, 5) == [*flatten(batches), "new"]


@pytest.mark.parametrize(
    ("where", "lost_lines"),
    [
        (HEADER + 3, 3),  # inside the payload: the header still says how many lines
        (HEADER + 20, 3),
        (12, 3),  # the checksum
        (0, 0),  # the magic: the header is unreadable, the lines cannot be counted
    ],
)
def test_corruption_in_the_middle_keeps_the_records_around_it(
    tmp_path: Path, buffers: list[DiskBuffer], where: int, lost_lines: int
) -> None:
    batches = records(10, 3, pad=10)
    path = write_and_close(tmp_path, batches)
    start, end = record_offsets(batches)[4]
    flip(path, start + where, 2)
    size = path.stat().st_size

    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    assert buffer.recovery == Recovery(1, 27, end - start, lost_lines)
    assert path.stat().st_size == size  # good records follow: nothing is cut off
    assert buffer.depth == 27
    kept = flatten(batches[:4] + batches[5:])
    assert buffer.take(100) == kept
    assert buffer.depth == 27
    # The span found when opening is not counted (or taken off the depth) a second time.
    assert (buffer.corrupt_lines, buffer.corrupt_bytes) == (lost_lines, end - start)
    buffer.ack()
    assert buffer.depth == 0
    buffer.close()

    again = open_buffer(tmp_path)
    buffers.append(again)
    assert again.recovery == Recovery(1, 0, 0, 0)  # behind the ack cursor now


def test_corruption_in_the_middle_read_in_small_batches(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    batches = records(10, 3, pad=10)
    path = write_and_close(tmp_path, batches)
    start, end = record_offsets(batches)[4]
    flip(path, start + HEADER + 5)

    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    depths = []
    out: list[str] = []
    while batch := buffer.take(3):
        out.extend(batch)
        depths.append(buffer.depth)
        buffer.ack()
    assert out == flatten(batches[:4] + batches[5:])
    assert depths == list(range(27, 0, -3))
    assert buffer.depth == 0
    assert (buffer.corrupt_lines, buffer.corrupt_bytes) == (3, end - start)


def test_corruption_in_an_older_segment(tmp_path: Path, buffers: list[DiskBuffer]) -> None:
    batches = records(40, 2, pad=150)
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    for batch in batches:
        buffer.put(batch)
    buffer.close()
    files = segment_files(tmp_path)
    assert len(files) >= 3
    start, _ = record_offsets(batches)[1]  # the second record of the first segment
    flip(files[0], start + HEADER + 10)

    again = open_buffer(tmp_path)
    buffers.append(again)
    # A full segment is taken at its count when opening (a backlog of days opens in a
    # second); the damage is found, counted and skipped when it is read back.
    assert again.recovery.lost_lines == 0
    assert again.depth == 80
    assert drain(again, 5) == flatten(batches[:1] + batches[2:])
    assert again.corrupt_lines == 2
    assert again.depth == 0


def test_corruption_after_opening_is_skipped_and_counted(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    batches = records(10, 2, pad=10)
    buffer = open_buffer(tmp_path, cache_lines=1)  # every take reads from disk
    buffers.append(buffer)
    for batch in batches:
        buffer.put(batch)
    (path,) = segment_files(tmp_path)
    start, end = record_offsets(batches)[6]
    flip(path, start + HEADER + 4, 3)

    out: list[str] = []
    while batch := buffer.take(4):
        out.extend(batch)
        buffer.ack()
    assert out == flatten(batches[:6] + batches[7:])
    assert (buffer.corrupt_lines, buffer.corrupt_bytes) == (2, end - start)
    assert buffer.depth == 0
    buffer.put(["after"])
    assert buffer.take(4) == ["after"]


def test_corruption_after_opening_counts_once_in_the_depth(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    batches = records(10, 2, pad=10)
    buffer = open_buffer(tmp_path, cache_lines=1)
    buffers.append(buffer)
    for batch in batches:
        buffer.put(batch)
    (path,) = segment_files(tmp_path)
    start, _ = record_offsets(batches)[3]
    flip(path, start + HEADER + 1)
    assert buffer.take(100) == flatten(batches[:3] + batches[4:])
    assert buffer.depth == 18  # the batch being sent, not the lost record
    assert buffer.take(100) == flatten(batches[:3] + batches[4:])
    assert buffer.corrupt_lines == 2
    buffer.ack()
    assert buffer.depth == 0


# -- lock and inspection ---------------------------------------------------------------------------


def test_a_second_buffer_on_the_same_directory_is_refused(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    buffer.put(["a"])
    with pytest.raises(BufferDirectoryError, match="in use by another collector"):
        open_buffer(tmp_path)
    assert buffer.take(1) == ["a"]  # the refused one changed nothing
    buffer.close()
    again = open_buffer(tmp_path)
    buffers.append(again)
    assert again.take(1) == ["a"]


def test_an_unusable_directory_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BufferDirectoryError, match="cannot use it"):
        open_buffer(blocker / "buffer")


def test_inspect_buffer_shows_depth_and_oldest_line(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    assert inspect_buffer(tmp_path / "none").lines == 0
    batches = records(30, 2, pad=150)
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    for batch in batches:
        buffer.put(batch)
    info = inspect_buffer(tmp_path)  # while the buffer is open
    assert (info.lines, info.oldest_line, info.lost_lines) == (60, batches[0][0], 0)
    assert info.segments == len(segment_files(tmp_path))
    assert info.size_bytes == disk_size(tmp_path)

    while buffer.depth > 31:
        buffer.take(3)
        buffer.ack()
    info = inspect_buffer(tmp_path)
    assert info.lines == buffer.depth == 30
    assert info.oldest_line == batches[15][0]
    assert info.size_bytes == buffer.size_bytes
    assert info.segments == len(segment_files(tmp_path))
    buffer.close()

    files = segment_files(tmp_path)
    before = {path: path.read_bytes() for path in files}
    flip(files[-1], HEADER + 2)
    info = inspect_buffer(tmp_path)
    assert info.lost_lines == 2
    assert info.lines == 28
    assert segment_files(tmp_path) == files  # read only
    assert files[0].read_bytes() == before[files[0]]

    drained = open_buffer(tmp_path)
    buffers.append(drained)
    drain(drained)
    info = inspect_buffer(tmp_path)
    assert (info.lines, info.oldest_line) == (0, None)


TRICKY = [
    'm,t=café v="température 23°C" 1',
    'm v="line one\nline two" 2',
    'm v="tab\there, quote \\" and backslash \\\\" 3',
    "温度,工厂=一号 值=1i 4",
    'm v="emoji 🏭⚙️" 5',
    'm v="\u2028 \u2029 \x00 \x7f" 6',
    'm v="[\\"json\\",\\"like\\"]" 7',
    "",
]


def test_unicode_and_newlines_survive(tmp_path: Path, buffers: list[DiskBuffer]) -> None:
    buffer = open_buffer(tmp_path)
    buffers.append(buffer)
    buffer.put(TRICKY)
    assert buffer.take(100) == TRICKY  # from the cache
    buffer.close()
    again = open_buffer(tmp_path, cache_lines=1)
    buffers.append(again)
    assert again.take(100) == TRICKY  # from disk
    assert inspect_buffer(tmp_path).oldest_line == TRICKY[0]


# -- a model ---------------------------------------------------------------------------------------

LINE_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)  # no lone surrogates


class BufferMachine(RuleBasedStateMachine):
    """DiskBuffer against a list of records not acked, through crashes and reopenings."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="aguante-buffer-"))
        self.buffer: DiskBuffer | None = None
        self.cache_lines = 100_000
        self.model: list[list[str]] = []  # records not acked, oldest first
        self.taken: list[str] | None = None
        self.next_id = 0

    @property
    def open(self) -> DiskBuffer:
        assert self.buffer is not None
        return self.buffer

    def _open(self) -> None:
        self.buffer = open_buffer(self.directory, cache_lines=self.cache_lines)
        self.taken = None  # the batch taken and not acked comes back
        expected = sum(len(record) for record in self.model)
        assert self.buffer.recovery.lines == expected
        assert self.buffer.recovery.lost_bytes == 0
        assert self.buffer.recovery.lost_lines == 0

    @initialize(cache_lines=st.sampled_from([1, 3, 20, 100_000]))
    def start(self, cache_lines: int) -> None:
        self.cache_lines = cache_lines
        self._open()

    @rule(
        batches=st.lists(st.lists(LINE_TEXT, min_size=1, max_size=5), min_size=1, max_size=4),
        pad=st.integers(min_value=0, max_value=400),
    )
    def put(self, batches: list[list[str]], pad: int) -> None:
        for texts in batches:
            lines = [
                f"m,id={self.next_id + i} v={text!r},p={'x' * pad}" for i, text in enumerate(texts)
            ]
            self.next_id += len(lines)
            self._put(lines)

    def _put(self, lines: list[str]) -> None:
        assert self.open.put(lines) == 0
        self.model.append(lines)

    @rule(max_n=st.integers(min_value=1, max_value=15))
    def take(self, max_n: int) -> None:
        got = self.open.take(max_n)
        if self.taken is not None:
            assert got == self.taken
            return
        expected: list[str] = []
        for record in self.model:
            if expected and len(expected) + len(record) > max_n:
                break
            expected.extend(record)
        assert got == expected
        self.taken = got or None

    @rule(max_n=st.integers(min_value=1, max_value=15))
    def take_and_ack(self, max_n: int) -> None:
        self.take(max_n)
        self.ack()

    @rule()
    def ack(self) -> None:
        self.open.ack()
        if self.taken is None:
            return
        done = 0
        while done < len(self.taken):
            done += len(self.model.pop(0))
        assert done == len(self.taken)
        self.taken = None

    @rule()
    def crash(self) -> None:
        # The process dies: no close, no fsync; what os.write handed the OS is there.
        crash(self.open)
        self.buffer = None
        self._open()

    @rule()
    def reopen(self) -> None:
        self.open.close()
        self.buffer = None
        self._open()

    @precondition(lambda self: self.buffer is not None)
    @invariant()
    def matches_the_model(self) -> None:
        buffer = self.open
        assert buffer.depth == sum(len(record) for record in self.model)
        assert buffer.size_bytes == disk_size(self.directory)
        assert buffer.dropped == buffer.corrupt_lines == 0

    def teardown(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestBufferMachine = BufferMachine.TestCase
TestBufferMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


class FullBufferMachine(BufferMachine):
    """The same, in a buffer of four segments that keeps filling up (drop_oldest): whatever is
    dropped is the oldest records, whole, counted exactly, and a batch being sent whose segment
    went is still handed out until acked, but not written again after a crash."""

    MAX_BYTES = 4 * SEGMENT

    def __init__(self) -> None:
        super().__init__()
        self.taken_left = 0  # lines of the taken batch still in the buffer
        self.dropped = 0

    def _open(self) -> None:
        self.buffer = open_buffer(
            self.directory, cache_lines=self.cache_lines, max_bytes=self.MAX_BYTES
        )
        self.taken = None
        assert self.buffer.recovery.lines == sum(len(record) for record in self.model)
        assert self.buffer.recovery.lost_bytes == 0
        self.dropped = 0  # the counter starts again with the process

    def _put(self, lines: list[str]) -> None:
        dropped = self.open.put(lines)
        self.dropped += dropped
        while dropped:  # the oldest records, whole
            record = self.model.pop(0)
            assert len(record) <= dropped
            dropped -= len(record)
            self.taken_left -= min(len(record), self.taken_left)
        self.model.append(lines)
        assert self.open.size_bytes <= self.MAX_BYTES

    @rule(max_n=st.integers(min_value=1, max_value=15))
    def take(self, max_n: int) -> None:
        fresh = self.taken is None
        super().take(max_n)
        if fresh and self.taken is not None:
            self.taken_left = len(self.taken)

    @rule()
    def ack(self) -> None:
        self.open.ack()
        if self.taken is None:
            return
        done = 0
        while done < self.taken_left:  # only what is still in the buffer leaves it now
            done += len(self.model.pop(0))
        assert done == self.taken_left
        self.taken = None
        self.taken_left = 0

    @precondition(lambda self: self.buffer is not None)
    @invariant()
    def matches_the_model(self) -> None:
        buffer = self.open
        assert buffer.depth == sum(len(record) for record in self.model)
        assert buffer.size_bytes == disk_size(self.directory) <= self.MAX_BYTES
        assert buffer.dropped == self.dropped
        assert buffer.corrupt_lines == 0


TestFullBufferMachine = FullBufferMachine.TestCase
TestFullBufferMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


def test_a_sync_is_due_an_interval_after_a_put_unless_influxdb_stored_it_first(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    buffer = open_buffer(tmp_path / "b")
    buffers.append(buffer)
    interval = buffer.fsync_interval
    due = buffer.sync_due
    assert due is not None  # its first segment's name, new in the directory
    buffer.sync()
    assert buffer.sync_due is None  # the delivery wakes no thread for an idle buffer
    before = time.monotonic()
    buffer.put(["m v=1i 1"])
    buffer.put(["m v=2i 2"])
    due = buffer.sync_due
    assert due is not None and before + interval <= due <= time.monotonic() + interval
    assert buffer.take(1) == ["m v=1i 1"]
    buffer.ack()  # stored: the first line needs no sync, the second still does
    assert buffer.sync_due is not None and buffer.sync_due >= due
    buffer.take(10)
    buffer.ack()
    assert buffer.sync_due is None  # everything put is stored: nothing a power cut can take
    buffer.put(["m v=3i 3"])
    buffer.sync()
    assert buffer.sync_due is None
    buffer.put(["m v=4i 4" + "x" * SEGMENT])  # past a segment: a new file, its name synced too
    buffer.put(["m v=5i 5"])
    buffer.take(10)
    buffer.ack()
    assert buffer.sync_due is not None  # the new file, even with its lines stored
    buffer.sync()
    assert buffer.sync_due is None


class FailingDisk:
    """An fsync that fails while `failing`, and remembers which descriptors it synced."""

    def __init__(self) -> None:
        self.failing = False
        self.failing_fds: set[int] = set()
        self.synced: list[int] = []

    def __call__(self, fd: int) -> None:
        if self.failing or fd in self.failing_fds:
            raise OSError(5, "Input/output error")
        os.fsync(fd)
        self.synced.append(fd)


def _open_fds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor, gone
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def on_failing_disk(directory: Path, buffers: list[DiskBuffer]) -> tuple[FailingDisk, DiskBuffer]:
    """A buffer whose disk fails fsync when told to, its new directory synced already."""
    disk = FailingDisk()
    buffer = open_buffer(directory, fsync=disk)
    buffers.append(buffer)
    buffer.sync()
    return disk, buffer


def test_a_failed_sync_leaves_everything_due_for_the_next(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    disk, buffer = on_failing_disk(tmp_path / "b", buffers)
    buffer.put(["m v=1i 1" + "x" * SEGMENT])  # fills the first segment: retired, not yet synced
    buffer.put(["m v=2i 2"])  # in a new segment file, whose name the directory must keep
    assert len(buffer._retired) == 1
    due = buffer.sync_due
    assert due is not None
    disk.failing = True
    with pytest.raises(OSError):
        buffer.sync()
    assert buffer.sync_due == due  # still due, from as early as before
    assert len(buffer._retired) == 1  # the full segment kept for the next sync, not closed
    disk.failing, disk.synced = False, []
    buffer.sync()
    assert buffer.sync_due is None and not buffer._retired
    assert len(disk.synced) == 3  # the full segment, the current one, the directory


def test_closing_after_a_failed_sync_releases_every_descriptor(tmp_path: Path) -> None:
    before = _open_fds()
    disk = FailingDisk()
    buffer = open_buffer(tmp_path / "b", fsync=disk)
    buffer.put(["m v=1i 1" + "x" * SEGMENT])
    buffer.put(["m v=2i 2"])
    disk.failing = True
    with pytest.raises(OSError):
        buffer.close()
    assert _open_fds() == before
    disk.failing = False
    reopened = open_buffer(tmp_path / "b")  # the directory's lock was released too
    assert reopened.take(10)[1] == "m v=2i 2"
    reopened.close()


def test_a_segment_that_cannot_be_synced_holds_up_nothing_else(
    tmp_path: Path, buffers: list[DiskBuffer]
) -> None:
    disk, buffer = on_failing_disk(tmp_path / "b", buffers)
    buffer.put(["m v=1i 1" + "x" * SEGMENT])
    buffer.put(["m v=2i 2" + "x" * SEGMENT])
    buffer.put(["m v=3i 3"])
    bad, good = buffer._retired
    disk.failing_fds, disk.synced = {bad}, []
    with pytest.raises(OSError):
        buffer.sync()
    assert good in disk.synced and buffer._retired == [bad]  # the other one synced and closed
    assert len(disk.synced) == 3  # the other full segment, the current one, the directory
    assert buffer.sync_due is not None  # all of it due again, for the bad one's sake
    disk.failing_fds = set()
    buffer.sync()
    assert not buffer._retired and buffer.sync_due is None
