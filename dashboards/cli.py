"""`aguante kpi`: availability, performance, quality, OEE and capacity use over local plant dates,
as a table in the plant's language or as JSON (plugged into `aguante` through the
`aguante.commands` entry point)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector.config import LANGUAGES, Language, load_config_or_say
from collector.i18n import translate
from collector.influxql import InfluxQL, QueryError
from dashboards.kpi import Totals
from dashboards.kpi_query import GROUPINGS, Grouping, KpiRow, SelectionError, kpis, select_machines

__all__ = [
    "add_period_arguments",
    "format_number",
    "format_percent",
    "kpi_command",
    "kpi_json",
    "kpi_table",
    "parse_date",
    "register_kpi",
]

# (thousands, decimal) marks: Argentina, Brazil and Uruguay write 19.271 and 88,8 %.
_MARKS: dict[Language, tuple[str, str]] = {"es": (".", ","), "pt-BR": (".", ","), "en": (",", ".")}
_PERCENT: dict[Language, str] = {"es": " %", "pt-BR": " %", "en": "%"}
_NONE = "—"

_LABEL_HEADERS: dict[Grouping | None, str] = {
    None: "kpi.selection",
    "machine": "common.machine",
    "sector": "common.sector",
    "shift": "common.shift",
    "day": "kpi.day",
    "week": "kpi.week",
    "month": "kpi.month",
}
_COLUMNS = (
    "kpi.availability",
    "kpi.performance",
    "kpi.quality",
    "kpi.oee",
    "kpi.capacity_use",
    "kpi.unknown_share",
    "kpi.planned_hours",
    "kpi.running_hours",
    "kpi.produced",
    "kpi.rejected",
)


def register_kpi(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "kpi",
        help="availability, performance, quality, OEE and capacity use over local dates",
        description="Print the KPIs of the plant's machines over local plant dates (--to "
        "included: the whole day), from the utilization rollup in InfluxDB.",
    )
    parser.add_argument("config", type=Path, help="the factory YAML file")
    add_period_arguments(parser)
    parser.add_argument(
        "--machine",
        dest="machines",
        action="append",
        metavar="ID",
        help="only this machine (repeat for more)",
    )
    parser.add_argument("--sector", metavar="ID", help="only the machines of this sector")
    parser.add_argument("--by", choices=GROUPINGS, help="one row per machine, sector, … month")
    parser.add_argument("--json", action="store_true", help="machine-readable rows")
    parser.add_argument(
        "--lang", choices=LANGUAGES, help="language of the table (default: the config's)"
    )
    parser.set_defaults(func=kpi_command)


def add_period_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--from and --to, local plant dates, --to included (kpi, report, decision --list)."""
    parser.add_argument(
        "--from",
        dest="start",
        type=parse_date,
        required=required,
        metavar="DATE",
        help="YYYY-MM-DD",
    )
    parser.add_argument(
        "--to",
        dest="end",
        type=parse_date,
        required=required,
        metavar="DATE",
        help="YYYY-MM-DD, included",
    )


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: write YYYY-MM-DD") from None


def kpi_command(args: argparse.Namespace) -> int:
    """Run `aguante kpi`; 0, 1 (config or InfluxDB problem) or 2 (bad arguments)."""
    if args.start > args.end:
        _error(f"--from {args.start} is after --to {args.end}")
        return 2
    if args.end == dt.date.max:
        _error(f"--to {args.end} is past the last date this command can count")
        return 2
    config = load_config_or_say(args.config)
    if config is None:
        return 1
    try:
        chosen = select_machines(config, args.machines, args.sector)
    except SelectionError as exc:
        _error(str(exc))
        return 2
    machine_ids = [m.id for m in chosen]
    try:
        with InfluxQL.from_config(config.influxdb) as db:
            rows = kpis(
                db,
                config,
                args.start,
                args.end + dt.timedelta(days=1),
                machines=machine_ids,
                by=args.by,
            )
    except QueryError as exc:
        _error(str(exc))
        return 1
    if args.json:
        text = json.dumps(
            kpi_json(
                rows,
                factory=config.factory,
                start=args.start,
                end=args.end,
                by=args.by,
                machines=machine_ids,
            ),
            ensure_ascii=False,
            indent=2,
        )
    else:
        language: Language = args.lang or config.language
        selection = args.sector or ", ".join(args.machines or [])
        text = kpi_table(
            rows,
            language=language,
            by=args.by,
            title=translate(
                language,
                "kpi.title",
                factory=config.factory,
                start=args.start.isoformat(),
                end=args.end.isoformat(),
            ),
            selection=selection or None,
        )
    print(text)
    return 0


