"""Grafana dashboards as code: the shop floor, one machine, maintenance and the assembly.

Plain dicts in Grafana's dashboard JSON model, built from the InfluxDB schema (collector.schema)
and, when given, the factory file (its stop reasons, time zone and retention policies); every
title and label in es, pt-BR or en. Queries are raw InfluxQL with Grafana's `$timeFilter`,
`$__interval`, `$__range_s` and the `$sector` / `$machine` variables, in the subset InfluxDB
1.6+, 2.x (v1 API) and 3.x serve. Uids are fixed, so a dashboard rebuilt in another language
replaces the old one instead of sitting beside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from collector.config import Config, Language, StopReason, parse_config
from collector.i18n import translate
from collector.influxql import quote_ident, quote_string, regex_any
from collector.schema import (
    MACHINE_STATE,
    READING,
    RELIABILITY,
    RULE_STATUS,
    STATE_CODES,
    STOP,
    TAG_MACHINE,
    TAG_SECTOR,
    TICKET,
    UTILIZATION,
    UTILIZATION_DAILY,
)

__all__ = [
    "DASHBOARD_NAMES",
    "DATASOURCE",
    "DATASOURCE_UID",
    "build_dashboards",
    "default_config",
    "panel_json",
    "panels_of",
    "write_dashboards",
]

DATASOURCE_UID: Final = "aguante-influxdb"  # dashboards/provisioning/datasources/aguante.yaml
DATASOURCE: Final[Mapping[str, str]] = {"type": "influxdb", "uid": DATASOURCE_UID}
DASHBOARD_NAMES: Final = ("floor", "machine", "maintenance", "assembly")
SCHEMA_VERSION: Final = 39  # Grafana 11's dashboard JSON model

# One colour per state, and "no data" its own (purple): never mistaken for stopped.
STATE_COLOURS: Final = {
    "running": "green",
    "idle": "yellow",
    "down": "red",
    "off": "#6E6E6E",
    "unknown": "purple",
}
CATEGORIES: Final = ("demand", "supply", "machine", "people", "planned", "other")

SECTOR_MATCH: Final = f"{quote_ident(TAG_SECTOR)} =~ /^$sector$/"
MACHINE_MATCH: Final = f"{quote_ident(TAG_MACHINE)} =~ /^$machine$/"
SELECTED: Final = f"{SECTOR_MATCH} AND {MACHINE_MATCH}"


def default_config() -> Config:
    """The defaults of a factory file (stop reasons, retention policies), for dashboards built
    without one: in the plant's browser time zone."""
    return parse_config(
        "factory: plant\nsectors: [{id: s}]\nmachines: [{id: m, sector: s}]\n", environ={}
    )


def build_dashboards(config: Config | None, language: Language) -> dict[str, dict[str, Any]]:
    """The four dashboards (name → dashboard JSON) in one language."""
    builder = _Builder(config or default_config(), language)
    return {
        "floor": builder.floor(),
        "machine": builder.machine(),
        "maintenance": builder.maintenance(),
        "assembly": builder.assembly(),
    }


