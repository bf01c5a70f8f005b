"""Paper records and old data-logger exports into InfluxDB: production counts as per-minute
`utilization` points and stops as `stop` points, checked whole before anything is written.

Three CSV layouts, told apart by their header (any column order, UTF-8 with or without BOM,
`,` or `;` between cells, decimal comma accepted):
  production  machine,start,end,produced[,rejected]
  stops       machine,start,end,reason
  combined    machine,start,end,produced[,rejected],reason — each row gives produced or reason
Times are local to the plant (`2026-10-03 06:00`, `03/10/2026 06:00`, ISO with or without an
offset). Every point has the same series and time on every run, so importing a file again
overwrites what the first run wrote with the same values (docs/capacity.md).
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import difflib
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO
from zoneinfo import ZoneInfo

from collector.config import Config, Language, Machine, StopReason
from collector.i18n import translate
from collector.schema import (
    STOP,
    TAG_FACTORY,
    TAG_MACHINE,
    TAG_SECTOR,
    TAG_SHIFT,
    UTILIZATION,
    FieldValue,
    Point,
)
from collector.shifts import ShiftCalendar
from collector.sinks import Sink, WriteError
from collector.stops import resolve_reason

__all__ = [
    "MAX_ROW_DAYS",
    "ImportFile",
    "ImportInterrupted",
    "ImportPlan",
    "ImportRejected",
    "Layout",
    "MachinePlan",
    "Problem",
    "ProductionRow",
    "ProgressBar",
    "StopRow",
    "TimeProblem",
    "parse_count",
    "parse_import",
    "parse_local_time",
    "plan_import",
    "read_import",
    "split_count",
    "write_import",
]

Layout = Literal["production", "stops", "combined"]

MINUTE_MS = 60_000
MAX_ROW_DAYS = 31  # longer rows are nearly always a mistyped date; they would spread counts thin
_DAY_MS = 86_400_000
_COLUMNS = ("machine", "start", "end", "produced", "rejected", "reason")
_PRODUCTION_HEADER = "machine,start,end,produced,rejected"
_STOPS_HEADER = "machine,start,end,reason"
_DELIMITERS = (",", ";")


# -- problems -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or worth a look) in the file: where, and a message key of import.json.

    `line` 0 is the file as a whole; `column` None is the row as a whole. Values that are
    tuples of `StopReason` are written as "id (name)" in the reader's language.
    """

    line: int
    column: str | None
    key: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def text(self, language: Language, source: str) -> str:
        """`FILE:LINE: column NAME: problem`, as the user reads it."""
        return f"{self.where(source)}: {self.message(language)}"

    def where(self, source: str) -> str:
        return f"{source}:{self.line}" if self.line else source

    def message(self, language: Language) -> str:
        values = {k: _render(v, language) for k, v in self.values.items()}
        message = translate(language, self.key, **values)
        if self.column is not None:
            column = translate(language, "import.column", name=self.column)
            message = f"{column}: {message}"
        return message


def _render(value: Any, language: Language) -> Any:
    if isinstance(value, tuple) and all(isinstance(v, StopReason) for v in value):
        return ", ".join(f"{r.id} ({r.name(language)})" for r in value)
    return value


