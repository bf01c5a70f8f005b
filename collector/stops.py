"""Stops as people see them: listed from InfluxDB, given a reason afterwards, and summed into the
losses an assembly discusses (docs/capacity.md). Shared by `aguante stops` and the web app.

A stop is keyed by its machine and start time; its ID, `<machine>@<UTC start in ms>`, names that
key exactly, so assigning a reason rewrites the very point the collector wrote.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from collector.config import Config, Language, StopReason
from collector.i18n import translate
from collector.influxql import InfluxQL, quote_ident, quote_string, regex_any, time_literal
from collector.schema import STOP, STOP_FIELDS, TAG_FACTORY, TAG_MACHINE, TAG_SECTOR, Point
from collector.sinks import Sink

__all__ = [
    "UNASSIGNED",
    "InvalidStopId",
    "Loss",
    "Losses",
    "Stop",
    "StopNotFound",
    "UnknownReason",
    "assign_reason",
    "category_name",
    "clock",
    "find_stop",
    "list_stops",
    "local_time",
    "losses_by_reason",
    "losses_json",
    "losses_table",
    "parse_stop_id",
    "reason_category",
    "reason_name",
    "reason_point",
    "resolve_reason",
    "stop_id",
    "stops_json",
    "stops_table",
]

# The category of stops nobody gave a reason yet (its text is "common.category.unassigned").
UNASSIGNED = "unassigned"

_STOP_ID = re.compile(r"^(?P<machine>[A-Za-z0-9_.\-]+)@(?P<ms>-?\d{1,19})$")


class InvalidStopId(ValueError):
    """Text that is not `<machine>@<UTC start in ms>`."""

    def __init__(self, text: str) -> None:
        super().__init__(f"{text!r} is not a stop id: write <machine>@<UTC start in ms>")
        self.text = text


class StopNotFound(LookupError):
    """No stop of that machine starts at that instant."""

    def __init__(self, machine: str, start_ms: int) -> None:
        super().__init__(f"no stop of {machine!r} starts at {start_ms} ms")
        self.machine = machine
        self.start_ms = start_ms


class UnknownReason(ValueError):
    """A reason that is neither an id nor a name of the config's stop reasons."""

    def __init__(self, text: str, reasons: Sequence[StopReason]) -> None:
        known = ", ".join(r.id for r in reasons)
        super().__init__(f"{text!r} is not a stop reason; use one of: {known}")
        self.text = text
        self.reasons = tuple(reasons)


@dataclass(frozen=True, slots=True)
class Stop:
    """One stop as stored: `reason` is "" until someone gives one."""

    machine: str
    sector: str
    start_ms: int
    duration_s: float
    lost_s: float
    state: str
    open: bool
    micro: bool
    reason: str
    tags: tuple[tuple[str, str], ...] = ()  # every tag of its series, to rewrite it exactly

    @property
    def id(self) -> str:
        return stop_id(self.machine, self.start_ms)

    @property
    def end_ms(self) -> int:
        return self.start_ms + round(self.duration_s * 1000)


def stop_id(machine: str, start_ms: int) -> str:
    """`<machine>@<UTC start in ms>`, e.g. `press-1@1764066725123`."""
    return f"{machine}@{start_ms}"


def parse_stop_id(text: str) -> tuple[str, int]:
    """(machine, start_ms) of a stop id; raises `InvalidStopId`."""
    match = _STOP_ID.match(text.strip())
    if match is None:
        raise InvalidStopId(text)
    return match["machine"], int(match["ms"])


def resolve_reason(config: Config, text: str) -> StopReason | None:
    """The stop reason `text` names: its id, or its name in any language, case-insensitive."""
    wanted = text.strip().casefold()
    if not wanted:
        return None
    for reason in config.stop_reasons:
        if reason.id.casefold() == wanted:
            return reason
    for reason in config.stop_reasons:
        names = set(reason.label.values()) | {reason.name(lang) for lang in ("es", "pt-BR", "en")}
        if any(name.strip().casefold() == wanted for name in names):
            return reason
    return None


