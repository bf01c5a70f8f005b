"""`aguante buffer CONFIG`: what waits in the durable buffer and in quarantine, and
`--replay-quarantine` to send refused lines again once their cause is fixed."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from collector.buffer import append_locked, inspect_buffer
from collector.config import (
    LANGUAGES,
    Config,
    Language,
    load_config_or_say,
)
from collector.i18n import translate
from collector.lineprotocol import line_time_ms
from collector.sinks import RejectedWriteError, WriteError

__all__ = ["register", "replay_quarantine"]

REPLAY_BATCH = 5000
SHOWN = 10  # quarantine records listed; the rest are counted


def register(commands: Any) -> None:
    """Add the `buffer` subcommand to the `aguante` parser."""
    buffer = commands.add_parser(
        "buffer",
        help="show what waits to be written, and replay quarantined lines",
        description="Show the durable buffer (lines waiting for InfluxDB, the oldest of them, "
        "unreadable records) and the quarantine (lines InfluxDB refused). Safe while the "
        "collector runs. With --replay-quarantine, send the quarantined lines again once the "
        "cause is fixed; lines refused again stay in quarantine.",
    )
    buffer.add_argument("config", type=Path, help="the factory YAML file")
    buffer.add_argument(
        "--replay-quarantine", action="store_true", help="send quarantined lines again"
    )
    buffer.add_argument(
        "--lang", choices=LANGUAGES, help="language of the output (default: the config's)"
    )
    buffer.set_defaults(func=_buffer)


def _buffer(args: argparse.Namespace) -> int:
    config = load_config_or_say(args.config)
    if config is None:
        return 1
    lang: Language = args.lang or config.language
    if args.replay_quarantine:
        return _replay(config, lang)
    _show_buffer(config, lang)
    _show_quarantine(config, lang)
    return 0


def _when(lang: Language, config: Config, time_ms: int) -> str:
    moment = datetime.fromtimestamp(time_ms / 1000, ZoneInfo(config.timezone))
    ago = max(0, round(time.time() - time_ms / 1000))
    hours, rest = divmod(ago, 3600)
    return translate(
        lang,
        "buffer.when",
        moment=moment.strftime("%Y-%m-%d %H:%M:%S"),
        hours=hours,
        minutes=rest // 60,
    )


def _show_buffer(config: Config, lang: Language) -> None:
    directory = Path(config.buffer.directory)
    info = inspect_buffer(directory)
    print(
        translate(
            lang,
            "buffer.summary",
            directory=directory,
            lines=info.lines,
            segments=info.segments,
            size=_megabytes(info.size_bytes),
            limit=_megabytes(config.buffer.max_bytes),
        )
    )
    if info.oldest_line is not None:
        try:
            when = _when(lang, config, line_time_ms(info.oldest_line))
        except ValueError:
            when = "?"
        print(translate(lang, "buffer.oldest", when=when, line=_short(info.oldest_line)))
    if info.lost_bytes:
        print(translate(lang, "buffer.unreadable", bytes=info.lost_bytes, lines=info.lost_lines))


def _megabytes(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


def _short(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The quarantine's records; a line that is not JSON (hand-edited) is shown as it is."""
    try:
        file = path.open(encoding="utf-8")
    except FileNotFoundError:
        return
    with file:
        for text in file:
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                record = {"time": "", "reason": "not JSON", "point": text.rstrip("\n")}
            yield record


def _show_quarantine(config: Config, lang: Language) -> None:
    path = Path(config.influxdb.quarantine_file)
    records = [r for p in _quarantine_files(path) for r in _records(p)]
    replayable = sum(1 for r in records if "line" in r)
    print(
        translate(
            lang,
            "buffer.quarantine",
            path=path,
            count=len(records),
            replayable=replayable,
        )
    )
    for record in records[:SHOWN]:
        text = record.get("line", record.get("point", ""))
        print(f"  {record.get('time', '')}  {record.get('reason', '')}\n    {_short(str(text))}")
    if len(records) > SHOWN:
        print(translate(lang, "buffer.more", count=len(records) - SHOWN))


def _quarantine_files(path: Path) -> list[Path]:
    # A replay cut short leaves its file aside: its lines are still quarantined.
    return [p for p in (path.with_name(path.name + ".replaying"), path) if p.exists()]


def replay_quarantine(config: Config) -> tuple[int, int, int]:
    """Send quarantined lines again: (written, refused again, kept because they are no
    lines). Lines not written stay in the quarantine file; the collector may run meanwhile.

    Raises `WriteError` when InfluxDB cannot be written at all (down, credentials): then every
    line is kept."""
    path = Path(config.influxdb.quarantine_file)
    aside = path.with_name(path.name + ".replaying")
    if not aside.exists():  # else a replay cut short: that file first
        if not path.exists():
            return 0, 0, 0
        # Moved aside under the collector's lock: it appends to a new file from then on.
        with path.open("a") as locked:
            fcntl.flock(locked.fileno(), fcntl.LOCK_EX)
            path.rename(aside)
    records = list(_records(aside))
    lines = [r for r in records if isinstance(r.get("line"), str)]
    keep = [r for r in records if not isinstance(r.get("line"), str)]
    outcome: list[tuple[list[dict[str, Any]], dict[str, str]]] = []  # (batch, refused) written
    try:
        asyncio.run(_send(config, lines, outcome))
    finally:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        sent = 0
        for batch, refused in outcome:
            sent += len(batch)
            for record in batch:
                if record["line"] in refused:
                    keep.append(record | {"time": now, "reason": refused[record["line"]]})
        keep += lines[sent:]  # not sent, or its write failed: kept as it was
        if keep:
            append_locked(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
        aside.unlink()
    refused_again = sum(1 for r in keep if "line" in r)
    return len(lines) - refused_again, refused_again, len(keep) - refused_again


async def _send(
    config: Config,
    lines: list[dict[str, Any]],
    outcome: list[tuple[list[dict[str, Any]], dict[str, str]]],
) -> None:
    from collector.sinks.influxdb import InfluxDBSink

    # No CREATE DATABASE: the lines go where they were refused, or fail loudly.
    influx = config.influxdb.model_copy(update={"create_database": False})
    async with InfluxDBSink.from_config(influx) as sink:
        for first in range(0, len(lines), REPLAY_BATCH):
            batch = lines[first : first + REPLAY_BATCH]
            try:
                await sink.write_lines([r["line"] for r in batch])
            except RejectedWriteError as exc:
                outcome.append((batch, dict(zip(exc.lines, exc.reasons, strict=True))))
            else:
                outcome.append((batch, {}))


def _replay(config: Config, lang: Language) -> int:
    try:
        written, refused, unreplayable = replay_quarantine(config)
    except WriteError as exc:
        print(translate(lang, "buffer.replay_failed", error=exc), file=sys.stderr)
        return 1
    print(
        translate(
            lang,
            "buffer.replayed",
            written=written,
            refused=refused,
            unreplayable=unreplayable,
            path=config.influxdb.quarantine_file,
        )
    )
    return 1 if refused else 0