class ImportRejected(Exception):
    """The file cannot be imported; `problems` lists every error found, in line order."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(
            "\n".join(p.text("en", source) for p in self.problems) or f"{source}: rejected"
        )


class TimeProblem(ValueError):
    """A date-time that cannot be read; `key` and `values` say why (for `Problem`)."""

    def __init__(self, key: str, **values: str) -> None:
        super().__init__(translate("en", key, **values))
        self.key = key
        self.values = values


class _CountProblem(ValueError):
    def __init__(self, key: str, **values: str) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


# -- cells ----------------------------------------------------------------------------------------

_ISO = re.compile(
    r"^(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})[ T](?P<h>\d{1,2}):(?P<mi>\d{2})"
    r"(?::(?P<s>\d{2})(?:[.,](?P<frac>\d{1,6}))?)?\s*(?P<tz>Z|[+-]\d{2}:?\d{2})?$",
    re.IGNORECASE,
)
# Day first, as in Argentina, Brazil and Uruguay (and in Excel set to their locales).
_DAY_FIRST = re.compile(
    r"^(?P<d>\d{1,2})/(?P<mo>\d{1,2})/(?P<y>\d{4})[ T](?P<h>\d{1,2}):(?P<mi>\d{2})"
    r"(?::(?P<s>\d{2}))?$"
)


def parse_local_time(text: str, zone: ZoneInfo) -> int:
    """UTC milliseconds of a plant-local date-time (`2026-10-03 06:00[:SS]`, ISO with `T` or an
    offset, `03/10/2026 06:00`). Raises `TimeProblem` for text that is no date-time, and for a
    local time that the clocks skipped or went through twice."""
    cleaned = text.strip()
    match = _ISO.match(cleaned) or _DAY_FIRST.match(cleaned)
    if match is None:
        raise TimeProblem("import.problem.bad_time", text=cleaned)
    parts = match.groupdict()
    frac = (parts.get("frac") or "").ljust(6, "0")
    try:
        naive = dt.datetime(
            int(parts["y"]),
            int(parts["mo"]),
            int(parts["d"]),
            int(parts["h"]),
            int(parts["mi"]),
            int(parts["s"] or 0),
            int(frac or 0),
        )
    except ValueError:
        raise TimeProblem("import.problem.bad_time", text=cleaned) from None
    offset = parts.get("tz")
    if offset:
        if offset.upper() == "Z":
            tz: dt.tzinfo = dt.UTC
        else:
            sign = -1 if offset[0] == "-" else 1
            digits = offset[1:].replace(":", "")
            delta = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            tz = dt.timezone(sign * delta)
        return _ms(naive.replace(tzinfo=tz))
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        back = first.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None)
        if back != naive:
            raise TimeProblem("import.problem.time_skipped", text=cleaned, zone=zone.key)
        example = first.isoformat(timespec="minutes")
        raise TimeProblem("import.problem.time_twice", text=cleaned, zone=zone.key, example=example)
    return _ms(first)


def _ms(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


_WHOLE = re.compile(r"^[+-]?\d+(?:[.,]0*)?$")
_DECIMAL = re.compile(r"^[+-]?\d*[.,]\d+$")
_THOUSANDS = re.compile(r"^\d{1,3}(?:([.,])\d{3})(?:\1\d{3})*$")


def parse_count(text: str) -> int:
    """A count of parts: a whole number, `1200`, `1200,0` or `1200.0`; never negative.

    `1.234` and `1.000` are refused rather than read as 1234 or 1.234: in es and pt the dot
    groups thousands, in en it is the decimal point, so no reading of them is safe.
    """
    cleaned = text.strip()
    if _THOUSANDS.match(cleaned):
        digits = re.sub(r"[.,]", "", cleaned)
        raise _CountProblem("import.problem.thousands", text=cleaned, digits=digits)
    if _WHOLE.match(cleaned):
        value = int(re.split(r"[.,]", cleaned)[0])
        if value < 0:
            raise _CountProblem("import.problem.negative", value=str(value))
        return value
    if _DECIMAL.match(cleaned):
        raise _CountProblem("import.problem.not_whole", text=cleaned)
    raise _CountProblem("import.problem.not_a_number", text=cleaned)


def split_count(count: int, weights: Sequence[int], caps: Sequence[int] | None = None) -> list[int]:
    """`count` split in proportion to `weights` as integers that add up to `count` exactly:
    largest remainder, ties to the earliest. With `caps`, no share goes above its cap (the
    remainders go to the next largest that has room); the caps must add up to `count` or more.
    """
    total = sum(weights)
    if count < 0 or total <= 0 or any(w < 0 for w in weights):
        raise ValueError("split_count needs a count ≥ 0 and weights ≥ 0 with a positive sum")
    shares = [count * w // total for w in weights]
    if caps is not None:
        if sum(caps) < count or len(caps) != len(weights):
            raise ValueError("split_count: the caps hold less than the count")
        shares = [min(s, c) for s, c in zip(shares, caps, strict=True)]
    order = sorted(range(len(weights)), key=lambda i: (-(count * weights[i] % total), i))
    left = count - sum(shares)
    while left > 0:
        for i in order:
            if left == 0:
                break
            if caps is None or shares[i] < caps[i]:
                shares[i] += 1
                left -= 1
    return shares


# -- reading and checking -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProductionRow:
    line: int
    machine: str
    start_ms: int
    end_ms: int
    produced: int
    rejected: int | None  # None: the file does not say
    start_text: str = ""
    end_text: str = ""


@dataclass(frozen=True, slots=True)
class StopRow:
    line: int
    machine: str
    start_ms: int
    end_ms: int
    reason: StopReason
    start_text: str = ""
    end_text: str = ""


@dataclass(frozen=True, slots=True)
class ImportFile:
    """A file that passed every check: its rows, and warnings that do not stop it."""

    source: str
    layout: Layout
    production: tuple[ProductionRow, ...]
    stops: tuple[StopRow, ...]
    warnings: tuple[Problem, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.production) + len(self.stops)


def read_import(path: str | Path, config: Config, *, now_ms: int) -> ImportFile:
    """Read and check a whole CSV file; raise `ImportRejected` listing every problem."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ImportRejected(
            source, [Problem(0, None, "import.problem.unreadable", {"reason": reason})]
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = Problem(
            line, None, "import.problem.not_utf8", {"byte": f"0x{data[exc.start]:02x}"}
        )
        raise ImportRejected(source, [problem]) from None
    return parse_import(text, config, source=source, now_ms=now_ms)