def list_stops(
    db: InfluxQL,
    config: Config,
    start_ms: int,
    end_ms: int,
    machines: Sequence[str] | None = None,
    include_micro: bool = False,
) -> list[Stop]:
    """The plant's stops that start in [start_ms, end_ms), newest first; micro-stops only with
    `include_micro`. Raises `collector.influxql.QueryError`."""
    where = [
        f"{quote_ident(TAG_FACTORY)} = {quote_string(config.factory)}",
        f"time >= {time_literal(start_ms)}",
        f"time < {time_literal(end_ms)}",
    ]
    if machines is not None:
        if not machines:
            return []
        where.append(f"{quote_ident(TAG_MACHINE)} =~ {regex_any(sorted(set(machines)))}")
    stops = _select_stops(db, where)
    if not include_micro:
        stops = [s for s in stops if not s.micro]
    return sorted(stops, key=lambda s: (-s.start_ms, s.machine))


def find_stop(db: InfluxQL, config: Config, machine: str, start_ms: int) -> Stop | None:
    """The stop of `machine` that starts exactly at `start_ms`, or None."""
    where = [
        f"{quote_ident(TAG_FACTORY)} = {quote_string(config.factory)}",
        f"{quote_ident(TAG_MACHINE)} = {quote_string(machine)}",
        f"time >= {time_literal(start_ms)}",
        f"time < {time_literal(start_ms + 1)}",
    ]
    found = _select_stops(db, where)
    return found[0] if found else None


def reason_point(config: Config, stop: Stop, reason: str) -> Point:
    """The point that gives `stop` its reason ("" clears it): the stop's own series and time and
    only the `reason` field, so InfluxDB keeps its other fields (it merges a point's fields)."""
    tags = dict(stop.tags) or {
        TAG_FACTORY: config.factory,
        TAG_SECTOR: stop.sector,
        TAG_MACHINE: stop.machine,
    }
    return Point(STOP, tags, {"reason": reason}, stop.start_ms)


async def assign_reason(
    db: InfluxQL, sink: Sink, config: Config, stop_id_text: str, reason: str
) -> Stop:
    """Give the stop `stop_id_text` a reason (an id or a name of config.stop_reasons; "" clears
    it) and return the stop as it is now. Raises `InvalidStopId`, `UnknownReason`,
    `StopNotFound`, `QueryError` or a `collector.sinks.WriteError`.

    `sink` must be entered (`async with sink:`). The look-up is one short synchronous query.
    """
    machine, start_ms = parse_stop_id(stop_id_text)
    reason_id = ""
    if reason.strip():
        found = resolve_reason(config, reason)
        if found is None:
            raise UnknownReason(reason, config.stop_reasons)
        reason_id = found.id
    stop = find_stop(db, config, machine, start_ms)
    if stop is None:
        raise StopNotFound(machine, start_ms)
    await sink.write([reason_point(config, stop, reason_id)])
    return Stop(
        stop.machine,
        stop.sector,
        stop.start_ms,
        stop.duration_s,
        stop.lost_s,
        stop.state,
        stop.open,
        stop.micro,
        reason_id,
        stop.tags,
    )


@dataclass(frozen=True, slots=True)
class Loss:
    """What the stops of one reason (or one category) cost in planned time and in parts.

    `parts` counts only stops of machines with a rated speed (None when none had one);
    `unrated_s` is the lost time of the others, which no part count can be given for.
    """

    key: str
    stops: int
    lost_s: float
    parts: float | None
    unrated_s: float

    @property
    def lost_h(self) -> float:
        return self.lost_s / 3600


@dataclass(frozen=True, slots=True)
class Losses:
    """Losses per reason id ("" = none given) and per category ("unassigned" = none given),
    each ordered from the largest lost time down."""

    by_reason: dict[str, Loss]
    by_category: dict[str, Loss]
    total: Loss


