"""`aguante kpi` run in-process against the real InfluxDB filled by the test: tables in each
language, JSON, local dates with --to included, and every kind of bad input as a clear message."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from collector.cli import main
from collector.config import ENV_OVERRIDES
from collector.schema import Point
from dashboards.cli import kpi_table
from dashboards.kpi import Totals
from dashboards.kpi_query import KpiRow
from tests.conftest import InfluxDBDatabase
from tests.dashboards.plant import config_text, local_ms, utilization, write
from tests.services import free_port


def monday() -> list[Point]:
    """Every minute of Monday 2 March 2026 for press-1 and lathe-1, nothing for the others."""
    press = [  # (running_s, idle_s, down_s, running_capacity, produced, rejected)
        (60, 0, 0, 20, 19, 1),
        (60, 0, 0, 20, 20, 1),
        (30, 30, 0, 10, 7, 0),
        (0, 0, 60, 0, 0, 0),
    ]
    lathe = [(60, 0), (40, 20)]  # (running_s, unknown_s)
    points = []
    midnight = local_ms(2026, 3, 2)
    for i in range(24 * 60):
        running, idle, down, running_capacity, produced, rejected = press[i % len(press)]
        fields: dict[str, float | int] = {
            "planned_s": 60.0,
            "running_s": float(running),
            "idle_s": float(idle),
            "down_s": float(down),
            "off_s": 0.0,
            "unknown_s": 0.0,
            "produced": produced,
            "rejected": rejected,
            "capacity": 20.0,
            "running_capacity": float(running_capacity),
            "micro_stops": 0,
        }
        points.append(utilization("press-1", midnight + i * 60_000, fields))
        running, unknown = lathe[i % len(lathe)]
        fields = {
            "planned_s": 60.0,
            "running_s": float(running),
            "unknown_s": float(unknown),
            "capacity": 0.0,
            "running_capacity": 0.0,
            "produced": 0,
            "rejected": 0,
        }
        points.append(utilization("lathe-1", midnight + i * 60_000, fields))
    return points


def tuesday_midnight() -> Point:
    """The last minute of Tuesday the 3rd, outside every shift."""
    fields: dict[str, float | int] = {
        "planned_s": 60.0,
        "running_s": 60.0,
        "produced": 20,
        "capacity": 20.0,
        "running_capacity": 20.0,
    }
    return utilization("press-1", local_ms(2026, 3, 3, 23, 59), fields)


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_OVERRIDES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def plant_file(tmp_path: Path, influxdb: InfluxDBDatabase) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(config_text(influxdb.url, influxdb.database), encoding="utf-8")
    return path


@pytest.fixture
async def filled(influxdb: InfluxDBDatabase, plant_file: Path) -> Path:
    await write(influxdb.url, influxdb.database, [*monday(), tuesday_midnight()])
    return plant_file


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["kpi", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def cells(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


def table(out: str) -> dict[str, list[str]]:
    """The table's lines (the header included) by their first cell; notes under it left out."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line) <= {"-", " "})
    body = [lines[rule - 1]]
    for line in lines[rule + 1 :]:
        if not line:
            break
        body.append(line)
    return {cells(line)[0]: cells(line)[1:] for line in body}