def parse_import(text: str, config: Config, *, source: str, now_ms: int) -> ImportFile:
    """Check CSV text (already decoded); raise `ImportRejected` listing every problem."""
    text = text.removeprefix("\ufeff")
    records = _records(text, _delimiter(text))
    if not records:
        raise ImportRejected(source, [Problem(0, None, "import.problem.empty_file")])
    header_line, header = records[0]
    columns, layout, problems = _header(header, header_line)
    if layout is None:
        raise ImportRejected(source, problems)
    if len(records) == 1:
        raise ImportRejected(source, [Problem(0, None, "import.problem.no_rows")])
    checker = _RowChecker(config, layout, columns, now_ms)
    for line, cells in records[1:]:
        checker.check(line, cells)
    checker.check_overlaps()
    if checker.problems:
        raise ImportRejected(source, sorted(checker.problems, key=_problem_order))
    return ImportFile(
        source,
        layout,
        tuple(checker.production),
        tuple(checker.stops),
        tuple(sorted(checker.warnings(), key=_problem_order)),
    )


def _problem_order(problem: Problem) -> tuple[int, int]:
    column = _COLUMNS.index(problem.column) if problem.column in _COLUMNS else -1
    return problem.line, column


def _records(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(first physical line, cells) of every record that is not blank."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = []
    line = 1
    for cells in reader:
        if any(c.strip() for c in cells):
            records.append((line, cells))
        line = reader.line_num + 1
    return records


def _delimiter(text: str) -> str:
    """`,` or `;`: whichever splits the header line into more known column names."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    return max(
        _DELIMITERS,
        key=lambda d: sum(c.strip().strip('"').casefold() in _COLUMNS for c in header.split(d)),
    )


def _header(cells: list[str], line: int) -> tuple[list[str], Layout | None, list[Problem]]:
    names = [c.strip().strip('"').casefold() for c in cells]
    problems = []
    for index, name in enumerate(names):
        if not name:
            continue
        if name not in _COLUMNS:
            problems.append(
                Problem(
                    line,
                    None,
                    "import.problem.unknown_column",
                    {
                        "name": cells[index].strip(),
                        "production": _PRODUCTION_HEADER,
                        "stops": _STOPS_HEADER,
                    },
                )
            )
        elif name in names[:index]:
            problems.append(Problem(line, None, "import.problem.duplicate_column", {"name": name}))
    layout: Layout | None = None
    if "produced" in names and "reason" in names:
        layout = "combined"
    elif "produced" in names:
        layout = "production"
    elif "reason" in names:
        layout = "stops"
    if "rejected" in names and "produced" not in names:
        problems.append(Problem(line, None, "import.problem.rejected_alone"))
    missing = [c for c in ("machine", "start", "end") if c not in names]
    if layout is None or missing:
        problems.append(
            Problem(
                line,
                None,
                "import.problem.header",
                {
                    "found": ",".join(c.strip() for c in cells),
                    "production": _PRODUCTION_HEADER,
                    "stops": _STOPS_HEADER,
                },
            )
        )
    if problems:
        return names, None, problems
    return names, layout, []


@dataclass(frozen=True, slots=True)
class _Span:
    line: int
    start_ms: int
    end_ms: int
    start_text: str
    end_text: str


class _RowChecker:
    """Checks rows one by one, keeping every problem; then the rows against each other."""

    def __init__(self, config: Config, layout: Layout, columns: list[str], now_ms: int) -> None:
        self.config = config
        self.layout = layout
        self.columns = columns
        self.now_ms = now_ms
        self.zone = ZoneInfo(config.timezone)
        self.machines = {m.id: m for m in config.machines}
        self.problems: list[Problem] = []
        self.production: list[ProductionRow] = []
        self.stops: list[StopRow] = []
        self._over_rated: list[Problem] = []
        self._spans: dict[tuple[str, str], list[_Span]] = {}

    def problem(self, line: int, column: str | None, key: str, **values: Any) -> None:
        self.problems.append(Problem(line, column, key, values))

    def check(self, line: int, cells: list[str]) -> None:
        row: dict[str, str] = {}
        for index, cell in enumerate(cells):
            name = self.columns[index] if index < len(self.columns) else ""
            if name:
                row[name] = cell.strip()
            elif cell.strip():
                extra = len(cells) - len(self.columns)
                key = "import.problem.extra_cells" if extra > 0 else "import.problem.unnamed_cell"
                self.problem(line, None, key, count=str(extra), value=cell.strip())
                return
        machine = self._machine(line, row.get("machine", ""))
        start = self._time(line, "start", row.get("start", ""))
        end = self._time(line, "end", row.get("end", ""))
        if end is not None:
            end = self._not_future(line, end, row["end"])
        if start is not None and end is not None:
            end = self._span(line, start, end, row["start"], row["end"])
        kind = self._kind(line, row)
        if kind is None or machine is None or start is None or end is None:
            good_span = False
        else:
            good_span = True
            span = _Span(line, start, end, row["start"], row["end"])
            self._spans.setdefault((kind, machine.id), []).append(span)
        if kind == "production":
            produced = self._count(line, "produced", row.get("produced", ""))
            rejected = None
            if row.get("rejected"):
                rejected = self._count(line, "rejected", row["rejected"])
            if produced is not None and rejected is not None and rejected > produced:
                self.problem(
                    line,
                    "rejected",
                    "import.problem.rejected_over_produced",
                    rejected=str(rejected),
                    produced=str(produced),
                )
            elif good_span and produced is not None:
                assert machine is not None and start is not None and end is not None
                self.production.append(
                    ProductionRow(
                        line, machine.id, start, end, produced, rejected, row["start"], row["end"]
                    )
                )
                self._check_rate(line, machine, start, end, produced)
        elif kind == "stop":
            reason = self._reason(line, row.get("reason", ""))
            if good_span and reason is not None:
                assert machine is not None and start is not None and end is not None
                self.stops.append(
                    StopRow(line, machine.id, start, end, reason, row["start"], row["end"])
                )

    def _kind(self, line: int, row: dict[str, str]) -> Literal["production", "stop"] | None:
        if self.layout == "production":
            return "production"
        if self.layout == "stops":
            return "stop"
        produced, reason = bool(row.get("produced")), bool(row.get("reason"))
        if produced and reason:
            self.problem(line, None, "import.problem.both_kinds")
            return None
        if not produced and not reason:
            self.problem(line, None, "import.problem.no_kind")
            return None
        return "production" if produced else "stop"

    def _machine(self, line: int, text: str) -> Machine | None:
        if not text:
            self.problem(line, "machine", "import.problem.empty")
            return None
        machine = self.machines.get(text)
        if machine is not None:
            return machine
        close = difflib.get_close_matches(text, list(self.machines), n=1, cutoff=0.6)
        if close:
            self.problem(
                line, "machine", "import.problem.unknown_machine_close", text=text, close=close[0]
            )
        else:
            known = ", ".join(self.machines)
            self.problem(line, "machine", "import.problem.unknown_machine", text=text, known=known)
        return None

    def _time(self, line: int, column: str, text: str) -> int | None:
        if not text:
            self.problem(line, column, "import.problem.empty")
            return None
        try:
            return parse_local_time(text, self.zone)
        except TimeProblem as exc:
            self.problems.append(Problem(line, column, exc.key, exc.values))
            return None

    def _not_future(self, line: int, end: int, end_text: str) -> int | None:
        if end <= self.now_ms:
            return end
        now = dt.datetime.fromtimestamp(self.now_ms / 1000, self.zone)
        self.problem(
            line, "end", "import.problem.future", end=end_text, now=f"{now:%Y-%m-%d %H:%M}"
        )
        return None

    def _span(self, line: int, start: int, end: int, start_text: str, end_text: str) -> int | None:
        if end <= start:
            self.problem(
                line, "end", "import.problem.not_after_start", end=end_text, start=start_text
            )
            return None
        if end - start > MAX_ROW_DAYS * _DAY_MS:
            days = f"{(end - start) / _DAY_MS:.0f}"
            self.problem(line, "end", "import.problem.too_long", days=days, max=str(MAX_ROW_DAYS))
            return None
        return end

    def _count(self, line: int, column: str, text: str) -> int | None:
        if not text:
            self.problem(line, column, "import.problem.empty")
            return None
        try:
            return parse_count(text)
        except _CountProblem as exc:
            self.problems.append(Problem(line, column, exc.key, exc.values))
            return None

    def _reason(self, line: int, text: str) -> StopReason | None:
        if not text:
            self.problem(line, "reason", "import.problem.empty_reason", known=self._reasons())
            return None
        reason = resolve_reason(self.config, text)
        if reason is None:
            self.problem(
                line, "reason", "import.problem.unknown_reason", text=text, known=self._reasons()
            )
        return reason

    def _reasons(self) -> tuple[StopReason, ...]:
        return tuple(self.config.stop_reasons)

    def _check_rate(self, line: int, machine: Machine, start: int, end: int, produced: int) -> None:
        rate = machine.rated_per_hour
        if rate is None or produced <= 2 * rate * (end - start) / 3_600_000:
            return
        self._over_rated.append(
            Problem(
                line,
                "produced",
                "import.warning.over_rated",
                {
                    "produced": str(produced),
                    "duration": _clock(end - start),
                    "machine": machine.id,
                    "rated": f"{rate:g}",
                },
            )
        )

    def check_overlaps(self) -> None:
        """Two production rows (or two stops) of one machine must not share time: the first
        would count parts twice, the second lose planned time twice."""
        for spans in self._spans.values():
            spans.sort(key=lambda r: (r.start_ms, r.line))
            latest = spans[0]
            for span in spans[1:]:
                if span.start_ms < latest.end_ms:
                    first, second = sorted((latest, span), key=lambda r: r.line)
                    self.problem(
                        second.line,
                        "start",
                        "import.problem.overlap",
                        other=str(first.line),
                        start=first.start_text,
                        end=first.end_text,
                    )
                if span.end_ms > latest.end_ms:
                    latest = span

    def warnings(self) -> list[Problem]:
        found = list(self._over_rated)
        stopped = {s.machine for s in self.stops}
        for machine_id in dict.fromkeys(r.machine for r in self.production):
            if self.machines[machine_id].state is None and machine_id not in stopped:
                found.append(
                    Problem(0, None, "import.warning.paper_without_stops", {"machine": machine_id})
                )
        for machine_id in dict.fromkeys(s.machine for s in self.stops):
            if self.machines[machine_id].state is not None:
                found.append(
                    Problem(0, None, "import.warning.sensor_stops", {"machine": machine_id})
                )
        return found


def _clock(ms: int) -> str:
    seconds = round(ms / 1000)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# -- planning the points --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MachinePlan:
    """What an import writes for one machine."""

    machine: str
    sensors: bool  # True: only counts are written into the collector's own minutes
    minutes: int
    stops: int
    produced: int
    rejected: int


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """The points of an import, in writing order, and after how many of them each row is in."""

    points: tuple[Point, ...]
    row_done_after: tuple[int, ...]  # sorted: row k is written once this many points are
    machines: tuple[MachinePlan, ...]
    first_ms: int | None
    last_ms: int | None

    @property
    def rows(self) -> int:
        return len(self.row_done_after)

    @property
    def minutes(self) -> int:
        return sum(m.minutes for m in self.machines)

    @property
    def stops(self) -> int:
        return sum(m.stops for m in self.machines)

    def rows_written(self, points_written: int) -> int:
        """Rows whose every point is among the first `points_written`."""
        return bisect.bisect_right(self.row_done_after, points_written)


class _Minute:
    __slots__ = ("produced", "rejected", "rows")

    def __init__(self) -> None:
        self.produced: int | None = None
        self.rejected: int | None = None
        self.rows: list[int] = []


def plan_import(parsed: ImportFile, config: Config) -> ImportPlan:
    """The `utilization` and `stop` points a checked file turns into (docs/capacity.md)."""
    calendar = ShiftCalendar(config.calendar, config.timezone)
    machines = {m.id: m for m in config.machines}
    keyed: list[tuple[tuple[str, int, int], Point, list[int]]] = []
    summaries = []
    rows: list[ProductionRow | StopRow] = [*parsed.production, *parsed.stops]
    for machine_id in sorted({r.machine for r in rows}):
        machine = machines[machine_id]
        production = [r for r in parsed.production if r.machine == machine_id]
        stops = sorted((r for r in parsed.stops if r.machine == machine_id), key=_by_start)
        minutes = _count_minutes(production)
        if machine.state is None:
            for stop in stops:
                for minute_ms in range(_floor(stop.start_ms), stop.end_ms, MINUTE_MS):
                    minutes.setdefault(minute_ms, _Minute()).rows.append(stop.line)
        tags = {
            TAG_FACTORY: config.factory,
            TAG_SECTOR: machine.sector,
            TAG_MACHINE: machine.id,
        }
        for minute_ms, minute in sorted(minutes.items()):
            shift = calendar.shift_at(minute_ms)
            minute_tags = tags | {TAG_SHIFT: shift} if shift is not None else tags
            fields: dict[str, FieldValue] = {}
            if machine.state is None:
                fields.update(_paper_minute(calendar, machine, stops, minute_ms))
            if minute.produced is not None:
                fields["produced"] = minute.produced
            if minute.rejected is not None:
                fields["rejected"] = minute.rejected
            if fields:
                key = (machine_id, minute_ms, 0)
                keyed.append((key, Point(UTILIZATION, minute_tags, fields, minute_ms), minute.rows))
        for stop in stops:
            point = _stop_point(calendar, tags, stop)
            keyed.append(((machine_id, stop.start_ms, 1), point, [stop.line]))
        summaries.append(
            MachinePlan(
                machine_id,
                machine.state is not None,
                len(minutes),
                len(stops),
                sum(r.produced for r in production),
                sum(r.rejected or 0 for r in production),
            )
        )
    keyed.sort(key=lambda item: item[0])
    last_point_of_row: dict[int, int] = {}
    for index, (_, _, lines) in enumerate(keyed):
        for line in lines:
            last_point_of_row[line] = index + 1
    times = [p.time_ms for _, p, _ in keyed]
    ends = [r.end_ms for r in rows]
    return ImportPlan(
        tuple(p for _, p, _ in keyed),
        tuple(sorted(last_point_of_row.values())),
        tuple(summaries),
        min(times) if times else None,
        max(ends) if ends else None,
    )


def _by_start(row: StopRow) -> int:
    return row.start_ms


def _floor(ms: int) -> int:
    return ms - ms % MINUTE_MS


def _count_minutes(rows: Iterable[ProductionRow]) -> dict[int, _Minute]:
    minutes: dict[int, _Minute] = {}
    for row in rows:
        starts = list(range(_floor(row.start_ms), row.end_ms, MINUTE_MS))
        weights = [min(m + MINUTE_MS, row.end_ms) - max(m, row.start_ms) for m in starts]
        produced = split_count(row.produced, weights)
        # Rejects are split within each minute's parts, so no minute rejects more than it made.
        rejected = (
            split_count(row.rejected, weights, caps=produced) if row.rejected is not None else None
        )
        for index, minute_ms in enumerate(starts):
            minute = minutes.setdefault(minute_ms, _Minute())
            minute.produced = (minute.produced or 0) + produced[index]
            if rejected is not None:
                minute.rejected = (minute.rejected or 0) + rejected[index]
            minute.rows.append(row.line)
    return minutes


def _paper_minute(
    calendar: ShiftCalendar, machine: Machine, stops: Sequence[StopRow], minute_ms: int
) -> dict[str, FieldValue]:
    """The seconds of a minute of a machine with no sensors, from the calendar and the file's
    stops: stopped time is down (reason category machine) or idle (any other), planned time
    not stopped is running, the rest is off; they add up to 60 s."""
    end_ms = minute_ms + MINUTE_MS
    planned = calendar.planned_ms(minute_ms, end_ms)
    down = idle = stopped_planned = 0
    # `stops` are sorted by start and never overlap (checked), so their ends are sorted too:
    # the ones in this minute sit just before the first that starts after it.
    last = bisect.bisect_left(stops, end_ms, key=lambda s: s.start_ms)
    first = bisect.bisect_right(stops, minute_ms, lo=0, hi=last, key=lambda s: s.end_ms)
    for stop in stops[first:last]:
        begin, finish = max(stop.start_ms, minute_ms), min(stop.end_ms, end_ms)
        if stop.reason.category == "machine":
            down += finish - begin
        else:
            idle += finish - begin
        stopped_planned += calendar.planned_ms(begin, finish)
    running = planned - stopped_planned
    off = MINUTE_MS - running - down - idle
    rate = machine.rated_per_hour or 0.0
    return {
        "planned_s": planned / 1000,
        "running_s": running / 1000,
        "idle_s": idle / 1000,
        "down_s": down / 1000,
        "off_s": off / 1000,
        "unknown_s": 0.0,
        "capacity": rate * MINUTE_MS / 3_600_000,
        "running_capacity": rate * running / 3_600_000,
        "micro_stops": 0,
    }


def _stop_point(calendar: ShiftCalendar, tags: Mapping[str, str], stop: StopRow) -> Point:
    fields: dict[str, FieldValue] = {
        "duration_s": (stop.end_ms - stop.start_ms) / 1000,
        "lost_s": calendar.planned_ms(stop.start_ms, stop.end_ms) / 1000,
        "state": "down" if stop.reason.category == "machine" else "idle",
        "open": False,
        "micro": False,
        "reason": stop.reason.id,
    }
    return Point(STOP, dict(tags), fields, stop.start_ms)


# -- writing --------------------------------------------------------------------------------------


class ImportInterrupted(Exception):
    """A write failed midway; `rows_written` rows (`points_written` points) are in InfluxDB."""

    def __init__(self, plan: ImportPlan, points_written: int, cause: WriteError) -> None:
        super().__init__(str(cause))
        self.plan = plan
        self.points_written = points_written
        self.rows_written = plan.rows_written(points_written)
        self.cause = cause


async def write_import(
    plan: ImportPlan,
    sink: Sink,
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write the plan's points in batches into an entered sink, calling `progress(done, total)`
    after each; raise `ImportInterrupted` at the first batch that fails."""
    total = len(plan.points)
    written = 0
    for first in range(0, total, batch_size):
        batch = plan.points[first : first + batch_size]
        try:
            await sink.write(batch)
        except WriteError as exc:
            # A refused batch stored its other points, but count none of them: "written" must
            # never claim more than is really there.
            raise ImportInterrupted(plan, written, exc) from exc
        written += len(batch)
        if progress is not None:
            progress(written, total)


class ProgressBar:
    """Progress as plain text: one line redrawn with `\\r` on a terminal, else one line per 10 %."""

    def __init__(
        self, stream: TextIO, label: str, *, width: int = 30, tty: bool | None = None
    ) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.tty = stream.isatty() if tty is None else tty
        self._tenths = 0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if self.tty:
            filled = self.width * done // total if total else self.width
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {percent:3d} % {done}/{total}")
            self._drawn = True
        elif percent // 10 > self._tenths:
            self._tenths = percent // 10
            self.stream.write(f"{self.label}: {percent} % ({done}/{total})\n")
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn line, so what is printed next starts on its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