def write_dashboards(dashboards: Mapping[str, Mapping[str, Any]], folder: Path) -> list[Path]:
    """One `<name>.json` per dashboard in `folder` (made if missing), stable key order, so a
    rebuild of unchanged dashboards changes no byte."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dashboard in dashboards.items():
        path = folder / f"{name}.json"
        text = json.dumps(dashboard, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def panels_of(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


# -- pieces of the JSON model --------------------------------------------------------------------


def _target(query: str, *, ref: str = "A", table: bool = False, alias: str = "") -> dict[str, Any]:
    target: dict[str, Any] = {
        "refId": ref,
        "datasource": dict(DATASOURCE),
        "query": query,
        "rawQuery": True,
        "resultFormat": "table" if table else "time_series",
    }
    if alias:
        target["alias"] = alias
    return target


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


# Capacity use and OEE: red below half, orange below three quarters.
_RATIO_STEPS: Final = _thresholds((None, "red"), (0.5, "orange"), (0.75, "green"))
# Service meters: a share of the limit, due at 1.
_METER: Final = {
    "min": 0,
    "max": 1,
    "decimals": 0,
    "thresholds": _thresholds((None, "green"), (0.8, "orange"), (1, "red")),
}
_LAST_VALUE: Final = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def _bars(display: str = "basic", calcs: Sequence[str] = ("lastNotNull",)) -> dict[str, Any]:
    """Options of a bar gauge with one horizontal bar per series."""
    return {
        "reduceOptions": {**_LAST_VALUE, "calcs": list(calcs)},
        "orientation": "horizontal",
        "displayMode": display,
    }


def panel_json(
    kind: str,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str,
    **extra: Any,
) -> dict[str, Any]:
    """A panel of the JSON model: `defaults`, `overrides` and `options` go where Grafana reads
    them, anything else at the panel's top level (timeFrom, timeShift, transformations…)."""
    defaults: dict[str, Any] = {"unit": unit}
    defaults.update(extra.pop("defaults", {}))
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": dict(DATASOURCE),
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": extra.pop("overrides", [])},
        "options": extra.pop("options", {}),
    }
    panel.update(extra)
    return panel


