"""The durable buffer when the disk misbehaves: full mid-record, a cursor left pointing past
what survived a power cut or at segments gone, a bit flipped in a record's header."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.buffer import BufferDirectoryError, DiskBuffer, write_cursor
from tests.collector.test_buffer import crash

SEGMENT = 4096


@pytest.fixture
def opened() -> Iterator[list[DiskBuffer]]:
    buffers: list[DiskBuffer] = []
    yield buffers
    for buffer in buffers:
        buffer.close()


def open_buffer(directory: Path, opened: list[DiskBuffer], **options: int) -> DiskBuffer:
    buffer = DiskBuffer(
        directory,
        max_bytes=options.pop("max_bytes", 1 << 20),
        segment_bytes=SEGMENT,
        fsync_interval=3600,
        cache_lines=options.pop("cache_lines", 1),
    )
    opened.append(buffer)
    return buffer


def drain(buffer: DiskBuffer) -> list[str]:
    out: list[str] = []
    while batch := buffer.take(3):
        out += batch
        buffer.ack()
    return out


def test_a_disk_full_mid_record_leaves_no_hole_for_the_records_after_it(tmp_path: Path) -> None:
    # In a process of its own: the file size limit stands in for a full SD card.
    script = textwrap.dedent(
        f"""
        import json, resource, signal
        from pathlib import Path
        from collector.buffer import DiskBuffer
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        directory = Path({str(tmp_path / "buffer")!r})
        options = dict(segment_bytes=8192, max_bytes=1 << 20, fsync_interval=3600, cache_lines=1)
        buffer = DiskBuffer(directory, **options)
        line = lambda i: [f"m,id={{i}} v={{'x' * 300}} {{i}}"]
        for i in range(5):
            buffer.put(line(i))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (buffer._segments[-1].size + 100, hard))
        try:
            buffer.put(line(5))
            failed = False
        except OSError:
            failed = True
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        for i in range(6, 10):
            buffer.put(line(i))
        first = [int(l.split()[-1]) for l in buffer.take(100)]
        buffer.close()
        again = DiskBuffer(directory, **options)
        second = [int(l.split()[-1]) for l in again.take(100)]
        print(json.dumps([failed, first, second, again.recovery.lost_bytes]))
        again.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    failed, first, second, lost = json.loads(result.stdout)  # our own script's output
    assert failed  # the record that did not fit was refused, not half kept
    assert first == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert second == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # none acked: all of them again
    assert lost == 0


def test_a_cursor_left_without_segments_does_not_swallow_new_writes(
    tmp_path: Path, opened: list[DiskBuffer]
) -> None:
    directory = tmp_path / "buffer"
    directory.mkdir()
    write_cursor(
        directory / "cursor", 3, 120
    )  # the segments were deleted by hand, the cursor was not
    buffer = open_buffer(directory, opened)
    buffer.put(["a 1", "b 2"])
    crash(buffer)
    again = open_buffer(directory, opened)
    assert again.recovery.lines == 2
    assert drain(again) == ["a 1", "b 2"]


def test_a_cursor_past_what_survived_is_rewritten(tmp_path: Path, opened: list[DiskBuffer]) -> None:
    directory = tmp_path / "buffer"
    buffer = open_buffer(directory, opened)
    buffer.put([f"m v={i}i {i}" for i in range(3)])
    buffer.close()
    [segment] = sorted(directory.glob("*.seg"))
    # A power cut: the cursor reached the disk, the last records did not.
    write_cursor(directory / "cursor", int(segment.stem), segment.stat().st_size + 500)
    buffer = open_buffer(directory, opened)
    assert buffer.depth == 0
    buffer.put(["new 1"])
    buffer.put(["newer 2"])
    crash(buffer)
    again = open_buffer(directory, opened)
    assert drain(again) == ["new 1", "newer 2"]
    assert again.recovery.lost_bytes == 0


def test_a_bit_flipped_line_count_cannot_claim_more_than_the_damage(
    tmp_path: Path, opened: list[DiskBuffer]
) -> None:
    directory = tmp_path / "buffer"
    buffer = open_buffer(directory, opened)
    for i in range(10):
        buffer.put([f"m v={i}i {i}"])
    buffer.close()
    [segment] = sorted(directory.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    record = data.find(b"AGB\x01", 1)  # the second record
    data[record + 11] ^= 0x40  # the top byte of its line count
    segment.write_bytes(bytes(data))
    buffer = open_buffer(directory, opened)
    span = data.find(b"AGB\x01", record + 1) - record
    assert 1 <= buffer.corrupt_lines <= span // 4
    assert buffer.depth == 9
    assert drain(buffer) == [f"m v={i}i {i}" for i in range(10) if i != 1]


def test_full_segments_open_by_their_counts_and_a_bad_count_is_not_trusted(
    tmp_path: Path, opened: list[DiskBuffer]
) -> None:
    directory = tmp_path / "buffer"
    buffer = open_buffer(directory, opened)
    lines = [f"m,n={i} v={'x' * 200} {i}" for i in range(100)]
    for line in lines:
        buffer.put([line])
    buffer.close()
    segments = sorted(directory.glob("*.seg"))
    counts = sorted(directory.glob("*.lines"))
    assert len(segments) >= 4
    assert [c.stem for c in counts] == [s.stem for s in segments[:-1]]  # all but the last
    # A count that lies (its checksum fails) or no longer fits its segment is not used.
    data = bytearray(counts[0].read_bytes())
    data[0] ^= 1
    counts[0].write_bytes(bytes(data))
    with segments[1].open("ab") as grown:
        grown.write(b"\0" * 7)  # a torn record after the count was written
    again = open_buffer(directory, opened)
    assert again.depth == 100
    assert again.recovery.lost_bytes == 7
    assert drain(again) == lines
    assert sorted(directory.glob("*.lines")) == []  # acknowledged: gone with their segments


def test_a_count_without_its_segment_is_removed(tmp_path: Path, opened: list[DiskBuffer]) -> None:
    directory = tmp_path / "buffer"
    directory.mkdir()
    (directory / f"{5:020d}.lines").write_bytes(b"left over")
    open_buffer(directory, opened)
    assert not list(directory.glob("*.lines"))


def test_a_segment_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "buffer"
    (directory / f"{1:020d}.seg").mkdir(parents=True)  # not a file: reading it fails
    with pytest.raises(BufferDirectoryError, match=f"buffer directory {directory}: cannot open it"):
        DiskBuffer(directory)
    # The lock was released: a second try meets the same problem, not "in use".
    with pytest.raises(BufferDirectoryError, match="cannot open it"):
        DiskBuffer(directory)
