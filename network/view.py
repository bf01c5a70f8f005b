"""The network view: one Grafana dashboard over the network's InfluxDB (`plant_hourly`), which
`aguante network show` also prints in a terminal, panel by panel, read as Grafana reads it.

- free capacity by process and week across the plants: planned hours lost for lack of orders
  (reasons of category `demand`), the capacity another plant could send work to;
- plants short of capacity: each plant's use of its planned time over the last four weeks,
  red above the network's `short_above`;
- losses by category across the network, per week (how much capacity missing raw material
  costs network-wide), and capacity use by process per week;
- each plant under its own name only when it chose so (`network.named`), else under an alias.
"""

from __future__ import annotations

from typing import Any

from collector.i18n import Language, translate
from collector.influxql import quote_ident, quote_string
from dashboards.grafana import (
    SCHEMA_VERSION,
    _builtin_annotations,
    _Layout,
    _target,
    _thresholds,
    panel_json,
)
from network.config import NetworkConfig
from network.ingest import MEASUREMENT
from network.rollup import CATEGORIES

__all__ = ["UID", "network_dashboard"]

UID = "aguante-network"
_GROUPS = f"{quote_ident('kind')} <> 'machine'"  # every machine once: its process or sector
_PROCESSES = f"{quote_ident('kind')} = 'process'"
# A week's sum as one stacked bar per series.
_WEEKLY_BARS = {
    "drawStyle": "bars",
    "fillOpacity": 80,
    "stacking": {"mode": "normal", "group": "A"},
    "barAlignment": -1,
    "lineWidth": 1,
}


def network_dashboard(config: NetworkConfig, language: Language) -> dict[str, Any]:
    """The network's dashboard, titles in `language`, weeks from Monday in its time zone."""

    def t(key: str, **values: Any) -> str:
        return translate(language, f"network.{key}", **values)

    source = quote_ident(MEASUREMENT)
    if config.influxdb.retention_policy:
        source = f"{quote_ident(config.influxdb.retention_policy)}.{source}"
    tz = f" tz({quote_string(config.timezone)})"
    weekly = "GROUP BY time(1w, 4d)"  # InfluxQL weeks start on Thursday: 4 days on is Monday
    layout = _Layout()

    def panel(kind: str, key: str, targets: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        title, description = t(f"panel.{key}"), t(f"panel.{key}.description")
        return panel_json(kind, title, description, targets, **extra)

    free = (
        f"SELECT sum({quote_ident('lost_demand_s')}) / 3600 AS {quote_ident('free_h')}"
        f" FROM {source} WHERE {_PROCESSES} AND $timeFilter"
        f" {weekly}, {quote_ident('group')} fill(0){tz}"
    )
    layout.add(
        panel(
            "barchart",
            "free_by_process",
            [_target(free, alias="$tag_group")],
            unit="h",
            options={
                "xTickLabelSpacing": 100,
                "stacking": "normal",
                "legend": {"showLegend": True},
            },
        ),
        24,
        9,
    )
    short = (
        f"SELECT sum({quote_ident('running_s')}) / sum({quote_ident('planned_s')})"
        f" AS {quote_ident('use')},"
        f" sum({quote_ident('lost_demand_s')}) / 3600 AS {quote_ident('free_h')},"
        f" last({quote_ident('name')}) AS {quote_ident('name')}"
        f" FROM {source} WHERE {_GROUPS} AND {quote_ident('planned_s')} > 0 AND $timeFilter"
        f" GROUP BY {quote_ident('plant')}"
    )
    layout.add(
        panel(
            "table",
            "short",
            [_target(short, table=True)],
            unit="percentunit",
            timeFrom="now-28d",
            defaults={
                "decimals": 0,
                "thresholds": _thresholds((None, "green"), (config.short_above, "red")),
                "custom": {"cellOptions": {"type": "color-background"}},
            },
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "free_h"},
                    "properties": [
                        {"id": "unit", "value": "h"},
                        {"id": "displayName", "value": t("column.free_h")},
                        {"id": "custom.cellOptions", "value": {"type": "auto"}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "use"},
                    "properties": [{"id": "displayName", "value": t("column.use")}],
                },
                {
                    "matcher": {"id": "byName", "options": "plant"},
                    "properties": [{"id": "displayName", "value": t("column.plant")}],
                },
                {
                    "matcher": {"id": "byName", "options": "name"},
                    "properties": [
                        {"id": "displayName", "value": t("column.name")},
                        {"id": "custom.cellOptions", "value": {"type": "auto"}},
                    ],
                },
            ],
            options={"sortBy": [{"displayName": t("column.use"), "desc": True}]},
        ),
        12,
        10,
    )
    by_process = (
        f"SELECT sum({quote_ident('lost_demand_s')}) / 3600 AS {quote_ident('free_h')},"
        f" last({quote_ident('name')}) AS {quote_ident('name')}"
        f" FROM {source} WHERE {_PROCESSES} AND $timeFilter"
        f" GROUP BY {quote_ident('plant')}, {quote_ident('group')}"
    )
    layout.add(
        panel(
            "table",
            "free_where",
            [_target(by_process, table=True)],
            unit="h",
            timeFrom="now-28d",
            defaults={"decimals": 0},
            overrides=[
                {
                    "matcher": {"id": "byName", "options": name},
                    "properties": [{"id": "displayName", "value": t(f"column.{name}")}],
                }
                for name in ("plant", "name", "group", "free_h")
            ],
            options={"sortBy": [{"displayName": t("column.free_h"), "desc": True}]},
        ),
        12,
        10,
    )
    losses = ", ".join(
        f"sum({quote_ident(f'lost_{category}_s')}) / 3600 AS {quote_ident(category)}"
        for category in CATEGORIES
    )
    lost = f"SELECT {losses} FROM {source} WHERE {_GROUPS} AND $timeFilter {weekly} fill(0){tz}"
    layout.add(
        panel(
            "timeseries",
            "losses",
            [_target(lost, alias="$col")],
            unit="h",
            defaults={"custom": _WEEKLY_BARS},
            overrides=[
                {
                    "matcher": {"id": "byName", "options": category},
                    "properties": [{"id": "displayName", "value": t(f"category.{category}")}],
                }
                for category in CATEGORIES
            ],
        ),
        24,
        9,
    )
    use = (
        f"SELECT sum({quote_ident('running_s')}) / sum({quote_ident('planned_s')})"
        f" FROM {source} WHERE {_PROCESSES} AND {quote_ident('planned_s')} > 0 AND $timeFilter"
        f" {weekly}, {quote_ident('group')} fill(none){tz}"
    )
    layout.add(
        panel(
            "timeseries",
            "use_by_process",
            [_target(use, alias="$tag_group")],
            unit="percentunit",
            defaults={"min": 0, "max": 1, "decimals": 0},
        ),
        24,
        9,
    )
    return {
        "uid": UID,
        "title": t("title", network=config.network),
        "description": t("description"),
        "tags": ["aguante", "network"],
        "timezone": config.timezone,
        "weekStart": "monday",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "5m",
        "time": {"from": "now-12w/w", "to": "now"},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "templating": {"list": []},
        "annotations": {"list": [_builtin_annotations()]},
        "links": [],
        "panels": layout.panels,
    }
