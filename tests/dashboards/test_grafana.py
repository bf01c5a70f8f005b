"""The Grafana dashboards: their JSON structure, the committed files, and every panel's query
run against the real InfluxDB as Grafana would run it.

Grafana itself cannot be installed here, so the query test does what Grafana's InfluxQL data
source does before it sends a query — substitutes `$timeFilter`, `$__interval`, `$__range_s`
and the template variables (multi-value as a regex group, the way Grafana formats them for
`=~ /^$var$/`), applying each panel's relative time and time shift — and then checks that the
answer holds the series and columns the panel shows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from collector.config import LANGUAGES, Config, Language
from collector.influxql import InfluxQL
from dashboards.grafana import (
    DASHBOARD_NAMES,
    DATASOURCE_UID,
    build_dashboards,
    panels_of,
    write_dashboards,
)
from dashboards.grafana_cli import show_dashboards
from dashboards.grafana_query import (
    answer_dashboard,
    expected_columns,
    panel_range,
    regex_value,
    substituted,
)

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "dashboards" / "provisioning"
COMMITTED = ROOT / "dashboards" / "grafana"


def all_dashboards() -> Iterator[tuple[Language, str, dict[str, Any]]]:
    for language in LANGUAGES:
        for name, dashboard in build_dashboards(None, language).items():
            yield language, name, dashboard


def targets_of(panel: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(panel.get("targets", []))


# -- structure ----------------------------------------------------------------------------------


def test_uids_are_stable_and_unique_and_the_same_in_every_language() -> None:
    uids: dict[Language, list[str]] = {}
    for language, _name, dashboard in all_dashboards():
        uids.setdefault(language, []).append(dashboard["uid"])
    expected = [f"aguante-{name}" for name in DASHBOARD_NAMES]
    for language, found in uids.items():
        assert found == expected, language


@pytest.mark.parametrize("language", LANGUAGES)
def test_panel_ids_are_unique_and_panels_do_not_overlap(language: Language) -> None:
    for name, dashboard in build_dashboards(None, language).items():
        panels = list(panels_of(dashboard))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), name
        cells: dict[tuple[int, int], int] = {}
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    other = cells.setdefault((x, y), panel["id"])
                    assert other == panel["id"], f"{name}: panels {other} and {panel['id']} overlap"


def test_every_query_uses_the_provisioned_data_source() -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "aguante.yaml").read_text())
    (source,) = provisioned["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "influxdb"
    for _language, name, dashboard in all_dashboards():
        users = [*panels_of(dashboard), *dashboard["templating"]["list"]]
        users += [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
        for user in users:
            assert user["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}, name
            for target in targets_of(user):
                assert target["datasource"]["uid"] == DATASOURCE_UID, name


def test_every_panel_has_a_unit_a_title_and_a_description() -> None:
    for language, name, dashboard in all_dashboards():
        for panel in panels_of(dashboard):
            assert panel["fieldConfig"]["defaults"].get("unit"), (language, name, panel["title"])
            for text in (panel["title"], panel["description"]):
                assert text and "dashboards." not in text, (language, name, text)


def test_titles_are_translated_and_queries_are_not() -> None:
    built = {language: build_dashboards(None, language) for language in LANGUAGES}
    for name in DASHBOARD_NAMES:
        titles = {language: built[language][name]["title"] for language in LANGUAGES}
        assert titles["es"] != titles["en"], titles
        queries = {
            language: [t["query"] for p in panels_of(built[language][name]) for t in targets_of(p)]
            for language in LANGUAGES
        }
        assert queries["es"] == queries["pt-BR"] == queries["en"], name
        panel_titles = {
            language: [p["title"] for p in panels_of(built[language][name])]
            for language in LANGUAGES
        }
        assert panel_titles["es"] != panel_titles["en"], name


def test_the_state_colours_give_no_data_its_own_colour() -> None:
    floor = build_dashboards(None, "en")["floor"]
    tiles = next(p for p in panels_of(floor) if p["type"] == "stat")
    (mapping,) = tiles["fieldConfig"]["defaults"]["mappings"]
    options = mapping["options"]
    texts = {code: option["text"] for code, option in options.items()}
    assert texts == {"0": "No data", "1": "Off", "2": "Idle", "3": "Running", "4": "Down"}
    colours = [option["color"] for option in options.values()]
    assert len(set(colours)) == len(colours)


def test_the_committed_dashboards_are_what_build_writes(tmp_path: Path) -> None:
    # `aguante dashboards build --lang L --out dashboards/grafana/L` (make dashboards) wrote them.
    for language in LANGUAGES:
        written = write_dashboards(build_dashboards(None, language), tmp_path / language)
        for path in written:
            committed = COMMITTED / language / path.name
            assert committed.exists(), f"{committed} is missing: run make dashboards"
            assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
                f"{committed} is stale: run make dashboards"
            )


def test_a_factory_file_gives_its_reasons_zone_and_policies(plant_config: Config) -> None:
    dashboards = build_dashboards(plant_config, "es")
    assert {d["timezone"] for d in dashboards.values()} == {plant_config.timezone}
    text = json.dumps(dashboards, ensure_ascii=False)
    for reason in plant_config.stop_reasons:
        assert reason.label["es"] in text
    policy = plant_config.influxdb.rollup_retention_policy
    assert policy is not None and f'"{policy}"."utilization_1d"' in text.replace('\\"', '"')


@pytest.fixture
async def fast_sim(tmp_path: Path) -> AsyncIterator[Any]:
    from simulators import load_scenario, run_scenario
    from tests.simulation import MONDAY_MORNING, free_port_base, with_pty_dir

    scenario = with_pty_dir(load_scenario("metalworks"), tmp_path)
    async with run_scenario(
        scenario, port_base=free_port_base(8), seed=5, start=MONDAY_MORNING, speed=30.0
    ) as simulator:
        yield simulator


@pytest.fixture
def plant_config() -> Config:
    from tests.dashboards.plant import plant_config as make

    return make()


def test_grafana_relative_times_are_understood() -> None:
    zone = ZoneInfo("America/Argentina/Buenos_Aires")
    now = dt.datetime(2026, 11, 25, 18, 30, tzinfo=zone)
    board = {"time": {"from": "now-12w/w", "to": "now"}, "weekStart": "monday"}
    month = panel_range(board, {"timeFrom": "now/M", "timeShift": "1M/M"}, now)
    assert month == (
        round(dt.datetime(2026, 10, 1, tzinfo=zone).timestamp() * 1000),
        round(dt.datetime(2026, 11, 1, tzinfo=zone).timestamp() * 1000) - 1,
    )
    today = panel_range(board, {"timeFrom": "now/d"}, now)
    assert today[0] == round(dt.datetime(2026, 11, 25, tzinfo=zone).timestamp() * 1000)
    weeks = panel_range(board, {}, now)
    assert dt.datetime.fromtimestamp(weeks[0] / 1000, zone) == dt.datetime(
        2026, 8, 31, tzinfo=zone
    )  # a Monday, 12 weeks before this week's
    sunday = panel_range(board | {"weekStart": "sunday"}, {}, now)
    assert dt.datetime.fromtimestamp(sunday[0] / 1000, zone) == dt.datetime(
        2026, 8, 30, tzinfo=zone
    )
    assert regex_value(["press-1"]) == "press-1"
    assert regex_value(["a.b", "c/d"]) == r"(a\.b|c\/d)"
    span = (1_000, 3_601_000)
    assert substituted("WHERE $timeFilter GROUP BY time($__interval)", {}, span) == (
        "WHERE time >= 1000ms and time <= 3601000ms GROUP BY time(10s)"
    )
    with pytest.raises(ValueError, match=r"\$machine has no value"):
        substituted('WHERE "machine" =~ /^$machine$/', {"sector": "a"}, span)


def test_the_columns_a_panel_expects() -> None:
    maintenance = build_dashboards(None, "en")["maintenance"]
    by_title = {p["title"]: p for p in panels_of(maintenance)}
    assert expected_columns(by_title["Open tickets by sector"]) == {"sector", "ticket"}
    assert expected_columns(by_title["Open tickets"]) == {
        "sector",
        "machine",
        "rule",
        "ticket",
        "status",
        "opened",
    }


# -- every query against the real InfluxDB -------------------------------------------------------

PRESS = "press-1"  # the example's press: oil temperature, a part counter, maintenance rules
MAINTENANCE_RULES: list[dict[str, Any]] = [
    # Fires at once on the live readings: a ticket, its annotation, a failure for MTBF/MTTR.
    {
        "id": "aceite-caliente",
        "machines": [PRESS],
        "threshold": {"signal": "oil_temp", "above": -1000, "for_minutes": 0.05},
    },
    # Fires against the cool baseline written below: a machine drifting.
    {
        "id": "aceite-deriva",
        "machines": [PRESS],
        "drift": {"signal": "oil_temp", "baseline_days": 2, "only_running": False},
    },
    {"id": "cambio-aceite", "machines": [PRESS], "meter": {"run_hours": 500, "days": 180}},
]


def dashboard_config(sim: Any, tmp_path: Path, influxdb: Any) -> Config:
    from tests.test_capacity_end_to_end import capacity_config

    config = capacity_config(sim, tmp_path, influxdb)
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["maintenance"]["rules"] = MAINTENANCE_RULES
    data["maintenance"]["store"] = f"sqlite:///{tmp_path / 'tickets.db'}"
    data["maintenance"].pop("notifications", None)
    for crew in data["maintenance"].get("crews", []):
        crew.pop("notify", None)
    return Config.model_validate(data)


async def write_history(config: Config, now_ms: int) -> None:
    """What weeks and months of the plant would have left: daily sums and stops with reasons
    (the assembly's panels), and two days of cool oil on the press (the drift's baseline)."""
    from collector.schema import STOP, UTILIZATION, UTILIZATION_DAILY, Point
    from collector.sinks.influxdb import InfluxDBSink

    day_ms = 86_400_000
    points: list[Point] = []
    categories = {r.category: r.id for r in config.stop_reasons}
    for machine in config.machines:
        if machine.state is None:
            continue
        tags = {"factory": config.factory, "sector": machine.sector, "machine": machine.id}
        rated = machine.rated_per_hour or 0
        for day in range(1, 100):
            at = now_ms - day * day_ms
            running = 36_000.0 + (day % 7) * 1_000
            produced = round(rated * running / 3600 * 0.8) if machine.counters.produced else 0
            fields: dict[str, float | int] = {
                "planned_s": 57_600.0,
                "running_s": running,
                "idle_s": 86_400.0 - running - 3_600,
                "down_s": 3_600.0,
                "off_s": 0.0,
                "unknown_s": 0.0,
                "produced": produced,
                "rejected": produced // 50,
                "capacity": rated * 24.0,
                "running_capacity": rated * running / 3600,
                "micro_stops": 3,
            }
            points.append(Point(UTILIZATION_DAILY, tags, fields, at))
            category = sorted(categories)[day % len(categories)]
            stop = {"duration_s": 1800.0, "lost_s": 1500.0, "state": "idle", "open": False}
            stop |= {"micro": False, "reason": categories[category] if day % 5 else ""}
            points.append(Point(STOP, tags, stop, at + 3_600_000))
        # An hour of minutes this morning, running most of it: the machine dashboard's KPIs.
        for minute in range(60):
            at = now_ms - 3 * 3_600_000 + minute * 60_000
            running = 0.0 if minute % 6 == 0 else 60.0
            made = round(rated * running / 3600 * 0.9) if machine.counters.produced else 0
            fields = {
                "planned_s": 60.0,
                "running_s": running,
                "idle_s": 60.0 - running,
                "down_s": 0.0,
                "off_s": 0.0,
                "unknown_s": 0.0,
                "produced": made,
                "rejected": made // 20,
                "capacity": rated / 60,
                "running_capacity": rated * running / 3600,
                "micro_stops": 0,
            }
            points.append(Point(UTILIZATION, tags, fields, at - at % 60_000))
    press = next(m for m in config.machines if m.id == PRESS)
    tags = {"factory": config.factory, "sector": press.sector, "machine": PRESS}
    for minutes in range(3 * 60, 2 * 24 * 60, 10):
        at = now_ms - minutes * 60_000
        cool = 20.0 + (at // 3_600_000 % 3) * 0.5  # hourly medians that vary a little
        points.append(Point("reading", tags, {"oil_temp": cool}, at))
    async with InfluxDBSink.from_config(config.influxdb) as sink:
        await sink.write(points)


async def maintenance_cycles(config: Config) -> None:
    """Two cycles of the real maintenance service with a repair between them, so tickets,
    rule_status and reliability (with an MTTR) are in InfluxDB."""
    from collector.influxql import InfluxQL
    from collector.sinks.influxdb import InfluxDBSink
    from maintenance.service import MaintenanceService, TicketPublisher
    from maintenance.store import TicketStore

    store = TicketStore(config.maintenance.store)
    try:
        with InfluxQL.from_config(config.influxdb) as db:
            async with InfluxDBSink.from_config(config.influxdb) as sink:
                publisher = TicketPublisher(config, store, sink, base_url="http://plant:8080")
                service = MaintenanceService(
                    config, store=store, db=db, publisher=publisher, notifiers={}
                )
                report = await service.cycle()
                assert report.errors == [], report.errors
                opened = {t.rule: t for t in store.list(status=["open"])}
                assert {"aceite-caliente", "aceite-deriva"} <= set(opened), opened
                ticket = opened["aceite-caliente"]
                now_ms = round(time.time() * 1000)
                event = store.resolve(ticket.id, "crew", now_ms, note="oil cooler cleaned")
                await publisher.publish([event], now_ms)
                await asyncio.sleep(0.05)
                report = await service.cycle()  # still hot: reopened
                assert report.errors == [], report.errors
    finally:
        store.close()


@pytest.mark.integration
async def test_every_panel_query_answers_with_what_the_panel_shows(
    fast_sim: Any, influxdb: Any, tmp_path: Path
) -> None:
    from collector.app import Collector
    from collector.sinks.influxdb import InfluxDBSink
    from tests.test_end_to_end import eventually, running

    influxdb.create()
    config = dashboard_config(fast_sim, tmp_path, influxdb)
    collector = Collector(
        config,
        sink=InfluxDBSink.from_config(config.influxdb),
        quarantine_path=tmp_path / "q.jsonl",
        buffer_path=tmp_path / "buffer",
        state_path=tmp_path / "s.json",
    )

    def holds(query: str) -> bool:
        return bool(influxdb.query(query))

    async with running(collector):
        # The simulation runs 30 times faster: states, stops and parts come within seconds;
        # the first whole minute of `utilization` when the wall clock's minute ends.
        await eventually(lambda: holds("SELECT * FROM utilization WHERE produced > 0"), within=90)
        # Last, so that it is still open when the collector stops (a stop stays open in
        # InfluxDB until the collector sees it end).
        await eventually(lambda: holds('SELECT * FROM stop WHERE "open" = true'), within=60)
    now_ms = round(time.time() * 1000)
    await write_history(config, now_ms)
    await maintenance_cycles(config)

    now = dt.datetime.now(ZoneInfo(config.timezone))
    problems: list[str] = []
    checked = 0
    with InfluxQL.from_config(config.influxdb) as db:
        for name, dashboard in build_dashboards(config, "en").items():
            answers, found = answer_dashboard(db, dashboard, now, {"machine": PRESS})
            problems += [f"{name}: {problem}" for problem in found]
            for answer in answers:
                problems += [f"{name} / {problem}" for problem in answer.problems]
                problems += [f"{name} / {problem}" for problem in answer.empty]
                problems += [f"{name} / {problem}" for problem in answer.missing]
                checked += len(answer.targets)
    assert problems == [], "\n".join(problems)
    assert checked >= 30

    # `aguante dashboards show` prints the same figures, in the plant's language.
    out = io.StringIO()
    assert show_dashboards(config, "es", chosen={"machine": PRESS}, out=out) == []
    text = out.getvalue()
    for dashboard in build_dashboards(config, "es").values():
        assert f"# {dashboard['title']}" in text
        for panel in panels_of(dashboard):
            assert f"## {panel['title']}" in text
    assert "(sin datos)" not in text
    states = {"En marcha", "Parada", "En falla", "Apagada", "Sin datos"}
    floor = text.split("## Estado ahora")[1].split("##")[0]
    assert any(state in floor for state in states), floor
