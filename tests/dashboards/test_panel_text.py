"""`aguante dashboards show`'s text: values formatted as the panel formats them."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from collector.config import Language
from collector.influxql import Series
from dashboards.grafana import build_dashboards, panels_of
from dashboards.grafana_query import PanelAnswer, TargetAnswer
from dashboards.panel_text import format_value, panel_lines

ZONE = ZoneInfo("America/Argentina/Buenos_Aires")


def panel(dashboard: str, title: str, language: Language = "es") -> dict[str, Any]:
    found = build_dashboards(None, language)[dashboard]
    return next(p for p in panels_of(found) if p["title"] == title)


def test_states_are_named_and_ratios_are_percentages_in_the_plants_way() -> None:
    tiles = panel("floor", "Estado ahora")
    assert format_value(3.0, "last", tiles, "es", ZONE) == "En marcha"
    assert format_value(0, "last", tiles, "es", ZONE) == "Sin datos"
    use = panel("floor", "Uso de la capacidad hoy")
    assert format_value(0.643, "sum_sum", use, "es", ZONE) == "64,3 %"
    assert format_value(0.643, "sum_sum", use, "en", ZONE) == "64.3%"


def test_a_table_of_stops_names_columns_reasons_and_durations() -> None:
    stops = panel("floor", "Paradas en curso")
    series = Series(
        "stop",
        {"machine": "press-1"},
        [{"time": 1_795_600_000_000, "state": "down", "reason": "breakdown", "lost_s": 3725.0}],
    )
    lines = panel_lines(
        PanelAnswer("Paradas en curso", stops, (0, 1), [TargetAnswer("q", [series])]), "es", ZONE
    )
    assert lines[0] == "## Paradas en curso"
    assert lines[1].split() == [
        "Máquina",
        "Desde",
        "Estado",
        "Motivo",
        "Tiempo",
        "planificado",
        "perdido",
    ]
    assert "press-1" in lines[2] and "En falla" in lines[2] and "Rotura" in lines[2]
    assert "1:02:05" in lines[2]
    assert "2026-11-25" in lines[2]  # local time of the stop's start


def test_open_tickets_hide_rules_without_one_and_sectors_are_summed() -> None:
    tickets = panel("maintenance", "Tickets abiertos")
    rows = [
        {"time": 0, "ticket": 0, "status": "", "opened": 0},
        {"time": 0, "ticket": 7, "status": "open", "opened": 1_795_600_000_000},
    ]
    series = [Series("rule_status", {"machine": f"m{i}", "rule": "r", "sector": "s"}, [r])
              for i, r in enumerate(rows)]  # fmt: skip
    lines = panel_lines(
        PanelAnswer("Tickets abiertos", tickets, (0, 1), [TargetAnswer("q", series)]), "es", ZONE
    )
    assert len(lines) == 3 and "m1" in lines[2] and "m0" not in "".join(lines)
    by_sector = panel("maintenance", "Tickets abiertos por sector")
    tickets_of = {"a": [3, 4], "b": [0, 9], "c": [0]}  # machine → its rules' tickets (0: none)
    sector_of = {"a": "prensas", "b": "prensas", "c": "hornos"}
    series = [
        Series("rule_status", {"machine": m, "rule": f"r{i}", "sector": sector_of[m]},
               [{"ticket": t, "status": "open" if t else "", "opened": 0}])
        for m, ids in tickets_of.items() for i, t in enumerate(ids)
    ]  # fmt: skip
    lines = panel_lines(
        PanelAnswer("x", by_sector, (0, 1), [TargetAnswer("q", series)]), "es", ZONE
    )
    assert [line.split() for line in lines[1:]] == [
        ["Sector", "Tickets", "abiertos"],
        ["prensas", "3"],
    ]


def test_series_are_named_as_grafana_names_them() -> None:
    signals = panel("machine", "Señales")
    series = Series("reading", {}, [{"time": 0, "mean_oil_temp": 41.5, "mean_pressure": None}])
    lines = panel_lines(
        PanelAnswer("x", signals, (0, 1), [TargetAnswer("q", [series])]), "es", ZONE
    )
    assert lines[1:] == ["  oil_temp  41,5"]
    bare = {"type": "timeseries", "targets": [{"query": "q"}], "fieldConfig": {"defaults": {}}}
    series = Series("reading", {"machine": "press-1"}, [{"time": 0, "mean": 2.0}])
    lines = panel_lines(PanelAnswer("x", bare, (0, 1), [TargetAnswer("q", [series])]), "en", ZONE)
    assert lines[1:] == ["  reading.mean {machine: press-1}  2"]


def test_nothing_to_show_is_said_once() -> None:
    losses = panel("assembly", "Horas perdidas por motivo — mes pasado")
    targets = [TargetAnswer("q", [], empty=True) for _ in losses["targets"]]
    lines = panel_lines(PanelAnswer("x", losses, (0, 1), targets), "pt-BR", ZONE)
    assert lines[1:] == ["  (sem dados)"]