def _error(message: str) -> None:
    print(f"aguante kpi: {message}", file=sys.stderr)


def kpi_json(
    rows: Sequence[KpiRow],
    *,
    factory: str,
    start: dt.date,
    end: dt.date,
    by: Grouping | None,
    machines: Sequence[str],
) -> dict[str, Any]:
    """The rows as JSON-ready data: English keys, ratios as numbers or None, local ISO times;
    `to` is the last day included."""
    return {
        "factory": factory,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "by": by,
        "machines": list(machines),
        "rows": [
            {"label": row.label, "start": row.start.isoformat(), "end": row.end.isoformat()}
            | row.totals.to_dict()
            for row in rows
        ],
    }


def kpi_table(
    rows: Sequence[KpiRow],
    *,
    language: Language,
    by: Grouping | None,
    title: str = "",
    selection: str | None = None,
) -> str:
    """The rows as a text table in a language, with notes on time-based use under it.

    `selection` names the single row of an ungrouped table (the whole plant by default).
    """
    header = [translate(language, _LABEL_HEADERS[by])] + [
        translate(language, key) for key in _COLUMNS
    ]
    lines = [header]
    for row in rows:
        lines.append(
            [_row_label(row.label, by, language, selection), *_cells(row.totals, language)]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [title] if title else []
    out.append(render(header))
    out.append("  ".join("-" * width for width in widths))
    out += [render(line) for line in lines[1:]]
    time_based = translate(language, "kpi.time_based")
    notes = []
    if any(row.totals.capacity_use_basis == "time" or _mixed(row.totals) for row in rows):
        notes.append(translate(language, "kpi.note.time_based", time_based=time_based))
    if any(_mixed(row.totals) for row in rows):
        notes.append(translate(language, "kpi.note.mixed", time_based=time_based))
    if all(row.totals.recorded_s == 0 for row in rows):
        notes.append(translate(language, "kpi.note.no_data"))
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def _mixed(totals: Totals) -> bool:
    return totals.capacity_use_basis == "parts" and totals.time_based_machines > 0


def _row_label(label: str, by: Grouping | None, language: Language, selection: str | None) -> str:
    if by is None:
        return selection or translate(language, "kpi.whole_plant")
    if by == "shift" and not label:
        return translate(language, "kpi.outside_shifts")
    return label


def _cells(totals: Totals, language: Language) -> list[str]:
    capacity_use = format_percent(totals.capacity_use, language)
    if totals.capacity_use_basis == "time":
        capacity_use += " *"
    elif _mixed(totals):
        capacity_use += f" (+{totals.time_based_machines} *)"
    return [
        format_percent(totals.availability, language),
        format_percent(totals.performance, language),
        format_percent(totals.quality, language),
        format_percent(totals.oee, language),
        capacity_use,
        format_percent(totals.unknown_share, language),
        format_number(totals.planned_s / 3600, 1, language),
        format_number(totals.running_s / 3600, 1, language),
        format_number(totals.produced, 0, language),
        format_number(totals.rejected, 0, language),
    ]


def format_number(value: float, decimals: int, language: Language) -> str:
    thousands, decimal = _MARKS[language]
    text = f"{value:,.{decimals}f}"
    return text.translate(str.maketrans(",.", thousands + decimal))


def format_percent(ratio: float | None, language: Language, decimals: int = 1) -> str:
    if ratio is None:
        return _NONE
    return format_number(ratio * 100, decimals, language) + _PERCENT[language]
