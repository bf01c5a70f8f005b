"""The durable buffer between decoding and InfluxDB: lines of line protocol in append-only
segment files on disk, removed only once InfluxDB has stored them.

Every `put` is written to the operating system before it returns, so a killed collector loses
nothing it had accepted. `sync` (which the delivery calls in a thread when `sync_due` says)
bounds what a power cut can take: within `fsync_interval` of its put, every line is either
fsynced or stored by InfluxDB, where a power cut here cannot reach it, so while InfluxDB answers
in time only a new segment file is ever synced. Each record carries a checksum: a torn or corrupt
record is found when the buffer opens (or is read), the good records around it are kept and what
was lost is counted and logged once. After a power cut, lines InfluxDB stored but the cursor had
not recorded yet may be among them (counted as lost, though they are not). The size is bounded;
when full the oldest segment (or the newest readings) is dropped, counted and logged. Memory
stays bounded: the lines read back are cached only while the writer is close behind, beyond
that they come back from disk.

On disk: `<directory>/<20-digit sequence>.seg` files of records
`magic(4) length(4) lines(4) crc32(4) payload(JSON array of lines)` and a `cursor` file with
the position up to which InfluxDB has acknowledged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

__all__ = [
    "BufferDirectoryError",
    "BufferInfo",
    "DiskBuffer",
    "Recovery",
    "append_locked",
    "buffered_lines",
    "inspect_buffer",
    "write_cursor",
]

log = logging.getLogger(__name__)

MAGIC = b"AGB\x01"
_HEADER = struct.Struct("<4sIII")  # magic, payload length, line count, crc32
# The cursor file: two slots written in turn, so a write torn by a power cut leaves the other.
_CURSOR = struct.Struct("<QQQI")  # sequence, segment, offset, crc32 of the three
SUFFIX = ".seg"
# Beside each full segment: how many lines it holds and its size, so that opening a buffer with
# days of backlog reads two segments, not all of them (checked when they are read back).
COUNT_SUFFIX = ".lines"
_COUNT = struct.Struct("<QQI")  # lines, size, crc32 of the two
MAX_RECORD = 256 * 1024 * 1024  # a length beyond this is corruption, not a record

WhenFull = Literal["drop_oldest", "drop_newest"]


class BufferDirectoryError(Exception):
    """The buffer directory cannot be used (not writable, used by another collector)."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the buffer found: records kept and what could not be read back."""

    segments: int
    lines: int
    lost_bytes: int
    lost_lines: int  # lower bound: a record whose header is unreadable counts as none


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int
    unacked: int  # lines after the ack cursor
    lines: int  # every good line in it, acked or not (for its count file when it is full)

    @property
    def count_path(self) -> Path:
        return self.path.with_suffix(COUNT_SUFFIX)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.count_path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class _Record:
    offset: int
    end: int
    lines: list[str] | None  # None: unreadable bytes from offset to end
    count: int  # lines the header claims; 0 when the header itself is unreadable


# Made once: `json.dumps` with options builds an encoder at every call, and this runs for every
# reading taken.
_PAYLOAD = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def _encode_record(lines: Sequence[str]) -> bytes:
    payload = _PAYLOAD.encode(lines if isinstance(lines, list) else list(lines)).encode()
    head = struct.pack("<II", len(payload), len(lines))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return _HEADER.pack(MAGIC, len(payload), len(lines), crc) + payload


