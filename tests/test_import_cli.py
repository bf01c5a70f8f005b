"""`aguante import`: paper records into a real InfluxDB — the totals arrive, a second run changes
nothing, a bad file writes nothing, and a failed run says what is in and that re-running is safe."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from collector.cli import main
from tests.conftest import InfluxDBDatabase
from tests.services import InfluxDB

ZONE = ZoneInfo("America/Argentina/Buenos_Aires")

FACTORY: dict[str, Any] = {
    "factory": "coop",
    "timezone": "America/Argentina/Buenos_Aires",
    "language": "en",
    "calendar": {
        "shifts": [
            {
                "name": "morning",
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "06:00",
                "end": "14:00",
                "breaks": [{"start": "10:00", "end": "10:20"}],
            },
            {
                "name": "afternoon",
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "14:00",
                "end": "22:00",
            },
        ]
    },
    "sectors": [{"id": "pressing"}, {"id": "bakery"}],
    "machines": [
        {
            "id": "press-1",
            "sector": "pressing",
            "rated_per_hour": 1200,
            "modbus": {
                "host": "127.0.0.1",
                "port": 5020,
                "signals": [{"name": "running", "table": "coil", "address": 0, "type": "bool"}],
            },
            "state": {"running": {"signal": "running", "equals": True}},
        },
        {"id": "oven-1", "sector": "bakery", "rated_per_hour": 600},
    ],
}

# One week of paper records as a cooperative's Excel in Spanish saves them.
PAPER = (
    "\ufeffmachine;start;end;produced;rejected;reason\r\n"
    "oven-1;05/10/2026 06:00;05/10/2026 14:00;3999;7;\r\n"
    "oven-1;05/10/2026 09:50;05/10/2026 10:40;;;Rotura\r\n"
    "oven-1;05/10/2026 13:30:30;05/10/2026 14:30;;;sin pedidos\r\n"
    "oven-1;06/10/2026 06:00;06/10/2026 13:00;3001,0;0;\r\n"
    "press-1;05/10/2026 06:00;05/10/2026 10:00;4321;13;\r\n"
    "press-1;05/10/2026 10:20;05/10/2026 14:00;3333;;\r\n"
)


def write_config(tmp_path: Path, url: str, database: str, **influx: Any) -> Path:
    path = tmp_path / "factory.yaml"
    data = FACTORY | {"influxdb": {"url": url, "database": database} | influx}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def write_csv(tmp_path: Path, text: str, name: str = "paper.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def sums(influxdb: InfluxDBDatabase) -> dict[str, dict[str, Any]]:
    rows = influxdb.query(
        "SELECT sum(produced) AS produced, sum(rejected) AS rejected, count(produced) AS minutes, "
        "sum(running_s) AS running_s, sum(down_s) AS down_s, sum(idle_s) AS idle_s, "
        "sum(planned_s) AS planned_s FROM utilization GROUP BY machine"
    )
    stops = influxdb.query(
        "SELECT count(duration_s) AS stops, sum(lost_s) AS lost_s FROM stop GROUP BY machine"
    )
    found = {row["machine"]: row for row in rows}
    for row in stops:
        found[row["machine"]] |= {"stops": row["stops"], "lost_s": row["lost_s"]}
    for row in found.values():
        row.pop("time", None)
        row.pop("_name", None)
    return found


def test_both_commands_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("import", "stops"):
        with pytest.raises(SystemExit) as caught:
            main([command, "--help"])
        assert caught.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: aguante {command}")


@pytest.mark.integration
def test_import_writes_the_files_totals_and_again_changes_nothing(
    influxdb: InfluxDBDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, influxdb.url, influxdb.database, batch_size=100)
    paper = write_csv(tmp_path, PAPER)
    assert main(["import", str(config), str(paper)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{paper}: 6 rows imported as 1392 points (1390 minutes of utilization, 2 stops) from "
        "2026-10-05 06:00:00 to 2026-10-06 13:00:00",
        "  oven-1: 930 whole minutes (no sensors), 2 stops; 7000 produced, 7 rejected",
        "  press-1: counts of 460 minutes (they replace the collector's), 0 stops; 7654 "
        "produced, 13 rejected",
    ]
    # Not a terminal: one line per 10 %, the last at 100 %.
    assert err.splitlines()[-1] == "writing: 100 % (1392/1392)"
    first = sums(influxdb)
    assert first == {
        "oven-1": {
            "machine": "oven-1",
            "produced": 7000,
            "rejected": 7,
            "minutes": 900,
            # Two mornings of 460 planned minutes, less 30 broken and 29.5 without orders.
            "planned_s": (460 + 400) * 60 + 30 * 60,
            "running_s": (460 - 30 - 29.5 + 400) * 60,
            "down_s": 50 * 60,
            "idle_s": 59.5 * 60,
            "stops": 2,
            "lost_s": 30 * 60 + 59.5 * 60,
        },
        "press-1": {
            "machine": "press-1",
            "produced": 7654,
            "rejected": 13,
            "minutes": 460,
            "planned_s": None,
            "running_s": None,
            "down_s": None,
            "idle_s": None,
        },
    }
    assert main(["import", str(config), str(paper)]) == 0
    assert sums(influxdb) == first
    capsys.readouterr()


@pytest.mark.integration
def test_a_bad_file_writes_nothing(
    influxdb: InfluxDBDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influxdb.create()
    config = write_config(tmp_path, influxdb.url, influxdb.database)
    bad = write_csv(tmp_path, PAPER + "oven-1;06/10/2026 12:00;06/10/2026 12:30;;;broken\r\n")
    assert main(["import", str(config), str(bad), "--lang", "es"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[0] == (
        f"{bad}:8: columna reason: «broken» no es un motivo de parada; usá uno de: no_material "
        "(Falta de materia prima), no_orders (Sin pedidos), breakdown (Rotura), "
        "waiting_maintenance (Esperando mantenimiento), no_operator (Sin operario), power_cut "
        "(Corte de luz), setup (Preparación / cambio de matriz), planned_maintenance "
        "(Mantenimiento planificado), assembly (Asamblea / reunión), other (Otro)"
    )
    assert err.splitlines()[1:] == ["1 problema(s): no se escribió nada"]
    assert influxdb.query("SHOW MEASUREMENTS") == []


@pytest.mark.integration
def test_a_dry_run_says_what_it_would_write_and_writes_nothing(
    influxdb: InfluxDBDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influxdb.create()
    config = write_config(tmp_path, influxdb.url, influxdb.database)
    paper = write_csv(tmp_path, PAPER)
    assert main(["import", str(config), str(paper), "--dry-run", "--lang", "pt-BR"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == (
        f"{paper}: 6 linhas dariam 1392 pontos (1390 minutos de utilização, 2 paradas) de "
        "2026-10-05 06:00:00 a 2026-10-06 13:00:00; teste: nada foi gravado"
    )
    assert err == ""
    assert influxdb.query("SHOW MEASUREMENTS") == []


@pytest.mark.integration
def test_a_failed_import_says_what_is_in_and_running_it_again_is_safe(
    start_influxdb: Callable[..., InfluxDB], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_influxdb()
    config = write_config(tmp_path, server.url, "plant", timeout=2.0)
    paper = write_csv(tmp_path, PAPER)
    server.stop()
    assert main(["import", str(config), str(paper)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-2:] == [
        f"import stopped: InfluxDB at {server.url}: ConnectError: Connection refused",
        "0 of 6 rows were written (0 of 1392 points). Running the same import again is safe: "
        "points already written are overwritten by themselves.",
    ]
    server.start()
    assert main(["import", str(config), str(paper)]) == 0
    produced = server.query("SELECT sum(produced) FROM utilization", database="plant")
    assert produced[0]["sum"] == 7000 + 7654
    capsys.readouterr()


def test_warnings_are_printed_and_the_import_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", "unused")
    paper = write_csv(
        tmp_path,
        "machine,start,end,produced\noven-1,2026-10-05 06:00,2026-10-05 07:00,1500\n",
    )
    assert main(["import", str(config), str(paper), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"{paper}: warning: oven-1 has no sensors and this file gives no stops for it: all "
        "planned time of its minutes counts as running",
        f"{paper}:2: warning: column produced: 1500 parts in 1:00:00 is more than twice "
        "oven-1's rated speed (600/h): check the number",
    ]


def test_rows_in_the_future_are_refused_by_the_clock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", "unused")
    tomorrow = dt.datetime.now(ZONE).date() + dt.timedelta(days=1)
    paper = write_csv(
        tmp_path, f"machine,start,end,produced\noven-1,{tomorrow} 06:00,{tomorrow} 07:00,10\n"
    )
    assert main(["import", str(config), str(paper)]) == 1
    assert f"{paper}:2: column end: {tomorrow} 07:00 is in the future" in capsys.readouterr().err


def sums_agree(influxdb: InfluxDBDatabase) -> None:
    """utilization_1h holds, hour by hour, and utilization_1d, local day by local day, the sums
    of the stored minutes."""
    fields = ("produced", "rejected", "running_s", "planned_s", "down_s", "idle_s")
    sums = ", ".join(f"sum({f}) AS {f}" for f in fields)
    minutes = influxdb.query(
        f"SELECT {sums} FROM utilization WHERE time > 0 GROUP BY time(1h), machine fill(none)"
    )
    hours = influxdb.query(
        f"SELECT {sums} FROM aguante_rollups.utilization_1h GROUP BY time(1h), machine fill(none)"
    )
    assert minutes and len(hours) == len(minutes)
    for minute, hour in zip(minutes, hours, strict=True):
        assert (hour["time"], hour["machine"]) == (minute["time"], minute["machine"])
        for name in fields:
            assert hour[name] == pytest.approx(minute[name]), (hour["machine"], name)
    days = influxdb.query(
        f"SELECT {sums} FROM aguante_rollups.utilization_1d GROUP BY time(1d), machine fill(none)"
    )
    # The oven on both days, the press on the first: keyed by the plant's local midnight.
    assert len({(d["machine"], d["time"]) for d in days}) == len(days) == 3
    stored = influxdb.query("SELECT * FROM aguante_rollups.utilization_1d GROUP BY machine, shift")
    for machine, begin in sorted({(d["machine"], d["time"]) for d in stored}):
        local = dt.datetime.fromtimestamp(begin / 1000, ZONE)
        assert (local.hour, local.minute) == (0, 0)
        where = f"machine = '{machine}' AND time >= {begin}ms AND time < {begin + 86_400_000}ms"
        (day,) = influxdb.query(f"SELECT {sums} FROM aguante_rollups.utilization_1d WHERE {where}")
        (within,) = influxdb.query(f"SELECT {sums} FROM utilization WHERE {where}")
        for name in fields:
            assert (day[name] or 0) == pytest.approx(within[name] or 0), (machine, name)


@pytest.mark.integration
def test_an_import_rebuilds_the_hourly_sums_it_touched_and_rollup_does_it_by_hand(
    influxdb: InfluxDBDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, influxdb.url, influxdb.database)
    assert main(["import", str(config), str(write_csv(tmp_path, PAPER))]) == 0
    sums_agree(influxdb)
    types = influxdb.query("SHOW FIELD KEYS FROM aguante_rollups.utilization_1h")
    kinds = {row["fieldKey"]: row["fieldType"] for row in types}
    assert kinds["produced"] == "integer" and kinds["planned_s"] == "float"

    # A minute corrected by hand: the hour is stale until `aguante rollup` sums it again.
    for measurement in ("utilization_1h", "utilization_1d"):
        influxdb.server.query(
            f"DROP MEASUREMENT {measurement}", database=influxdb.database, method="POST"
        )
    capsys.readouterr()
    assert main(["rollup", str(config), "--from", "2026-10-05", "--to", "2026-10-06"]) == 0
    assert capsys.readouterr().out.strip().endswith("hourly and daily sums written")
    sums_agree(influxdb)
    assert main(["rollup", str(config), "--from", "2026-10-06", "--to", "2026-10-05"]) == 2
    assert "--to is before --from" in capsys.readouterr().err
    assert (
        main(
            [
                "rollup",
                str(config),
                "--from",
                "2026-10-05",
                "--to",
                "2026-10-05",
                "--machine",
                "nope",
            ]
        )
        == 1
    )