@pytest.mark.integration
async def test_a_table_by_machine_in_the_plants_language(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, filled, "--from", "2026-03-02", "--to", "2026-03-02", "--by", "machine"
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "coop-test: del 2026-03-02 al 2026-03-02"
    rows = table(out)
    assert rows["Máquina"] == [
        "Disponibilidad",
        "Rendimiento",
        "Calidad",
        "OEE",
        "Uso de capacidad",
        "Sin datos",
        "Horas planificadas",
        "Horas en marcha",
        "Producidas",
        "Rechazadas",
    ]
    # Every 4 minutes: 150 s running of 240 planned; 46 made of 50 possible running, 2 rejected;
    # 80 of capacity.
    assert rows["press-1"] == [
        "62,5 %",
        "92,0 %",
        "95,7 %",
        "55,0 %",
        "57,5 %",
        "0,0 %",
        "24,0",
        "15,0",
        "16.560",
        "720",
    ]
    # No minute at all: no figures, and all of its time without data.
    assert rows["press-2"] == ["—"] * 5 + ["100,0 %", "0,0", "0,0", "0", "0"]
    # No counter, no rated speed: time-based use, marked; 20 s of every 120 without data.
    assert rows["lathe-1"] == [
        "83,3 %",
        "—",
        "—",
        "—",
        "83,3 % *",
        "16,7 %",
        "24,0",
        "20,0",
        "0",
        "0",
    ]
    assert list(rows) == ["Máquina", "press-1", "press-2", "lathe-1", "oven-1"]
    assert "* por tiempo: tiempo en marcha sobre tiempo calendario" in out
    assert "(+N *)" not in out


@pytest.mark.integration
async def test_the_whole_plant_in_english_says_what_was_left_out(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, filled, "--from", "2026-03-02", "--to", "2026-03-02", "--lang", "en")
    assert code == 0
    assert out.splitlines()[0] == "coop-test: 2026-03-02 to 2026-03-02"
    rows = table(out)
    assert rows["Selection"][:5] == [
        "Availability",
        "Performance",
        "Quality",
        "OEE",
        "Capacity use",
    ]
    # Capacity use is the press's (parts); the lathe, time-based, is left out and counted.
    # No data: the lathe's unknown 4 h and the whole days of press-2 and oven-1.
    assert rows["Whole plant"] == [
        "72.9%",
        "92.0%",
        "95.7%",
        "64.2%",
        "57.5% (+1 *)",
        "54.2%",
        "48.0",
        "35.0",
        "16,560",
        "720",
    ]
    code, out, _ = run(
        capsys,
        filled,
        "--from",
        "2026-03-02",
        "--to",
        "2026-03-02",
        "--lang",
        "en",
        "--machine",
        "press-1",
        "--machine",
        "lathe-1",
    )
    assert table(out)["press-1, lathe-1"][:6] == [
        "72.9%",
        "92.0%",
        "95.7%",
        "64.2%",
        "57.5% (+1 *)",
        "8.3%",
    ]
    assert "(+N *): N machines measured time-based are left out" in out


@pytest.mark.integration
async def test_a_sector_in_portuguese(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--from", "2026-03-02", "--to", "2026-03-02", "--sector", "pressing")
    code, out, _ = run(capsys, filled, *args, "--lang", "pt-BR")
    assert code == 0
    rows = table(out)
    assert rows["Seleção"][:3] == ["Disponibilidade", "Desempenho", "Qualidade"]
    assert rows["pressing"][:5] == ["62,5 %", "92,0 %", "95,7 %", "55,0 %", "57,5 %"]
    assert "*" not in out


@pytest.mark.integration
async def test_json_rows_have_english_keys_and_null_ratios(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--from", "2026-03-02", "--to", "2026-03-02", "--by", "machine", "--json")
    code, out, _ = run(capsys, filled, *args, "--lang", "es")
    assert code == 0
    data = json.loads(out)
    assert {k: data[k] for k in ("factory", "from", "to", "by")} == {
        "factory": "coop-test",
        "from": "2026-03-02",
        "to": "2026-03-02",
        "by": "machine",
    }
    assert data["machines"] == ["press-1", "press-2", "lathe-1", "oven-1"]
    rows = {row["label"]: row for row in data["rows"]}
    press = rows["press-1"]
    assert press["availability"] == pytest.approx(0.625)
    assert press["performance"] == pytest.approx(0.92)
    assert press["quality"] == pytest.approx(44 / 46)
    assert press["oee"] == pytest.approx(0.55)
    assert press["capacity_use"] == pytest.approx(0.575)
    assert press["capacity_use_basis"] == "parts"
    assert press["produced"] == 16560
    assert press["planned_s"] == 86400
    assert press["recorded_s"] == 86400
    assert press["start"] == "2026-03-02T00:00:00-03:00"
    assert press["end"] == "2026-03-03T00:00:00-03:00"
    lathe = rows["lathe-1"]
    assert lathe["performance"] is None
    assert lathe["capacity_use"] == pytest.approx(100 / 120)
    assert lathe["capacity_use_basis"] == "time"
    assert lathe["time_based_machines"] == 1
    assert lathe["unknown_share"] == pytest.approx(1 / 6)
    empty = rows["oven-1"]
    assert [empty[k] for k in ("availability", "oee", "capacity_use")] == [None] * 3
    assert empty["unknown_share"] == 1.0
    assert empty["unrecorded_s"] == 86400
    assert '"capacity_use_basis": null' in out


@pytest.mark.integration
async def test_to_includes_its_whole_day(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--from", "2026-03-02", "--by", "day", "--json", "--machine", "press-1")
    _, out, _ = run(capsys, filled, *args, "--to", "2026-03-02")
    assert [(r["label"], r["produced"]) for r in json.loads(out)["rows"]] == [("2026-03-02", 16560)]
    _, out, _ = run(capsys, filled, *args, "--to", "2026-03-03")
    assert [(r["label"], r["produced"]) for r in json.loads(out)["rows"]] == [
        ("2026-03-02", 16560),
        ("2026-03-03", 20),
    ]


@pytest.mark.integration
async def test_by_shift_names_the_time_outside_shifts(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--from", "2026-03-02", "--to", "2026-03-03", "--by", "shift", "--lang", "es")
    code, out, _ = run(capsys, filled, *args)
    assert code == 0
    rows = table(out)
    assert list(rows) == ["Turno", "morning", "afternoon", "Fuera de turno"]
    # Monday 06:00 to 14:00, 14:00 to 22:00, the rest of it and Tuesday's last minute.
    assert rows["morning"][-2:] == ["5.520", "240"]
    assert rows["afternoon"][-2:] == ["5.520", "240"]
    assert rows["Fuera de turno"][-2:] == ["5.540", "240"]


@pytest.mark.integration
async def test_no_data_says_so(
    influxdb: InfluxDBDatabase, plant_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influxdb.create()
    code, out, _ = run(capsys, plant_file, "--from", "2026-03-02", "--to", "2026-03-08")
    assert code == 0
    assert table(out)["Toda la planta"][:6] == ["—"] * 5 + ["100,0 %"]
    assert out.rstrip().endswith("No hay datos de utilización de estas máquinas en este período.")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--machine", "press-1", "--machine", "press-9"],
            "aguante kpi: unknown machine(s) press-9; the config has press-1, press-2, "
            "lathe-1, oven-1\n",
        ),
        (
            ["--sector", "paint"],
            "aguante kpi: unknown sector paint; the config has pressing, turning, heat\n",
        ),
        (
            ["--to", "2026-03-01"],
            "aguante kpi: --from 2026-03-02 is after --to 2026-03-01\n",
        ),
        (
            ["--to", "9999-12-31"],
            "aguante kpi: --to 9999-12-31 is past the last date this command can count\n",
        ),
    ],
)
def test_a_selection_that_cannot_be_met_exits_2(
    plant_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # The database was never created: these are refused before InfluxDB is asked anything.
    code, out, err = run(capsys, plant_file, "--from", "2026-03-02", "--to", "2026-03-02", *args)
    assert (code, out, err) == (2, "", message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--from", "2026-02-30", "--to", "2026-03-02"],
            "argument --from: '2026-02-30' is not a date: write YYYY-MM-DD",
        ),
        (["--from", "2026-03-02", "--to", "2026-03-02", "--by", "year"], "invalid choice"),
        (["--from", "2026-03-02"], "the following arguments are required: --to"),
        (["--from", "2026-03-02", "--to", "2026-03-02", "--lang", "fr"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["kpi", str(tmp_path / "plant.yaml"), *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: aguante kpi")
    assert message in err


def test_a_broken_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(config_text("http://127.0.0.1:8086", "aguante") + "colour: red\n")
    code, out, err = run(capsys, path, "--from", "2026-03-02", "--to", "2026-03-02")
    assert (code, out) == (1, "")
    assert err == f"{path}: 1 problem(s)\n  colour: unknown key (hint: known keys: " + (
        "factory, timezone, influxdb, mqtt, stats_interval, language, state_file, buffer, "
        "calendar, stop_reasons, maintenance, network, sectors, machines)\n"
    )
    missing = tmp_path / "nowhere.yaml"
    code, out, err = run(capsys, missing, "--from", "2026-03-02", "--to", "2026-03-02")
    assert code == 1
    assert err.startswith(f"{missing}: 1 problem(s)\n  cannot read the file")


def test_an_unreachable_influxdb_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "plant.yaml"
    path.write_text(config_text(url, "aguante"))
    code, out, err = run(capsys, path, "--from", "2026-03-02", "--to", "2026-03-02")
    assert (code, out) == (1, "")
    assert err.startswith(f"aguante kpi: InfluxDB at {url}: ConnectError: ")
    assert err.count("\n") == 1


@pytest.mark.integration
def test_a_missing_database_exits_1(
    influxdb: InfluxDBDatabase, plant_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, plant_file, "--from", "2026-03-02", "--to", "2026-03-02")
    assert code == 1
    assert err == (
        f"aguante kpi: InfluxDB at {influxdb.url}: database not found: {influxdb.database}\n"
    )


def test_kpi_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["kpi", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aguante kpi")
    assert "--from DATE" in out
    assert "--by {machine,sector,shift,day,week,month}" in out


def vorne_row(label: str = "") -> KpiRow:
    moment = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    totals = Totals(
        planned_s=420 * 60,
        running_s=373 * 60,
        down_s=47 * 60,
        idle_s=60 * 60,
        produced=19271,
        rejected=423,
        capacity=480 * 60,
        running_capacity=373 * 60,
        calendar_s=480 * 60,
        parts_produced=19271,
        parts_capacity=480 * 60,
        parts_running_capacity=373 * 60,
        parts_machines=frozenset({"m"}),
    )
    return KpiRow(label, moment, moment, totals)


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("es", ["88,8 %", "86,1 %", "97,8 %", "74,8 %", "66,9 %", "0,0 %", "7,0", "6,2"]),
        ("pt-BR", ["88,8 %", "86,1 %", "97,8 %", "74,8 %", "66,9 %", "0,0 %", "7,0", "6,2"]),
        ("en", ["88.8%", "86.1%", "97.8%", "74.8%", "66.9%", "0.0%", "7.0", "6.2"]),
    ],
)
def test_numbers_are_written_the_way_each_language_writes_them(
    language: str, expected: list[str]
) -> None:
    text = kpi_table([vorne_row("line-1")], language=language, by="machine")  # type: ignore[arg-type]
    (line,) = [line for line in text.splitlines() if line.startswith("line-1")]
    thousands = "," if language == "en" else "."
    assert cells(line)[1:] == [*expected, f"19{thousands}271", "423"]
