"""`aguante buffer`: what waits on disk and in quarantine, and replaying the quarantine into a
real InfluxDB once the cause of the refusal is fixed."""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from collector.buffer import DiskBuffer, append_locked
from tests.conftest import InfluxDBDatabase
from tests.test_cli import aguante

T0 = 1_700_000_000_000


def write_config(tmp_path: Path, url: str = "http://127.0.0.1:9", database: str = "x") -> Path:
    config = tmp_path / "plant.yaml"
    config.write_text(
        f"""
factory: coop
timezone: UTC
influxdb:
  url: {url}
  database: {database}
  quarantine_file: {tmp_path / "quarantine.jsonl"}
buffer: {{directory: {tmp_path / "buffer"}, max_bytes: 1MiB, segment_bytes: 64KiB}}
sectors: [{{id: press}}]
machines:
  - id: press-1
    sector: press
    modbus: {{host: 127.0.0.1, port: 9, signals: [{{name: v, table: holding, address: 0}}]}}
""",
        encoding="utf-8",
    )
    return config


def quarantine(tmp_path: Path, *records: dict[str, str]) -> Path:
    path = tmp_path / "quarantine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_it_shows_depth_oldest_line_and_quarantine(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    buffer = DiskBuffer(tmp_path / "buffer", max_bytes=1 << 20, segment_bytes=1 << 16)
    now = int(time.time() * 1000) - 2 * 3600 * 1000 - 5 * 60 * 1000
    buffer.put([f"reading,machine=press-1 v=1i {now}", f"reading,machine=press-1 v=2i {now + 1}"])
    buffer.put([f"reading,machine=press-1 v=3i {now + 2}"])
    buffer.take(2)
    buffer.ack()  # written: no longer waiting
    buffer.close()
    quarantine(
        tmp_path,
        {"time": "2026-11-25T10:00:00.000+00:00", "reason": "type conflict", "line": "m v=1i 1"},
        {"time": "2026-11-25T10:00:01.000+00:00", "reason": "bad name", "point": "Point(...)"},
    )
    result = aguante("buffer", str(config), "--lang", "en")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"Buffer {tmp_path / 'buffer'}: 1 lines wait to be written to InfluxDB, in 1 segment(s), "
    )
    assert lines[0].endswith(" MiB of 1.0 MiB")
    assert lines[1].startswith("The oldest: ") and lines[1].endswith(" (plant time), 2 h 5 min ago")
    assert lines[2] == f"  reading,machine=press-1 v=3i {now + 2}"
    assert lines[3] == (
        f"Quarantine {tmp_path / 'quarantine.jsonl'}: 2 record(s) InfluxDB refused, 1 can be "
        "sent again with --replay-quarantine"
    )
    assert lines[4:] == [
        "  2026-11-25T10:00:00.000+00:00  type conflict",
        "    m v=1i 1",
        "  2026-11-25T10:00:01.000+00:00  bad name",
        "    Point(...)",
    ]
    spanish = aguante("buffer", str(config), "--lang", "es").stdout
    assert "1 líneas esperan ser escritas en InfluxDB" in spanish


def test_an_empty_buffer_and_no_quarantine(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = aguante("buffer", str(config), "--lang", "pt-BR")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(
        f"Buffer {tmp_path / 'buffer'}: 0 linhas esperam ser gravadas no InfluxDB, em 0 segmento(s)"
    )
    assert "Quarentena" in result.stdout and "0 registro(s)" in result.stdout


@pytest.mark.integration
def test_replay_writes_what_is_accepted_now_and_keeps_the_rest(
    influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    influxdb.create()
    response = httpx.post(
        f"{influxdb.url}/write",
        params={"db": influxdb.database, "precision": "ms"},
        content=f"reading,machine=press-1 v=1.5 {T0}",
    )
    assert response.status_code == 204  # v is a float here
    config = write_config(tmp_path, influxdb.url, influxdb.database)
    conflict = f"reading,machine=press-1 v=7i {T0 + 1}"
    good = f"reading,machine=press-1 w=2.5 {T0 + 2}"
    path = quarantine(
        tmp_path,
        {"time": "t", "reason": "was refused", "line": conflict},
        {"time": "t", "reason": "was refused", "line": good},
        {"time": "t", "reason": "no server can store it", "point": "Point('#x', ...)"},
    )
    result = aguante("buffer", str(config), "--replay-quarantine", "--lang", "en")
    assert result.returncode == 1  # some lines are still refused
    assert result.stdout.strip() == (
        f"1 lines written; 1 refused again and 1 no server can store stay in {path}"
    )
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("line", r.get("point")) for r in kept] == ["Point('#x', ...)", conflict]
    assert "field type conflict" in kept[1]["reason"]
    assert [r["w"] for r in influxdb.query("SELECT w FROM reading")] == [2.5]

    # The cause, fixed: the old data with the other type moved out of the way.
    influxdb.server.query("DROP MEASUREMENT reading", database=influxdb.database, method="POST")
    result = aguante("buffer", str(config), "--replay-quarantine", "--lang", "en")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("1 lines written; 0 refused again and 1 ")
    assert [r["v"] for r in influxdb.query("SELECT v FROM reading")] == [7]
    assert [json.loads(line).get("point") for line in path.read_text().splitlines()] == [
        "Point('#x', ...)"
    ]


def test_replay_with_influxdb_down_keeps_every_record(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # nothing listens on port 9
    records = [{"time": "t", "reason": "r", "line": f"m v={i}i {T0 + i}"} for i in range(3)]
    path = quarantine(tmp_path, *records)
    result = aguante("buffer", str(config), "--replay-quarantine", "--lang", "en")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "could not write to InfluxDB, the quarantine is kept as it was:"
    )
    assert [json.loads(line) for line in path.read_text().splitlines()] == records
    assert not path.with_name("quarantine.jsonl.replaying").exists()


def test_a_record_appended_while_the_quarantine_is_moved_aside_lands_in_the_new_file(
    tmp_path: Path,
) -> None:
    path = quarantine(tmp_path, {"time": "t", "reason": "r", "line": "old 1"})
    aside = path.with_name(path.name + ".replaying")
    with path.open("a") as replaying:
        fcntl.flock(replaying.fileno(), fcntl.LOCK_EX)  # what the replay holds to move it
        writer = threading.Thread(target=append_locked, args=(path, "new\n"))
        writer.start()  # the collector, appending a refused line: it waits for the lock
        time.sleep(0.2)
        path.rename(aside)
    writer.join(5)
    assert not writer.is_alive()
    assert path.read_text() == "new\n"
    assert "new" not in aside.read_text()


def test_a_second_collector_on_the_same_buffer_is_refused_by_name(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    held = DiskBuffer(tmp_path / "buffer", max_bytes=1 << 20, segment_bytes=1 << 16)
    try:
        result = aguante("collect", str(config))
    finally:
        held.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"buffer directory {tmp_path / 'buffer'} is in use by another collector: give each "
        "collector a buffer directory of its own"
    )