def _records(data: bytes, start: int = 0) -> Iterator[_Record]:
    """The records of a segment's bytes from `start`; unreadable spans as records without lines.

    After a bad record the next magic that starts a good record resynchronises, so corruption in
    the middle of a segment costs only the bytes it hit."""
    position, size = start, len(data)
    while position < size:
        record = _record_at(data, position)
        if record is not None:
            yield record
            position = record.end
            continue
        bad_start, claimed = position, _claimed_lines(data, position)
        search = position + 1
        while True:
            found = data.find(MAGIC, search)
            if found < 0:
                position = size
                break
            if _record_at(data, found) is not None:
                position = found
                break
            search = found + 1
        # A header whose checksum failed may say anything: at most one line per 4 bytes
        # (`"",` at least) of what was lost.
        yield _Record(bad_start, position, None, min(claimed, (position - bad_start) // 4))


def _read_records(file: BinaryIO, start: int, size: int) -> Iterator[_Record]:
    """The records of an open segment from `start` (where the file is) to `size`, read one at
    a time; after a bad record the rest is resynchronised in memory, as `_records` does."""
    position = start
    while position < size:
        head = file.read(_HEADER.size)
        if len(head) == _HEADER.size:
            magic, length, _, _ = _HEADER.unpack(head)
            if magic == MAGIC and position + _HEADER.size + length <= size:
                payload = file.read(length)
                record = _record_at(head + payload, 0)
                if record is not None:
                    end = position + len(head) + length
                    yield _Record(position, end, record.lines, record.count)
                    position = end
                    continue
        file.seek(position)
        rest = file.read(size - position)
        for record in _records(rest):
            yield _Record(
                position + record.offset, position + record.end, record.lines, record.count
            )
        return


def _record_at(data: bytes, position: int) -> _Record | None:
    if position + _HEADER.size > len(data):
        return None
    magic, length, count, crc = _HEADER.unpack_from(data, position)
    if magic != MAGIC or length > MAX_RECORD:
        return None
    body = position + _HEADER.size
    end = body + length
    if end > len(data):
        return None
    payload = data[body:end]
    if zlib.crc32(payload, zlib.crc32(data[position + 4 : position + 12])) != crc:
        return None
    try:
        lines = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(lines, list) or len(lines) != count:
        return None
    return _Record(position, end, lines, count)


def _claimed_lines(data: bytes, position: int) -> int:
    if position + _HEADER.size <= len(data):
        magic, length, count, _ = _HEADER.unpack_from(data, position)
        if magic == MAGIC and length <= MAX_RECORD:
            return int(count)
    return 0


def _segment_number(path: Path) -> int | None:
    stem = path.name.removesuffix(SUFFIX)
    return int(stem) if path.name.endswith(SUFFIX) and stem.isdigit() else None


def _read_cursor(path: Path) -> tuple[int, int] | None:
    """(segment, offset) of the newest good slot of a cursor file, None if none."""
    found = _cursor_slots(path)
    return found[1:] if found is not None else None


def _cursor_slots(path: Path) -> tuple[int, int, int] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    newest: tuple[int, int, int] | None = None
    for slot in (0, 1):
        chunk = data[slot * _CURSOR.size : (slot + 1) * _CURSOR.size]
        if len(chunk) != _CURSOR.size:
            continue
        sequence, segment, offset, crc = _CURSOR.unpack(chunk)
        if zlib.crc32(chunk[:24]) == crc and (newest is None or sequence > newest[0]):
            newest = (sequence, segment, offset)
    return newest


def _read_count(segment: Path) -> tuple[int, int] | None:
    """(lines, size) from a full segment's count file, if it is whole and still fits."""
    try:
        data = segment.with_suffix(COUNT_SUFFIX).read_bytes()
        size = segment.stat().st_size
    except FileNotFoundError:
        return None
    if len(data) != _COUNT.size:
        return None
    lines, counted_size, crc = _COUNT.unpack(data)
    if zlib.crc32(data[:16]) != crc or counted_size != size:
        return None
    return lines, counted_size


def write_cursor(path: Path, segment: int, offset: int, sequence: int = 1) -> None:
    """Write a cursor file by hand (for tools and tests): acknowledged up to segment, offset."""
    head = struct.pack("<QQQ", sequence, segment, offset)
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)))