def losses_by_reason(stops: Iterable[Stop], config: Config) -> Losses:
    """Sum lost planned time (`lost_s`) and parts lost (lost_s × rated_per_hour / 3600) per reason
    and per category. A reason no longer in the config counts under category "other"."""
    rates = {m.id: m.rated_per_hour for m in config.machines}
    reasons: dict[str, _Sum] = {}
    categories: dict[str, _Sum] = {}
    total = _Sum()
    for stop in stops:
        category = _category(config, stop.reason)
        rate = rates.get(stop.machine)
        for sums in (
            reasons.setdefault(stop.reason, _Sum()),
            categories.setdefault(category, _Sum()),
            total,
        ):
            sums.add(stop.lost_s, rate)
    return Losses(
        by_reason=_ordered(reasons),
        by_category=_ordered(categories),
        total=total.loss("total"),
    )


def reason_category(config: Config, reason_id: str) -> str:
    """The category of a stop's reason: "unassigned" while none is given, "other" for a reason
    no longer in the config."""
    return _category(config, reason_id)


def _category(config: Config, reason_id: str) -> str:
    if not reason_id:
        return UNASSIGNED
    reason = config.reason(reason_id)
    return reason.category if reason is not None else "other"


class _Sum:
    def __init__(self) -> None:
        self.stops = 0
        self.lost_s = 0.0
        self.parts: float | None = None
        self.unrated_s = 0.0

    def add(self, lost_s: float, rate: float | None) -> None:
        self.stops += 1
        self.lost_s += lost_s
        if rate is None:
            self.unrated_s += lost_s
        else:
            self.parts = (self.parts or 0.0) + lost_s * rate / 3600

    def loss(self, key: str) -> Loss:
        return Loss(key, self.stops, self.lost_s, self.parts, self.unrated_s)


def _ordered(sums: dict[str, _Sum]) -> dict[str, Loss]:
    ranked = sorted(sums.items(), key=lambda item: (-item[1].lost_s, item[0]))
    return {key: s.loss(key) for key, s in ranked}


def _select_stops(db: InfluxQL, where: list[str]) -> list[Stop]:
    fields = ", ".join(quote_ident(f) for f in STOP_FIELDS)
    statement = f"SELECT {fields} FROM {quote_ident(STOP)} WHERE {' AND '.join(where)} GROUP BY *"
    stops = []
    for series in db.select(statement):
        tags = tuple(sorted((k, v) for k, v in series.tags.items() if v))
        for row in series.rows:
            stop = _stop(series.tags, tags, row)
            if stop is not None:
                stops.append(stop)
    return stops


def _stop(
    tags: Mapping[str, str], all_tags: tuple[tuple[str, str], ...], row: dict[str, Any]
) -> Stop | None:
    duration = row.get("duration_s")
    if not isinstance(duration, int | float) or isinstance(duration, bool):
        return None  # a lone `reason` with no stop under it is not a stop
    lost = row.get("lost_s")
    return Stop(
        machine=tags.get(TAG_MACHINE, ""),
        sector=tags.get(TAG_SECTOR, ""),
        start_ms=int(row["time"]),
        duration_s=float(duration),
        lost_s=float(lost) if isinstance(lost, int | float) and not isinstance(lost, bool) else 0.0,
        state=str(row.get("state") or ""),
        open=row.get("open") is True,
        micro=row.get("micro") is True,
        reason=str(row.get("reason") or ""),
        tags=all_tags,
    )


# -- text for people --------------------------------------------------------------------------


def clock(seconds: float) -> str:
    """h:mm:ss, hours unbounded: 1:05:00, 27:00:00."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def local_time(time_ms: int, zone: ZoneInfo) -> str:
    """`2026-11-24 10:15:03` in the plant's zone."""
    return f"{dt.datetime.fromtimestamp(time_ms / 1000, zone):%Y-%m-%d %H:%M:%S}"


def reason_name(config: Config, reason_id: str, language: Language) -> str:
    """The reason's name in a language; "—" for none given, the id for one the config lost."""
    if not reason_id:
        return "—"
    reason = config.reason(reason_id)
    return reason.name(language) if reason is not None else reason_id