@dataclass
class _Layout:
    """Places panels left to right in rows of Grafana's 24 columns."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    next_id: int = 1
    panels: list[dict[str, Any]] = field(default_factory=list)

    def add(self, panel: dict[str, Any], width: int, height: int) -> dict[str, Any]:
        if self.x + width > 24:
            self.newline()
        panel["id"] = self.next_id
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": width, "h": height}
        self.next_id += 1
        self.x += width
        self.row_height = max(self.row_height, height)
        self.panels.append(panel)
        return panel

    def newline(self) -> None:
        self.y += self.row_height
        self.x, self.row_height = 0, 0


class _Builder:
    def __init__(self, config: Config, language: Language) -> None:
        self.config = config
        self.language = language
        # The plant's zone for days, weeks and months, in the panels as in InfluxDB's tz().
        self.zone = config.timezone
        influx = config.influxdb
        self.raw_policy = influx.retention_policy
        self.rollup_policy = influx.rollup_retention_policy or influx.retention_policy
        # rule_status and reliability are written every maintenance cycle: a window of a few
        # cycles holds the newest of each series, and nothing older than them.
        self.status_window = f"{round(3 * config.maintenance.interval + 60)}s"

    def t(self, key: str, **values: Any) -> str:
        return translate(self.language, f"dashboards.{key}", **values)

    def source(self, measurement: str) -> str:
        policy = self.rollup_policy if measurement == UTILIZATION_DAILY else self.raw_policy
        name = quote_ident(measurement)
        return f"{quote_ident(policy)}.{name}" if policy else name

    # -- the parts every dashboard shares

    def dashboard(
        self,
        name: str,
        layout: _Layout,
        *,
        time_from: str,
        refresh: str,
        variables: list[dict[str, Any]],
        annotations: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        return {
            "uid": f"aguante-{name}",
            "title": self.t(f"{name}.title"),
            "description": self.t(f"{name}.description"),
            "tags": ["aguante"],
            "timezone": self.zone,
            "weekStart": "monday",
            "editable": False,
            "graphTooltip": 1,
            "refresh": refresh,
            "time": {"from": time_from, "to": "now"},
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "templating": {"list": variables},
            "annotations": {"list": [_builtin_annotations(), *annotations]},
            "links": [
                {
                    "type": "dashboards",
                    "tags": ["aguante"],
                    "asDropdown": False,
                    "includeVars": True,
                    "keepTime": True,
                    "title": "aguante",
                }
            ],
            "panels": layout.panels,
        }

    def sector_variable(self) -> dict[str, Any]:
        return self._variable(
            "sector",
            self.t("variable.sector"),
            f"SHOW TAG VALUES FROM {quote_ident(READING)} WITH KEY = {quote_ident(TAG_SECTOR)}",
            multi=True,
        )

    def machine_variable(self, *, multi: bool) -> dict[str, Any]:
        query = (
            f"SHOW TAG VALUES FROM {quote_ident(READING)} WITH KEY = {quote_ident(TAG_MACHINE)}"
            f" WHERE {SECTOR_MATCH}"
        )
        return self._variable("machine", self.t("variable.machine"), query, multi=multi)

    def _variable(self, name: str, label: str, query: str, *, multi: bool) -> dict[str, Any]:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": dict(DATASOURCE),
            "query": query,
            "definition": query,
            "refresh": 1,  # on dashboard load
            "sort": 1,
            "multi": multi,
            "includeAll": multi,
            "allValue": ".*" if multi else None,
            "current": {},
            "options": [],
            "hide": 0,
        }

    def ticket_annotation(self, selection: str) -> dict[str, Any]:
        """Ticket events of the selected machines as annotations on every time-series panel."""
        query = (
            f"SELECT {quote_ident('title')}, {quote_ident('event')}"
            f" FROM {self.source(TICKET)} WHERE {selection} AND $timeFilter"
        )
        return {
            "name": self.t("annotation.tickets"),
            "datasource": dict(DATASOURCE),
            "enable": True,
            "iconColor": "orange",
            "query": query,
            "textColumn": "title",
            "tagsColumn": "event",
        }

    def panel(
        self,
        kind: str,
        key: str,
        targets: list[dict[str, Any]],
        *,
        unit: str,
        **extra: Any,
    ) -> dict[str, Any]:
        title, description = self.t(f"panel.{key}"), self.t(f"panel.{key}.description")
        return panel_json(kind, title, description, targets, unit=unit, **extra)

    def state_mappings(self) -> list[dict[str, Any]]:
        options = {
            str(code): {
                "text": translate(self.language, f"common.state.{state}"),
                "color": STATE_COLOURS[state],
                "index": index,
            }
            for index, (state, code) in enumerate(sorted(STATE_CODES.items(), key=lambda i: i[1]))
        }
        return [{"type": "value", "options": options}]

    def reason_mappings(self) -> list[dict[str, Any]]:
        options: dict[str, Any] = {
            reason.id: {"text": reason.label.get(self.language) or reason.id, "index": index}
            for index, reason in enumerate(self.config.stop_reasons)
        }
        unassigned = translate(self.language, "common.category.unassigned")
        options[""] = {"text": unassigned, "index": len(options)}
        return [{"type": "value", "options": options}]

    def renamed(self, *columns: str, **names: str) -> dict[str, Any]:
        """A transformation naming a table's columns in the dashboard's language: `columns`
        by their own texts (common.* for machine and sector, else dashboards.column.*, or a
        KPI's), `names` as given."""
        shared = {"machine": "common.machine", "sector": "common.sector"}
        shared |= {k: f"kpi.{k}" for k in ("availability", "performance", "oee")}
        shared["use"] = "kpi.capacity_use"
        texts = {
            column: translate(self.language, shared.get(column, f"dashboards.column.{column}"))
            for column in columns
        }
        return {"id": "organize", "options": {"renameByName": texts | names}}

    def sums(self, *names: str) -> str:
        return ", ".join(f"sum({quote_ident(n)}) AS {quote_ident(n)}" for n in names)

    # -- the dashboards

    def floor(self) -> dict[str, Any]:
        """The big screen on the floor: every machine's state now, today's output against
        capacity, the stops going on."""
        layout = _Layout()
        state_now = (
            f"SELECT last({quote_ident('code')}) FROM {self.source(MACHINE_STATE)}"
            f" WHERE {SELECTED} AND time > now() - 2h GROUP BY {quote_ident(TAG_MACHINE)}"
        )
        layout.add(
            self.panel(
                "stat",
                "state_now",
                [_target(state_now, alias="$tag_machine")],
                unit="none",
                defaults={"mappings": self.state_mappings(), "color": {"mode": "thresholds"}},
                options={
                    "reduceOptions": dict(_LAST_VALUE),
                    "colorMode": "background",
                    "graphMode": "none",
                    "textMode": "value_and_name",
                    "justifyMode": "center",
                    "orientation": "auto",
                    "wideLayout": True,
                },
            ),
            24,
            8,
        )
        today = (
            f"SELECT sum({quote_ident('produced')}) / sum({quote_ident('capacity')})"
            f" FROM {self.source(UTILIZATION)}"
            f" WHERE {SELECTED}{self._defined('use')} AND $timeFilter"
            f" GROUP BY {quote_ident(TAG_MACHINE)}"
        )
        layout.add(
            self.panel(
                "bargauge",
                "use_today",
                [_target(today, alias="$tag_machine")],
                unit="percentunit",
                defaults={"min": 0, "max": 1, "thresholds": _RATIO_STEPS, "decimals": 0},
                options=_bars("gradient") | {"showUnfilled": True},
                timeFrom="now/d",
                hideTimeOverride=False,
            ),
            12,
            10,
        )
        parts = (
            f"SELECT {self.sums('produced', 'rejected', 'capacity')},"
            f" sum({quote_ident('running_s')}) / 3600 AS {quote_ident('running_h')}"
            f" FROM {self.source(UTILIZATION)} WHERE {SELECTED} AND $timeFilter"
            f" GROUP BY {quote_ident(TAG_MACHINE)}"
        )
        layout.add(
            self.panel(
                "table",
                "parts_today",
                [_target(parts, table=True)],
                unit="none",
                defaults={"decimals": 0},
                overrides=[_override("running_h", decimals=1)],
                timeFrom="now/d",
                transformations=[
                    {"id": "organize", "options": {"excludeByName": {"Time": True}}},
                    self.renamed("machine", "produced", "rejected", "capacity", "running_h"),
                ],
            ),
            12,
            10,
        )
        stops = (
            f"SELECT {quote_ident('state')}, {quote_ident('reason')}, {quote_ident('lost_s')}"
            f" FROM {self.source(STOP)}"
            f" WHERE {SELECTED} AND {quote_ident('open')} = true AND time > now() - 7d"
            f" GROUP BY {quote_ident(TAG_MACHINE)}"
        )
        layout.add(
            self.panel(
                "table",
                "stops_now",
                [_target(stops, table=True)],
                unit="none",
                overrides=[
                    _override("Time", unit="dateTimeFromNow"),
                    _override("reason", mappings=self.reason_mappings()),
                    _override("state", mappings=self._state_name_mappings()),
                    _override("lost_s", unit="s"),
                ],
                transformations=[
                    self.renamed(
                        "machine", "state", "reason", "lost_s", Time=self.t("column.since")
                    )
                ],
            ),
            24,
            8,
        )
        timeline = (
            f"SELECT last({quote_ident('code')}) FROM {self.source(MACHINE_STATE)}"
            f" WHERE {SELECTED} AND $timeFilter"
            f" GROUP BY time($__interval), {quote_ident(TAG_MACHINE)} fill(previous)"
        )
        layout.add(
            self.panel(
                "state-timeline",
                "states_today",
                [_target(timeline, alias="$tag_machine")],
                unit="none",
                defaults={"mappings": self.state_mappings(), "color": {"mode": "thresholds"}},
                options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
                timeFrom="now/d",
            ),
            24,
            10,
        )
        return self.dashboard(
            "floor",
            layout,
            time_from="now/d",
            refresh="10s",
            variables=[self.sector_variable(), self.machine_variable(multi=True)],
        )

    def _state_name_mappings(self) -> list[dict[str, Any]]:
        options = {
            state: {"text": translate(self.language, f"common.state.{state}"), "index": index}
            for index, state in enumerate(STATE_CODES)
        }
        return [{"type": "value", "options": options}]

    def machine(self) -> dict[str, Any]:
        """One machine: its signals, states, output, stops, tickets and service meters."""
        layout = _Layout()
        one = MACHINE_MATCH
        signals = (
            f"SELECT mean(*) FROM {self.source(READING)} WHERE {one} AND $timeFilter"
            " GROUP BY time($__interval) fill(none)"
        )
        layout.add(
            self.panel(
                "timeseries",
                "signals",
                [_target(signals, alias="$col")],
                unit="short",
                transformations=[
                    {
                        "id": "renameByRegex",
                        "options": {"regex": "^mean_(.*)$", "renamePattern": "$1"},
                    }
                ],
                options={
                    "legend": {
                        "displayMode": "table",
                        "placement": "right",
                        "calcs": ["lastNotNull"],
                    }
                },
            ),
            24,
            10,
        )
        timeline = (
            f"SELECT last({quote_ident('code')}) FROM {self.source(MACHINE_STATE)}"
            f" WHERE {one} AND $timeFilter GROUP BY time($__interval) fill(previous)"
        )
        layout.add(
            self.panel(
                "state-timeline",
                "state",
                [_target(timeline, alias=translate(self.language, "common.machine"))],
                unit="none",
                defaults={"mappings": self.state_mappings(), "color": {"mode": "thresholds"}},
                options={"showValue": "never", "mergeValues": True},
            ),
            24,
            5,
        )
        output = (
            f"SELECT {self.sums('produced', 'rejected', 'capacity')}"
            f" FROM {self.source(UTILIZATION)} WHERE {one} AND $timeFilter"
            " GROUP BY time(1h) fill(none)"
        )
        layout.add(
            self.panel(
                "timeseries",
                "output",
                [_target(output, alias="$col")],
                unit="none",
                defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
                transformations=[self.renamed("produced", "rejected", "capacity")],
            ),
            16,
            9,
        )
        meters = (
            f"SELECT last({quote_ident('progress')}) FROM {self.source(RULE_STATUS)}"
            f" WHERE {one} AND {quote_ident('test')} = 'meter'"
            f" AND time > now() - {self.status_window} GROUP BY {quote_ident('rule')}"
        )
        layout.add(
            self.panel(
                "bargauge",
                "meters",
                [_target(meters, alias="$tag_rule")],
                unit="percentunit",
                defaults=dict(_METER),
                options=_bars(),
            ),
            8,
            9,
        )
        layout.newline()
        for key, expression in self._ratio_expressions().items():
            query = (
                f"SELECT {expression} FROM {self.source(UTILIZATION)}"
                f" WHERE {one}{self._defined(key)} AND $timeFilter"
            )
            layout.add(
                self.panel(
                    "stat",
                    f"kpi.{key}",
                    [_target(query, alias=self.t(f"panel.kpi.{key}"))],
                    unit="percentunit",
                    defaults={"decimals": 1, "thresholds": _RATIO_STEPS},
                    options={"colorMode": "value", "graphMode": "none"},
                ),
                6,
                4,
            )
        stops = (
            f"SELECT {quote_ident('duration_s')}, {quote_ident('lost_s')},"
            f" {quote_ident('state')}, {quote_ident('reason')}"
            f" FROM {self.source(STOP)} WHERE {one} AND {quote_ident('micro')} = false"
            " AND $timeFilter"
        )
        layout.add(
            self.panel(
                "table",
                "stops",
                [_target(stops, table=True)],
                unit="none",
                overrides=[
                    _override("reason", mappings=self.reason_mappings()),
                    _override("state", mappings=self._state_name_mappings()),
                    _override("duration_s", unit="s"),
                    _override("lost_s", unit="s"),
                ],
                transformations=[
                    self.renamed(
                        "duration_s", "lost_s", "state", "reason", Time=self.t("column.start")
                    )
                ],
            ),
            24,
            8,
        )
        tickets = self.ticket_annotation(one)
        return self.dashboard(
            "machine",
            layout,
            time_from="now-24h",
            refresh="1m",
            variables=[self.sector_variable(), self.machine_variable(multi=False)],
            annotations=[tickets],
        )

    def _ratio_expressions(self) -> dict[str, str]:
        """Each KPI as a ratio of sums (docs/capacity.md); see `_defined` for the minutes each
        is summed over."""
        s = {n: f"sum({quote_ident(n)})" for n in (
            "planned_s", "running_s", "produced", "rejected", "capacity", "running_capacity"
        )}  # fmt: skip
        availability = f"{s['running_s']} / {s['planned_s']}"
        performance = f"{s['produced']} / {s['running_capacity']}"
        quality = f"({s['produced']} - {s['rejected']}) / {s['produced']}"
        return {
            "use": f"{s['produced']} / {s['capacity']}",
            "availability": availability,
            "performance": performance,
            "oee": f"{availability} * {performance} * {quality}",
        }

    def _defined(self, *keys: str) -> str:
        """The conditions under which the KPIs `keys` are defined, as ` AND …`: InfluxQL
        divides by zero into 0, so a night without planned time would read as a red 0 %.
        Parts-based figures count the minutes with capacity (a counter and a rated speed), as
        dashboards.kpi does; availability the planned ones (planned ≥ running, so the sums
        are exact); performance the running ones. Where nothing is left, Grafana shows "No
        data"."""
        needs = {
            "use": ("capacity",),
            "availability": ("planned_s",),
            "performance": ("capacity", "running_capacity"),
            "oee": ("capacity", "planned_s"),
        }
        fields = dict.fromkeys(field for key in keys for field in needs[key])
        return "".join(f" AND {quote_ident(field)} > 0" for field in fields)

    def maintenance(self) -> dict[str, Any]:
        """For the crews: open tickets by sector and age, MTBF and MTTR, machines drifting from
        their baseline, service meters."""
        layout = _Layout()
        recent = f"time > now() - {self.status_window}"
        open_tickets = (
            f"SELECT last({quote_ident('ticket')}) AS {quote_ident('ticket')},"
            f" last({quote_ident('ticket_status')}) AS {quote_ident('status')},"
            f" last({quote_ident('ticket_opened_ms')}) AS {quote_ident('opened')}"
            f" FROM {self.source(RULE_STATUS)} WHERE {SELECTED} AND {recent}"
            f" GROUP BY {quote_ident(TAG_SECTOR)}, {quote_ident(TAG_MACHINE)},"
            f" {quote_ident('rule')}"
        )
        # The newest point of each rule and machine says whether a ticket is open (0: none).
        no_ticket = {
            "id": "filterByValue",
            "options": {
                "type": "exclude",
                "match": "any",
                "filters": [
                    {"fieldName": "ticket", "config": {"id": "equal", "options": {"value": 0}}}
                ],
            },
        }
        layout.add(
            self.panel(
                "table",
                "open_tickets",
                [_target(open_tickets, table=True)],
                unit="none",
                overrides=[_override("opened", unit="dateTimeFromNow")],
                transformations=[
                    no_ticket,
                    {"id": "organize", "options": {"excludeByName": {"Time": True}}},
                    {"id": "sortBy", "options": {"sort": [{"field": "opened"}]}},
                    self.renamed("sector", "machine", "rule", "ticket", "status", "opened"),
                ],
            ),
            16,
            10,
        )
        # Counted per sector by Grafana from the same rows (InfluxDB 3 does not take every
        # subquery 1.x does): every rule's ticket, meters' service tickets included.
        per_sector = {
            "id": "groupBy",
            "options": {
                "fields": {
                    "sector": {"aggregations": [], "operation": "groupby"},
                    "ticket": {"aggregations": ["count"], "operation": "aggregate"},
                }
            },
        }
        layout.add(
            self.panel(
                "barchart",
                "tickets_by_sector",
                [_target(open_tickets, table=True)],
                unit="none",
                defaults={"decimals": 0, "min": 0},
                options={"orientation": "horizontal", "showValue": "always"},
                transformations=[
                    no_ticket,
                    per_sector,
                    self.renamed("sector", **{"ticket (count)": self.t("column.open_tickets")}),
                ],
            ),
            8,
            10,
        )
        reliability = (
            f"SELECT last({quote_ident('mtbf_h')}) AS {quote_ident('mtbf_h')},"
            f" last({quote_ident('mttr_h')}) AS {quote_ident('mttr_h')},"
            f" last({quote_ident('failures')}) AS {quote_ident('failures')}"
            f" FROM {self.source(RELIABILITY)} WHERE {SELECTED} AND {recent}"
            f" GROUP BY {quote_ident(TAG_MACHINE)}"
        )
        layout.add(
            self.panel(
                "table",
                "reliability",
                [_target(reliability, table=True)],
                unit="none",
                overrides=[_override("mtbf_h", unit="h"), _override("mttr_h", unit="h")],
                transformations=[
                    {"id": "organize", "options": {"excludeByName": {"Time": True}}},
                    self.renamed("machine", "mtbf_h", "mttr_h", "failures"),
                ],
            ),
            12,
            9,
        )
        drifting = (
            f"SELECT last({quote_ident('firing')}) AS {quote_ident('firing')}"
            f" FROM {self.source(RULE_STATUS)}"
            f" WHERE {SELECTED} AND {quote_ident('test')} = 'drift' AND {recent}"
            f" GROUP BY {quote_ident(TAG_MACHINE)}, {quote_ident('rule')}"
        )
        settled = {  # the newest verdict of each rule and machine decides
            "id": "filterByValue",
            "options": {
                "type": "exclude",
                "match": "any",
                "filters": [
                    {"fieldName": "firing", "config": {"id": "equal", "options": {"value": False}}}
                ],
            },
        }
        layout.add(
            self.panel(
                "table",
                "drifting",
                [_target(drifting, table=True)],
                unit="none",
                transformations=[
                    settled,
                    {
                        "id": "organize",
                        "options": {"excludeByName": {"Time": True, "firing": True}},
                    },
                    self.renamed("machine", "rule"),
                ],
            ),
            12,
            9,
        )
        meters = (
            f"SELECT last({quote_ident('progress')}) FROM {self.source(RULE_STATUS)}"
            f" WHERE {SELECTED} AND {quote_ident('test')} = 'meter' AND {recent}"
            f" GROUP BY {quote_ident(TAG_MACHINE)}, {quote_ident('rule')}"
        )
        layout.add(
            self.panel(
                "bargauge",
                "meters_all",
                [_target(meters, alias="$tag_machine · $tag_rule")],
                unit="percentunit",
                defaults=dict(_METER),
                options=_bars(),
            ),
            24,
            9,
        )
        tickets = self.ticket_annotation(SELECTED)
        return self.dashboard(
            "maintenance",
            layout,
            time_from="now-7d",
            refresh="1m",
            variables=[self.sector_variable(), self.machine_variable(multi=True)],
            annotations=[tickets],
        )

    def assembly(self) -> dict[str, Any]:
        """For the assembly: capacity use and OEE by week and month, per sector and machine,
        losses by reason category, each against the previous period. Reads the daily sums."""
        layout = _Layout()
        daily = self.source(UTILIZATION_DAILY)
        ratios = self._ratio_expressions()
        tz = f" tz({quote_string(self.config.timezone)})"
        # Whole calendar months in the dashboard's time zone: this month so far shifted by
        # "1M/M" is the whole month before (Grafana rounds the shifted start down, end up).
        for key, shift in (("last_month", "1M/M"), ("month_before", "2M/M")):
            use = (
                f"SELECT {ratios['use']} FROM {daily}"
                f" WHERE {SELECTED}{self._defined('use')} AND $timeFilter"
                f" GROUP BY {quote_ident(TAG_SECTOR)}"
            )
            panel = self.panel(
                "stat",
                f"use_{key}",
                [_target(use, alias="$tag_sector")],
                unit="percentunit",
                defaults={"decimals": 0, "thresholds": _RATIO_STEPS},
                options={
                    "reduceOptions": dict(_LAST_VALUE),
                    "colorMode": "value",
                    "graphMode": "none",
                    "textMode": "value_and_name",
                },
                timeFrom="now/M",
                timeShift=shift,
            )
            layout.add(panel, 12, 6)
        # InfluxQL weeks start on Thursday (the epoch's weekday): 4 days later is Monday.
        weekly = f"GROUP BY time(1w, 4d), {quote_ident(TAG_SECTOR)} fill(none){tz}"
        for key in ("use", "oee"):
            query = (
                f"SELECT {ratios[key]} FROM {daily}"
                f" WHERE {SELECTED}{self._defined(key)} AND $timeFilter {weekly}"
            )
            layout.add(
                self.panel(
                    "timeseries",
                    f"weekly_{key}",
                    [_target(query, alias="$tag_sector")],
                    unit="percentunit",
                    defaults={"min": 0, "custom": {"drawStyle": "bars", "fillOpacity": 70}},
                ),
                12,
                9,
            )
        time_use = (
            f"SELECT sum({quote_ident('running_s')}) / (sum({quote_ident('running_s')})"
            f" + sum({quote_ident('idle_s')}) + sum({quote_ident('down_s')})"
            f" + sum({quote_ident('off_s')}) + sum({quote_ident('unknown_s')}))"
            f" FROM {daily} WHERE {SELECTED} AND $timeFilter GROUP BY {quote_ident(TAG_MACHINE)}"
        )
        layout.add(
            self.panel(
                "bargauge",
                "time_use",
                [_target(time_use, alias="$tag_machine")],
                unit="percentunit",
                defaults={"min": 0, "max": 1, "decimals": 0, "thresholds": _RATIO_STEPS},
                options=_bars("gradient"),
            ),
            12,
            10,
        )
        machines = (
            f"SELECT {ratios['use']} AS {quote_ident('use')},"
            f" {ratios['availability']} AS {quote_ident('availability')},"
            f" {ratios['performance']} AS {quote_ident('performance')},"
            f" {ratios['oee']} AS {quote_ident('oee')}"
            # One query for the table: performance over the planned minutes with capacity too
            # (0 % where the machine never ran in them; `aguante kpi` shows "—" there).
            f" FROM {daily} WHERE {SELECTED}{self._defined('use', 'availability', 'oee')}"
            f" AND $timeFilter GROUP BY {quote_ident(TAG_SECTOR)}, {quote_ident(TAG_MACHINE)}"
        )
        layout.add(
            self.panel(
                "table",
                "machines",
                [_target(machines, table=True)],
                unit="percentunit",
                defaults={"decimals": 1},
                transformations=[
                    {"id": "organize", "options": {"excludeByName": {"Time": True}}},
                    self.renamed("sector", "machine", "use", "availability", "performance", "oee"),
                ],
            ),
            12,
            10,
        )
        losses = self._loss_targets()
        for key, shift in (("last_month", "1M/M"), ("month_before", "2M/M")):
            panel = self.panel(
                "bargauge",
                f"losses_{key}",
                losses,
                unit="h",
                defaults={"decimals": 1, "min": 0},
                options=_bars(calcs=["sum"]),
                timeFrom="now/M",
                timeShift=shift,
            )
            layout.add(panel, 12, 10)
        return self.dashboard(
            "assembly",
            layout,
            time_from="now-12w/w",
            refresh="",
            variables=[self.sector_variable(), self.machine_variable(multi=True)],
        )

    def _loss_targets(self) -> list[dict[str, Any]]:
        """Planned hours lost per reason category: one query per category (a stop's reason is
        a field, and InfluxQL groups only by tags)."""
        targets = []
        by_category: dict[str, list[StopReason]] = {}
        for reason in self.config.stop_reasons:
            by_category.setdefault(reason.category, []).append(reason)
        refs = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        for category in CATEGORIES:
            reasons = by_category.get(category, [])
            ways = [f"{quote_ident('reason')} = {quote_string(r.id)}" for r in reasons]
            if category == "other":  # and reasons these dashboards were not built with
                known = regex_any([r.id for r in self.config.stop_reasons])
                ways.append(
                    f"({quote_ident('reason')} != '' AND {quote_ident('reason')} !~ {known})"
                )
            if not ways:
                continue
            matches = " OR ".join(ways)
            query = (
                f"SELECT sum({quote_ident('lost_s')}) / 3600 FROM {self.source(STOP)}"
                f" WHERE {SELECTED} AND ({matches}) AND $timeFilter"
            )
            alias = translate(self.language, f"common.category.{category}")
            targets.append(_target(query, ref=next(refs), alias=alias))
        unassigned = (
            f"SELECT sum({quote_ident('lost_s')}) / 3600 FROM {self.source(STOP)}"
            f" WHERE {SELECTED} AND {quote_ident('reason')} = '' AND $timeFilter"
        )
        alias = translate(self.language, "common.category.unassigned")
        targets.append(_target(unassigned, ref=next(refs), alias=alias))
        return targets


def _override(name: str, **properties: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def _builtin_annotations() -> dict[str, Any]:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
