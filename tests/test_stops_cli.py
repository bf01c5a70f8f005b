"""`aguante stops`: the table people read, filters, JSON, and giving a stop its reason, against a
real InfluxDB holding stops as the collector writes them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from collector.cli import main
from collector.schema import STOP, Point
from collector.sinks.influxdb import InfluxDBSink
from tests.conftest import InfluxDBDatabase

pytestmark = pytest.mark.integration

ZONE = ZoneInfo("America/Argentina/Buenos_Aires")

FACTORY: dict[str, Any] = {
    "factory": "coop",
    "timezone": "America/Argentina/Buenos_Aires",
    "language": "es",
    "sectors": [{"id": "pressing"}, {"id": "bakery"}],
    "machines": [
        {"id": "press-1", "sector": "pressing", "rated_per_hour": 1200},
        {"id": "oven-1", "sector": "bakery"},
    ],
}


def local_ms(text: str) -> int:
    return round(dt.datetime.fromisoformat(text).replace(tzinfo=ZONE).timestamp() * 1000)


BROKEN = local_ms("2026-11-24T10:15:03.250")  # press-1, 12:30, open
WAITING = local_ms("2026-11-24T08:00")  # oven-1, 1:00:00, 45 min planned, no orders
MICRO = local_ms("2026-11-24T09:00")  # press-1, 40 s


def stop_point(machine: str, start_ms: int, fields: dict[str, Any]) -> Point:
    sector = "bakery" if machine.startswith("oven") else "pressing"
    return Point(STOP, {"factory": "coop", "sector": sector, "machine": machine}, fields, start_ms)


@pytest.fixture
def config_path(influxdb: InfluxDBDatabase, tmp_path: Path) -> Path:
    data = FACTORY | {"influxdb": {"url": influxdb.url, "database": influxdb.database}}
    path = tmp_path / "factory.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    stops = [
        stop_point(
            "press-1",
            BROKEN,
            {
                "duration_s": 750.0,
                "lost_s": 750.0,
                "state": "down",
                "open": True,
                "micro": False,
                "reason": "",
            },
        ),
        stop_point(
            "oven-1",
            WAITING,
            {
                "duration_s": 3600.0,
                "lost_s": 2700.0,
                "state": "idle",
                "open": False,
                "micro": False,
                "reason": "no_orders",
            },
        ),
        stop_point(
            "press-1",
            MICRO,
            {
                "duration_s": 40.0,
                "lost_s": 40.0,
                "state": "idle",
                "open": False,
                "micro": True,
                "reason": "",
            },
        ),
    ]

    async def store() -> None:
        async with InfluxDBSink(url=influxdb.url, database=influxdb.database) as sink:
            await sink.write(stops)

    influxdb.create()
    asyncio.run(store())
    return path


WINDOW = ["--from", "2026-11-24", "--to", "2026-11-24"]


def run(*args: str) -> int:
    return main(["stops", *args])


def test_the_table_in_the_plants_language(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(str(config_path), *WINDOW) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Paradas de 2026-11-24 00:00:00 a 2026-11-25 00:00:00 (America/Argentina/Buenos_Aires)",
        "",
        "ID                     Máquina  Inicio               Duración  Planif. perdido  Estado"
        "    Motivo",
        f"press-1@{BROKEN}  press-1  2026-11-24 10:15:03   0:12:30          0:12:30  En falla"
        "  —            en curso",
        f"oven-1@{WAITING}   oven-1   2026-11-24 08:00:00   1:00:00          0:45:00  Parada"
        "    Sin pedidos",
        "1 microparadas no se muestran (--all las muestra)",
        "",
        "Tiempo planificado perdido por causa",
        "",
        "Causa                  Paradas  Planif. perdido  Piezas perdidas",
        "Demanda (sin pedidos)        1          0:45:00                —",
        "Sin motivo asignado          1          0:12:30              250",
        "Total                        2          0:57:30              250",
        "sin piezas para 0:45:00 de máquinas sin velocidad nominal",
    ]


def test_all_shows_micro_stops_and_machine_filters(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(str(config_path), *WINDOW, "--all", "--machine", "press-1", "--lang", "en") == 0
    lines = capsys.readouterr().out.splitlines()
    ids = [line.split()[0] for line in lines[3:5]]
    assert ids == [f"press-1@{BROKEN}", f"press-1@{MICRO}"]
    assert lines[5] == ""
    assert "micro-stops not shown" not in "\n".join(lines)


def test_json_for_scripts(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(str(config_path), *WINDOW, "--json", "--lang", "pt-BR") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["micro_hidden"] == 1
    assert [s["id"] for s in answer["stops"]] == [f"press-1@{BROKEN}", f"oven-1@{WAITING}"]
    assert answer["stops"][1] | {"start_ms": 0} == {
        "id": f"oven-1@{WAITING}",
        "machine": "oven-1",
        "sector": "bakery",
        "start": "2026-11-24T08:00:00.000-03:00",
        "start_ms": 0,
        "duration_s": 3600.0,
        "lost_s": 2700.0,
        "state": "idle",
        "open": False,
        "micro": False,
        "reason": "no_orders",
        "reason_name": "Sem pedidos",
        "category": "demand",
    }
    assert answer["losses"]["by_category"][0] == {
        "category": "demand",
        "name": "Demanda (sem pedidos)",
        "stops": 1,
        "lost_s": 2700.0,
        "lost_h": 0.75,
        "parts": None,
        "unrated_s": 2700.0,
    }
    assert answer["losses"]["total"]["parts"] == 250.0


def test_a_window_with_no_stops(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(str(config_path), "--from", "2026-11-23 06:00", "--to", "2026-11-23 14:00") == 0
    assert capsys.readouterr().out == (
        "Ninguna parada de 2026-11-23 06:00:00 a 2026-11-23 14:00:00 "
        "(America/Argentina/Buenos_Aires).\n"
    )


def test_set_gives_the_stop_its_reason_and_keeps_the_rest(
    config_path: Path, influxdb: InfluxDBDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(str(config_path), "--set", f"press-1@{BROKEN}", "rotura") == 0
    assert capsys.readouterr().out == (
        f"press-1@{BROKEN}: motivo «Rotura» (parada de press-1 del 2026-11-24 10:15:03, 0:12:30)\n"
    )
    (row,) = influxdb.query(f"SELECT * FROM stop WHERE time = {BROKEN}ms")
    assert {k: row[k] for k in ("duration_s", "lost_s", "state", "open", "reason")} == {
        "duration_s": 750.0,
        "lost_s": 750.0,
        "state": "down",
        "open": True,
        "reason": "breakdown",
    }
    assert run(str(config_path), "--clear", f"press-1@{BROKEN}", "--lang", "en") == 0
    assert capsys.readouterr().out == (
        f"press-1@{BROKEN}: reason cleared (stop of press-1 at 2026-11-24 10:15:03, 0:12:30)\n"
    )
    (row,) = influxdb.query(f"SELECT reason FROM stop WHERE time = {BROKEN}ms")
    assert row["reason"] == ""


def test_set_refuses_an_unknown_reason_listing_the_plants(
    config_path: Path, influxdb: InfluxDBDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(str(config_path), "--set", f"press-1@{BROKEN}", "broken", "--lang", "en") == 1
    assert capsys.readouterr().err == (
        "'broken' is not a stop reason; use one of: no_material (No raw material), no_orders "
        "(No orders), breakdown (Breakdown), waiting_maintenance (Waiting for maintenance), "
        "no_operator (No operator), power_cut (Power cut), setup (Setup / changeover), "
        "planned_maintenance (Planned maintenance), assembly (Assembly / meeting), other "
        "(Other)\n"
    )
    (row,) = influxdb.query(f"SELECT reason FROM stop WHERE time = {BROKEN}ms")
    assert row["reason"] == ""


def test_set_refuses_a_stop_that_is_not_there(
    config_path: Path, influxdb: InfluxDBDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(str(config_path), "--set", f"press-1@{BROKEN + 1}", "breakdown") == 1
    assert capsys.readouterr().err == (
        f"no hay ninguna parada press-1@{BROKEN + 1}: ninguna parada de press-1 empieza el "
        "2026-11-24 10:15:03; `aguante stops` las lista\n"
    )
    assert run(str(config_path), "--set", "press-1 10:15", "breakdown", "--lang", "en") == 1
    assert capsys.readouterr().err == (
        "'press-1 10:15' is not a stop ID: machine@milliseconds, as `aguante stops` shows it\n"
    )
    assert len(influxdb.query("SELECT * FROM stop")) == 3


def test_imported_stops_are_listed_and_take_reasons(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paper = tmp_path / "stops.csv"
    paper.write_text(
        "machine,start,end,reason\noven-1,2026-11-24 13:00,2026-11-24 13:20,Corte de luz\n",
        encoding="utf-8",
    )
    assert main(["import", str(config_path), str(paper)]) == 0
    capsys.readouterr()
    assert run(str(config_path), *WINDOW, "--machine", "oven-1", "--json") == 0
    stops = json.loads(capsys.readouterr().out)["stops"]
    imported = local_ms("2026-11-24T13:00")
    assert [(s["id"], s["reason"], s["state"]) for s in stops] == [
        (f"oven-1@{imported}", "power_cut", "idle"),
        (f"oven-1@{WAITING}", "no_orders", "idle"),
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--since", "7 days"], "'7 days' is not a period: write 30m, 12h, 7d or 2w"),
        (
            ["--from", "24/11/2026"],
            "'24/11/2026' is not a date: write 2026-11-01 or 2026-11-01 06:00",
        ),
        (["--to", "2026-11-24"], "--to goes with --from"),
        (
            ["--from", "2026-11-24", "--to", "2026-11-23"],
            "--to (2026-11-23) is not after --from (2026-11-24)",
        ),
        (["--machine", "press-9"], "'press-9' is not a machine in the config (press-1, oven-1)"),
    ],
)
def test_options_a_person_got_wrong(
    config_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    assert run(str(config_path), *args, "--lang", "en") == 1
    assert capsys.readouterr().err == error + "\n"