def category_name(category: str, language: Language) -> str:
    return translate(language, f"common.category.{category}")


def stops_table(stops: Sequence[Stop], config: Config, language: Language) -> list[str]:
    """The lines of a table of stops, as `aguante stops` prints it."""
    zone = ZoneInfo(config.timezone)
    headers = [
        translate(language, "stops.column.id"),
        translate(language, "common.machine"),
        translate(language, "stops.column.start"),
        translate(language, "stops.column.duration"),
        translate(language, "stops.column.lost"),
        translate(language, "stops.column.state"),
        translate(language, "stops.column.reason"),
        "",
    ]
    rows = [
        [
            stop.id,
            stop.machine,
            local_time(stop.start_ms, zone),
            clock(stop.duration_s),
            clock(stop.lost_s),
            _state_name(stop.state, language),
            reason_name(config, stop.reason, language),
            translate(language, "stops.open") if stop.open else "",
        ]
        for stop in stops
    ]
    return _table(headers, rows, right={3, 4})


def losses_table(losses: Losses, language: Language) -> list[str]:
    """The lines of a table of losses per category, largest first, with the total."""
    headers = [
        translate(language, "stops.column.category"),
        translate(language, "stops.column.count"),
        translate(language, "stops.column.lost"),
        translate(language, "stops.column.parts"),
    ]
    rows = [
        [category_name(loss.key, language), str(loss.stops), clock(loss.lost_s), _parts(loss)]
        for loss in losses.by_category.values()
    ]
    total = losses.total
    rows.append(
        [translate(language, "stops.total"), str(total.stops), clock(total.lost_s), _parts(total)]
    )
    lines = _table(headers, rows, right={1, 2, 3})
    if total.unrated_s:
        lines.append(translate(language, "stops.unrated", time=clock(total.unrated_s)))
    return lines


def stops_json(stops: Sequence[Stop], config: Config, language: Language) -> list[dict[str, Any]]:
    zone = ZoneInfo(config.timezone)
    found = []
    for stop in stops:
        start = dt.datetime.fromtimestamp(stop.start_ms / 1000, zone)
        found.append(
            {
                "id": stop.id,
                "machine": stop.machine,
                "sector": stop.sector,
                "start": start.isoformat(timespec="milliseconds"),
                "start_ms": stop.start_ms,
                "duration_s": stop.duration_s,
                "lost_s": stop.lost_s,
                "state": stop.state,
                "open": stop.open,
                "micro": stop.micro,
                "reason": stop.reason,
                "reason_name": reason_name(config, stop.reason, language) if stop.reason else None,
                "category": _category(config, stop.reason),
            }
        )
    return found


def losses_json(losses: Losses, config: Config, language: Language) -> dict[str, Any]:
    def row(loss: Loss) -> dict[str, Any]:
        return {
            "stops": loss.stops,
            "lost_s": loss.lost_s,
            "lost_h": loss.lost_h,
            "parts": loss.parts,
            "unrated_s": loss.unrated_s,
        }

    return {
        "by_category": [
            {"category": loss.key, "name": category_name(loss.key, language)} | row(loss)
            for loss in losses.by_category.values()
        ],
        "by_reason": [
            {
                "reason": loss.key,
                "name": reason_name(config, loss.key, language) if loss.key else None,
                "category": _category(config, loss.key),
            }
            | row(loss)
            for loss in losses.by_reason.values()
        ],
        "total": row(losses.total),
    }


def _state_name(state: str, language: Language) -> str:
    if state in ("running", "idle", "down", "off", "unknown"):
        return translate(language, f"common.state.{state}")
    return state


def _parts(loss: Loss) -> str:
    return "—" if loss.parts is None else f"{loss.parts:.0f}"


def _table(headers: list[str], rows: list[list[str]], *, right: set[int]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for cells in (headers, *rows):
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return lines
