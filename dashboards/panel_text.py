"""A panel's answer as lines of text, formatted the way the panel formats it (its unit, value
mappings and column names), for `aguante dashboards show`."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from collector.config import Language
from collector.i18n import translate
from collector.influxql import Series
from dashboards.cli import format_number, format_percent
from dashboards.grafana_query import PanelAnswer, TargetAnswer

__all__ = ["format_value", "panel_lines"]


def panel_lines(answer: PanelAnswer, language: Language, zone: ZoneInfo) -> list[str]:
    """The panel's title and its figures: one line per series (its newest value), or a table."""
    lines = [f"## {answer.title}"]
    panel = answer.panel
    table = panel.get("type") == "table" or any(
        t.get("resultFormat") == "table" for t in panel.get("targets", [])
    )
    pairs: list[tuple[str, str]] = []
    if answer.targets and all(t.empty for t in answer.targets):
        return [*lines, f"  ({translate(language, 'dashboards.show.no_data')})"]
    for target, spec in zip(answer.targets, _target_specs(panel), strict=False):
        if target.problem:
            lines.append(f"  ({target.problem})")
        elif target.empty:
            continue
        elif table:
            lines += _table(target, panel, language, zone)
        else:
            pairs += _series(target, spec, panel, language, zone)
    width = max((len(label) for label, _ in pairs), default=0)
    lines += [f"  {label.ljust(width)}  {value}" for label, value in pairs]
    if len(lines) == 1:  # every row filtered out (no open ticket, say)
        lines.append(f"  ({translate(language, 'dashboards.show.no_data')})")
    return lines


def _target_specs(panel: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if "targets" in panel:
        return list(panel["targets"])
    return [panel]  # an annotation is its own query


def _series(
    target: TargetAnswer,
    spec: Mapping[str, Any],
    panel: Mapping[str, Any],
    language: Language,
    zone: ZoneInfo,
) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for series in target.series:
        columns = [c for row in series.rows for c in row if c != "time"]
        for column in dict.fromkeys(columns):
            values = [row[column] for row in series.rows if row.get(column) is not None]
            if not values:
                continue
            label = _renamed(panel, _label(spec.get("alias", ""), series, column))
            pairs.append((label, format_value(values[-1], column, panel, language, zone)))
    return pairs


def _renamed(panel: Mapping[str, Any], name: str) -> str:
    """A series' name after the panel's renaming transformations, as Grafana shows it."""
    for step in panel.get("transformations", []):
        options = step.get("options", {})
        if step["id"] == "renameByRegex":
            pattern = re.sub(r"\$(\d)", r"\\\1", options["renamePattern"])
            name = re.sub(options["regex"], pattern, name)
        name = options.get("renameByName", {}).get(name, name)
    return name


def _label(alias: str, series: Series, column: str) -> str:
    """A series' name as Grafana's InfluxQL data source gives it: the alias with `$tag_x` and
    `$col` put in, or `measurement.column {tag: value, …}`."""
    if alias:
        text = re.sub(r"\$tag_(\w+)", lambda m: series.tags.get(m[1], ""), alias)
        return text.replace("$col", column)
    tags = ", ".join(f"{k}: {series.tags[k]}" for k in sorted(series.tags))
    return f"{series.name}.{column}" + (f" {{{tags}}}" if tags else "")


def _table(
    target: TargetAnswer, panel: Mapping[str, Any], language: Language, zone: ZoneInfo
) -> list[str]:
    names: dict[str, str] = {}
    hidden: set[str] = set()
    for step in panel.get("transformations", []):
        options = step.get("options", {})
        names |= options.get("renameByName", {})
        hidden |= {k for k, v in options.get("excludeByName", {}).items() if v}
    records: list[dict[str, Any]] = []
    for series in target.series:
        for row in series.rows:
            records.append({**series.tags, **row})
    for step in panel.get("transformations", []):
        if step["id"] == "filterByValue":
            records = _filtered(records, step["options"])
        elif step["id"] == "groupBy":
            records = _grouped(records, step["options"])
    if not records:
        return []
    columns = [c for c in dict.fromkeys(k for r in records for k in r)]
    columns = [c for c in columns if ("Time" if c == "time" else c) not in hidden]
    header = [names.get("Time" if c == "time" else c, c) for c in columns]
    body = [
        [
            format_value(record.get(c), "Time" if c == "time" else c, panel, language, zone)
            for c in columns
        ]
        for record in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += [
        "  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in body
    ]
    return lines


def _filtered(records: list[dict[str, Any]], options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Grafana's "filter data by values" for its `equal` condition."""

    def matches(record: Mapping[str, Any]) -> bool:
        tests = [
            record.get(f["fieldName"]) == f["config"]["options"]["value"]
            for f in options["filters"]
            if f["config"]["id"] == "equal"
        ]
        return any(tests) if options.get("match") == "any" else all(tests)

    keep = options.get("type") == "include"
    return [r for r in records if matches(r) == keep]


def _grouped(records: list[dict[str, Any]], options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Grafana's "group by" with `sum` and `count` aggregations."""
    fields = options["fields"]
    keys = [k for k, how in fields.items() if how["operation"] == "groupby"]
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        group = groups.setdefault(
            tuple(record.get(k) for k in keys), {k: record.get(k) for k in keys}
        )
        for name, how in fields.items():
            for aggregation in how.get("aggregations", []):
                column = f"{name} ({aggregation})"
                step = record.get(name) or 0 if aggregation == "sum" else 1
                group[column] = group.get(column, 0) + step
    return list(groups.values())


def format_value(
    value: Any, column: str, panel: Mapping[str, Any], language: Language, zone: ZoneInfo
) -> str:
    """A value as the panel shows it: mapped (state codes, reasons), then in the column's unit."""
    if value is None:
        return "—"
    config = dict(panel.get("fieldConfig", {}).get("defaults", {}))
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        if override["matcher"]["options"] == column:
            config |= {p["id"]: p["value"] for p in override["properties"]}
    key = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    for mapping in config.get("mappings", []):
        option = mapping.get("options", {}).get(key)
        if option is not None:
            return str(option["text"])
    unit = config.get("unit", "none") if column != "Time" else config.get("unit", "dateTime")
    if column == "Time" and unit not in ("dateTimeFromNow", "dateTime"):
        unit = "dateTime"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if unit == "percentunit":
        return format_percent(float(value), language)
    if unit in ("dateTimeFromNow", "dateTime"):
        if value <= 0:
            return "—"
        moment = dt.datetime.fromtimestamp(value / 1000, zone)
        return moment.strftime("%Y-%m-%d %H:%M")
    if unit == "s":
        seconds = round(value)
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    decimals = config.get("decimals")
    if decimals is None:
        decimals = 0 if float(value).is_integer() else 1
    text = format_number(float(value), int(decimals), language)
    return f"{text} h" if unit == "h" else text