class DiskBuffer:
    """A `collector.delivery.Buffer` of lines kept in segment files under `directory`.

    `put` appends, `take` hands out the oldest lines (the same ones until `ack`), `ack` removes
    them. Open it with `DiskBuffer(...)`, which recovers what a crash left, and `close` it.
    """

    def __repr__(self) -> str:
        return f"buffer {self.directory}"

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 4 * 1024**3,
        segment_bytes: int = 32 * 1024**2,
        fsync_interval: float = 1.0,
        when_full: WhenFull = "drop_oldest",
        cache_lines: int = 100_000,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        """`fsync` is os.fsync but for tests of a disk that fails it."""
        if segment_bytes < 4096:
            raise ValueError(f"segment_bytes must be at least 4096, not {segment_bytes}")
        if max_bytes < 4 * segment_bytes:
            raise ValueError(
                f"max_bytes ({max_bytes}) must be at least 4 × segment_bytes ({segment_bytes}), "
                "so that dropping one segment when full keeps most of the backlog"
            )
        if fsync_interval < 0:
            raise ValueError(f"fsync_interval must be 0 or more seconds, not {fsync_interval}")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"when_full must be drop_oldest or drop_newest, not {when_full!r}")
        if cache_lines < 1:
            raise ValueError(f"cache_lines must be at least 1, not {cache_lines}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.when_full = when_full
        self.cache_lines = cache_lines
        self._fsync = fsync
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock = (directory / "lock").open("a+b")
        except OSError as exc:
            raise BufferDirectoryError(
                f"buffer directory {directory}: cannot use it ({exc})"
            ) from exc
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise BufferDirectoryError(
                f"buffer directory {directory} is in use by another collector: give each "
                "collector a buffer directory of its own"
            ) from exc
        self._segments: deque[_Segment] = deque()
        self._depth = 0  # lines not acked, in all segments
        self._size = 0  # bytes in all segments
        self._fd = -1
        self._unsynced = False
        self._fd_lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one sync at a time (see `sync`)
        # The read position (start of the next record to hand out) and the acked one.
        self._ack: tuple[int, int] = (0, 0)
        self._read: tuple[int, int] = (0, 0)
        # Lines appended while the reader is close behind: (segment, end offset, lines) records.
        self._cache: deque[tuple[int, int, list[str]]] = deque()
        self._cached_lines = 0
        self._cache_valid = True
        # The batch handed out and not yet acked: its lines, where it ends, lines per segment.
        self._taken: list[str] | None = None
        self._taken_end: tuple[int, int] = (0, 0)
        self._taken_per_segment: dict[int, int] = {}
        self.dropped = 0
        self.corrupt_lines = 0
        self.corrupt_bytes = 0
        # Unreadable spans found when opening, as (segment, offset): already counted and never
        # part of the depth, so meeting them again when reading back must not count them twice.
        self._known_bad: set[tuple[int, int]] = set()
        self._retired: list[int] = []  # descriptors of full segments, for `sync` to finish
        self._cursor_fd = -1
        self._cursor_sequence = 0
        # Since the last sync: each put's end and when (time.monotonic) it was put, oldest first,
        # until InfluxDB acknowledges it; and when a segment file was started (its name and the
        # finished one's tail must survive a power cut too). What `sync_due` is worked out from.
        self._unsynced_puts: deque[tuple[tuple[int, int], float]] = deque()
        self._files_unsynced_since: float | None = None
        try:
            self.recovery = self._open()
        except OSError as exc:
            self.close()
            raise BufferDirectoryError(
                f"buffer directory {directory}: cannot open it ({exc})"
            ) from exc

    # -- opening and recovery ------------------------------------------------------------------

    def _open(self) -> Recovery:
        paths = sorted(
            (number, path)
            for path in self.directory.iterdir()
            if (number := _segment_number(path)) is not None
        )
        slots = _cursor_slots(self.directory / "cursor")
        cursor = slots[1:] if slots is not None else None
        self._cursor_sequence = slots[0] if slots is not None else 0
        self._cursor_fd = os.open(self.directory / "cursor", os.O_RDWR | os.O_CREAT, 0o640)
        lines = lost_bytes = lost_lines = 0
        last_number = paths[-1][0] if paths else None
        for number, path in paths:
            if cursor is not None and number < cursor[0]:
                # Acknowledged in full; the removal was cut short by a crash.
                _Segment(number, path, 0, 0, 0).remove()
                continue
            start = cursor[1] if cursor is not None and number == cursor[0] else 0
            counted = None if number == last_number or start else _read_count(path)
            if counted is not None:  # full, wholly waiting, its count beside it
                self._segments.append(_Segment(number, path, counted[1], counted[0], counted[0]))
                lines += counted[0]
                self._depth += counted[0]
                self._size += counted[1]
                continue
            segment, lost = self._scan(number, path, start)
            lost_bytes += lost[0]
            lost_lines += lost[1]
            lines += segment.unacked
            self._segments.append(segment)
            self._depth += segment.unacked
            self._size += segment.size
        for stray in self.directory.glob(f"*{COUNT_SUFFIX}"):
            if not stray.with_suffix(SUFFIX).exists():
                stray.unlink(missing_ok=True)
        if self._segments:
            first = self._segments[0]
            if cursor is not None and cursor[0] == first.number:
                self._ack = (first.number, min(cursor[1], first.size))
            else:
                self._ack = (first.number, 0)
        self._read = self._ack
        self.corrupt_bytes, self.corrupt_lines = lost_bytes, lost_lines
        last = self._segments[-1] if self._segments else None
        if last is None or last.size >= self.segment_bytes:
            # Numbered past the cursor too: a segment below it would count as acknowledged.
            after = max(last.number if last else 0, cursor[0] if cursor else 0)
            self._new_segment(after + 1)
        else:
            self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        self._cache_valid = self._read == self._write_end
        # The cursor as found may point past what a power cut left, or at segments gone:
        # written again now, so that what is appended from here on is read back after a crash.
        self._save_cursor()
        if lines:
            log.warning(
                "buffer %s: %d lines from before the restart wait to be written",
                self.directory,
                lines,
            )
        return Recovery(len(self._segments), lines, lost_bytes, lost_lines)

    def _scan(self, number: int, path: Path, start: int) -> tuple[_Segment, tuple[int, int]]:
        """A segment checked record by record: (it, (bytes, lines) lost after `start`)."""
        data = path.read_bytes()
        start = min(start, len(data))
        total = unacked = lost_bytes = lost_lines = 0
        # From the cursor: a torn tail right after the acked position is cut off too.
        good_end = start
        bad_offsets: list[int] = []
        for record in _records(data):
            if record.lines is not None:
                total += len(record.lines)
                if record.offset >= start:
                    unacked += len(record.lines)
                    good_end = record.end
                continue
            if record.end <= start:
                continue  # acknowledged already: nothing lost
            bad_offsets.append(record.offset)
            lost_bytes += record.end - record.offset
            lost_lines += record.count
            log.error(
                "buffer %s: %d bytes at offset %d cannot be read back (%s); "
                "about %d lines lost, the records around them are kept",
                path,
                record.end - record.offset,
                record.offset,
                "a write cut short by a crash" if record.end == len(data) else "corrupt",
                record.count,
            )
        size = len(data)
        if good_end < size and self._torn_tail(data, good_end):
            # Cut the torn tail off, so appending after it leaves no hole to skip later.
            with path.open("r+b") as file:
                file.truncate(good_end)
            size = good_end
        self._known_bad.update((number, o) for o in bad_offsets if o < size)
        return _Segment(number, path, size, unacked, total), (lost_bytes, lost_lines)

    @staticmethod
    def _torn_tail(data: bytes, good_end: int) -> bool:
        """Whether everything after `good_end` is unreadable (a write cut short), not a good
        record further on after corruption."""
        return all(r.lines is None for r in _records(data, good_end))

    def _new_segment(self, number: int) -> None:
        if self._segments:
            full = self._segments[-1]
            head = struct.pack("<QQ", full.lines, full.size)
            full.count_path.write_bytes(head + struct.pack("<I", zlib.crc32(head)))
        path = self.directory / f"{number:020d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o640)
        with self._fd_lock:  # held only to swap: the fsyncs happen in `sync`
            if self._fd >= 0:
                self._retired.append(self._fd)
            self._fd = fd
            if self._files_unsynced_since is None:  # the new name must survive a power cut
                self._files_unsynced_since = time.monotonic()
        self._segments.append(_Segment(number, path, 0, 0, 0))
        if not self.fsync_interval:
            self.sync()

    @property
    def _write_end(self) -> tuple[int, int]:
        last = self._segments[-1]
        return last.number, last.size

    # -- the Buffer protocol --------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Lines waiting, the batch being sent included."""
        return self._depth

    @property
    def size_bytes(self) -> int:
        return self._size

    def put(self, lines: Sequence[str]) -> int:
        """Append lines (written to the OS before returning); returns how many lines were
        dropped to stay within `max_bytes`."""
        if not lines:
            return 0
        record = _encode_record(lines)
        dropped = 0
        if self._size + len(record) > self.max_bytes:
            if self.when_full == "drop_newest":
                self._dropped(len(lines))
                return len(lines)
            while len(self._segments) > 1 and self._size + len(record) > self.max_bytes:
                dropped += self._drop_oldest_segment()
        at_end = self._read == self._write_end
        segment = self._segments[-1]
        if segment.size and segment.size + len(record) > self.segment_bytes:
            self._new_segment(segment.number + 1)
            segment = self._segments[-1]
            if at_end:
                self._read = (segment.number, 0)
        try:
            written = os.write(self._fd, record)
            while written < len(record):  # a short write: rare, but os.write promises no more
                written += os.write(self._fd, record[written:])
        except OSError:
            # A full disk: take back what part of the record was written, so the offsets of
            # the records after it stay true; the caller counts the lines as not taken.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, segment.size)
            raise
        segment.size += len(record)
        segment.unacked += len(lines)
        segment.lines += len(lines)
        self._size += len(record)
        self._depth += len(lines)
        if self._cache_valid and (at_end or self._cache):
            if self._cached_lines + len(lines) <= self.cache_lines:
                self._cache.append((segment.number, segment.size, list(lines)))
                self._cached_lines += len(lines)
            else:  # the reader is far behind: it reads from disk until it catches up
                self._cache.clear()
                self._cached_lines = 0
                self._cache_valid = False
        if not self.fsync_interval:
            self._unsynced = True
            self.sync()  # asked for: every write on disk before it is acknowledged
        else:
            with self._fd_lock:  # `sync`, in its thread, takes both at once
                self._unsynced = True
                self._unsynced_puts.append(((segment.number, segment.size), time.monotonic()))
        return dropped

    def take(self, max_n: int) -> list[str]:
        """The oldest lines not acked: whole records up to `max_n` lines (one record even if
        it is larger). The same batch again until `ack`."""
        if self._taken is not None:
            return list(self._taken)
        lines: list[str] = []
        per_segment: dict[int, int] = {}
        position = self._read
        if not self._cache_valid and position == self._write_end:
            self._cache_valid = True
        if self._cache_valid:
            while self._cache and (not lines or len(lines) + len(self._cache[0][2]) <= max_n):
                number, end, record = self._cache.popleft()
                self._cached_lines -= len(record)
                lines.extend(record)
                per_segment[number] = per_segment.get(number, 0) + len(record)
                position = (number, end)
        else:
            position = self._read_from_disk(position, max_n, lines, per_segment)
            if position == self._write_end:
                self._cache_valid = True  # caught up: what comes next is cached again
        self._read = position
        if not lines:
            return []
        self._taken, self._taken_end, self._taken_per_segment = lines, position, per_segment
        return list(lines)

    def _read_from_disk(
        self, position: tuple[int, int], max_n: int, lines: list[str], per_segment: dict[int, int]
    ) -> tuple[int, int]:
        for segment in list(self._segments):
            if segment.number < position[0]:
                continue
            start = position[1] if segment.number == position[0] else 0
            if start < segment.size:
                with segment.path.open("rb") as file:
                    file.seek(start)
                    for record in _read_records(file, start, segment.size):
                        if record.lines is None:
                            self._corrupt_on_read(segment, record)
                        elif lines and len(lines) + len(record.lines) > max_n:
                            return position
                        else:
                            lines.extend(record.lines)
                            per_segment[segment.number] = per_segment.get(segment.number, 0) + len(
                                record.lines
                            )
                        position = (segment.number, record.end)
                        if len(lines) >= max_n:
                            return position
            if segment is self._segments[-1]:
                return (segment.number, segment.size)
            position = (self._next_number(segment.number), 0)
        return position

    def _next_number(self, number: int) -> int:
        for segment in self._segments:
            if segment.number > number:
                return segment.number
        return number + 1

    def _corrupt_on_read(self, segment: _Segment, record: _Record) -> None:
        # Corrupted on disk after it was opened (a failing SD card): skip it, count, say so.
        if (segment.number, record.offset) in self._known_bad:
            return  # found and counted when opening, never part of the depth
        self.corrupt_bytes += record.end - record.offset
        self.corrupt_lines += record.count
        lost = min(segment.unacked, record.count)
        segment.unacked -= lost
        self._depth -= lost
        log.error(
            "buffer %s: %d bytes at offset %d became unreadable; about %d lines lost",
            segment.path,
            record.end - record.offset,
            record.offset,
            record.count,
        )

    def ack(self) -> None:
        """The batch `take` handed out is stored: remove it."""
        if self._taken is None:
            return
        for segment in self._segments:
            done = min(segment.unacked, self._taken_per_segment.get(segment.number, 0))
            segment.unacked -= done
            self._depth -= done
        self._ack = self._taken_end
        self._taken = None
        self._taken_per_segment = {}
        self._stored_needs_no_sync()
        # Whole segments before the acked position are done with.
        while len(self._segments) > 1 and self._segments[0].number < self._ack[0]:
            done_with = self._segments.popleft()
            self._size -= done_with.size
            done_with.remove()
        self._save_cursor()

    def _save_cursor(self) -> None:
        # One pwrite into the older slot: a rename each time costs a quarter of a millisecond
        # on some filesystems, and this runs after every batch stored. Not fsynced: after a
        # power cut an older cursor only means lines written again, which InfluxDB stores once
        # (same series, same time stamp).
        self._cursor_sequence += 1
        head = struct.pack("<QQQ", self._cursor_sequence, *self._ack)
        slot = self._cursor_sequence % 2
        os.pwrite(self._cursor_fd, head + struct.pack("<I", zlib.crc32(head)), slot * _CURSOR.size)

    # -- bounds -----------------------------------------------------------------------------------

    def _drop_oldest_segment(self) -> int:
        oldest = self._segments.popleft()
        self._size -= oldest.size
        self._depth -= oldest.unacked
        lost = oldest.unacked
        if self._taken is not None:
            # The batch being sent may still be stored by the write under way, but it is no
            # longer on disk, so a restart would lose it: it counts as dropped too.
            self._taken_per_segment.pop(oldest.number, 0)
        oldest.remove()
        first = self._segments[0]
        if self._ack[0] <= oldest.number:
            self._ack = (first.number, 0)
            self._save_cursor()
            self._stored_needs_no_sync()  # dropped: nothing of it to sync either
        if self._read[0] <= oldest.number:
            self._read = (first.number, 0)
            self._cache.clear()
            self._cached_lines = 0
            self._cache_valid = self._read == self._write_end
        if self._taken is not None and self._taken_end[0] <= oldest.number:
            self._taken_end = self._ack
        self._dropped(lost)
        return lost

    def _dropped(self, n: int) -> None:
        # Counted here, logged by the delivery (once per episode, with what to do about it).
        self.dropped += n

    # -- durability --------------------------------------------------------------------------------

    def _stored_needs_no_sync(self) -> None:
        # Lines up to the acknowledged position are in InfluxDB: a power cut cannot take them.
        puts, ack = self._unsynced_puts, self._ack
        with self._fd_lock:  # `sync`, in its thread, clears the deque
            while puts and puts[0][0] <= ack:
                puts.popleft()

    @property
    def sync_due(self) -> float | None:
        """When (on `time.monotonic`'s clock) a `sync` is due, None if nothing waits for one:
        `fsync_interval` after the oldest line put since the last sync that InfluxDB has not
        stored yet, or after a segment file was started. Read on the loop's thread, never
        while a `sync` runs."""
        puts = self._unsynced_puts
        since = puts[0][1] if puts else None
        files = self._files_unsynced_since
        if files is not None and (since is None or files < since):
            since = files
        return None if since is None else since + self.fsync_interval

    def sync(self) -> None:
        """fsync what was put since the last sync. Safe to call from another thread (the
        delivery does, every `fsync_interval`, so a slow SD card never stalls the polling):
        the lock is held only to take copies of the descriptors, never during an fsync.

        When an fsync fails (OSError), what it was for is due again — the full segments whose
        fsync failed, the current one, the directory and the lines waiting for them — and the
        next sync tries it once more. (After an I/O error Linux may have dropped the pages it
        could not write, so a later fsync that succeeds does not prove they reached the disk:
        the delivery logs the error each time.) One sync at a time: `close` waits for one under
        way in a thread."""
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        with self._fd_lock:
            current = os.dup(self._fd) if self._unsynced and self._fd >= 0 else -1
            self._unsynced = False  # before: a put meanwhile is in this fsync or the next
            retired, self._retired = self._retired, []
            files_since = self._files_unsynced_since
            puts = list(self._unsynced_puts)
            self._unsynced_puts.clear()
            self._files_unsynced_since = None
        failed: list[int] = []  # full segments' descriptors whose fsync failed
        error: OSError | None = None
        try:
            for fd in retired:
                try:
                    self._fsync(fd)
                except OSError as exc:
                    error = error or exc
                    failed.append(fd)
                else:
                    with contextlib.suppress(OSError):  # synced: a failing close loses nothing
                        os.close(fd)
            if current >= 0:
                try:
                    self._fsync(current)
                except OSError as exc:
                    error = error or exc
            if files_since is not None:
                try:
                    self._fsync_directory()
                except OSError as exc:
                    error = error or exc
        finally:
            if current >= 0:
                os.close(current)
        if error is not None:
            self._due_again(failed, current >= 0, puts, files_since)
            raise error

    def _due_again(
        self,
        failed: list[int],
        current: bool,
        puts: list[tuple[tuple[int, int], float]],
        files_since: float | None,
    ) -> None:
        # What a failed sync was for, due again (from as early as before) for the next one.
        with self._fd_lock:
            if self._fd < 0:  # released meanwhile (a close while this sync ran): nothing next
                for fd in failed:
                    os.close(fd)
                return
            self._retired[:0] = failed
            self._unsynced = self._unsynced or current
            self._unsynced_puts.extendleft(reversed(puts))
            later = self._files_unsynced_since
            if files_since is not None and (later is None or files_since < later):
                self._files_unsynced_since = files_since

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Sync and release the directory; closing again does nothing. A sync that fails is
        raised once everything is released."""
        try:
            if self._fd >= 0:
                self._unsynced = True  # whatever the last sync saw: once more, to be sure
                self.sync()
        finally:
            self._release()

    def _release(self) -> None:
        with self._fd_lock:
            for fd in (*self._retired, self._fd):
                if fd >= 0:
                    os.close(fd)
            self._retired, self._fd = [], -1
        if self._cursor_fd >= 0:
            os.close(self._cursor_fd)
            self._cursor_fd = -1
        if not self._lock.closed:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()


@dataclass(frozen=True, slots=True)
class BufferInfo:
    """What `aguante buffer` shows: depth, size, the oldest line waiting, unreadable bytes."""

    directory: Path
    segments: int
    size_bytes: int
    lines: int
    oldest_line: str | None
    lost_bytes: int
    lost_lines: int


def inspect_buffer(directory: Path) -> BufferInfo:
    """Read a buffer directory without changing it (the collector may be running)."""
    segments = size = lines = lost_bytes = lost_lines = 0
    oldest: str | None = None
    for segment_size, records in _waiting_segments(directory):
        segments += 1
        size += segment_size
        for record in records:
            if record.lines is None:
                lost_bytes += record.end - record.offset
                lost_lines += record.count
            else:
                lines += len(record.lines)
                if oldest is None and record.lines:
                    oldest = record.lines[0]
    return BufferInfo(directory, segments, size, lines, oldest, lost_bytes, lost_lines)


def buffered_lines(directory: Path) -> Iterator[str]:
    """Every line waiting in a buffer directory, oldest first, read without changing it."""
    for _, records in _waiting_segments(directory):
        for record in records:
            if record.lines is not None:
                yield from record.lines


def _waiting_segments(directory: Path) -> Iterator[tuple[int, Iterator[_Record]]]:
    """(size, records after the ack cursor) of each segment, oldest first."""
    if not directory.is_dir():
        return
    cursor = _read_cursor(directory / "cursor")
    for number, path in sorted(
        (n, p) for p in directory.iterdir() if (n := _segment_number(p)) is not None
    ):
        if cursor is not None and number < cursor[0]:
            continue
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # acknowledged and removed while we looked
            continue
        start = cursor[1] if cursor is not None and number == cursor[0] else 0
        yield len(data), _records(data, min(start, len(data)))


def append_locked(path: Path, text: str) -> None:
    """Append text to a file others may move aside meanwhile (`aguante buffer
    --replay-quarantine` does): under an exclusive lock, and only to the file still at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with path.open("a", encoding="utf-8") as file:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)  # released when the file closes
            try:
                current = os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                file.write(text)
                return
        # Moved aside while we waited for the lock: append to the new file instead.
