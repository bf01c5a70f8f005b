"""`aguante report` against the real InfluxDB filled by the test: every figure in the HTML equals
what `aguante kpi --json` and `aguante stops --json` compute for the same period, in each
language's own formats; the PDF is printed by headless Chromium and rendered back to pages."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.cli import main
from collector.config import ENV_OVERRIDES, load_config
from collector.influxql import InfluxQL
from collector.schema import STOP, Point
from dashboards.kpi import Totals
from dashboards.kpi_query import kpis
from dashboards.report import Period, format_date, gather, sentence
from tests.conftest import InfluxDBDatabase
from tests.dashboards.plant import (
    FACTORY,
    MACHINES,
    config_text,
    local_ms,
    random_minutes,
    write,
)

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "report"

# The report's period (two local days) and the two days before it, which it is compared with.
START, END = dt.date(2026, 3, 3), dt.date(2026, 3, 4)
BEFORE = (dt.date(2026, 3, 1), dt.date(2026, 3, 2))

# (machine, local start, minutes, lost minutes, reason id or "" for none given)
STOPS = [
    ("press-1", (2026, 3, 3, 8, 0), 90, 90, "no_orders"),
    ("press-2", (2026, 3, 3, 9, 30), 45, 45, "no_material"),
    ("press-1", (2026, 3, 4, 7, 0), 30, 30, "breakdown"),
    ("lathe-1", (2026, 3, 4, 10, 0), 60, 60, ""),
    ("press-2", (2026, 3, 2, 11, 0), 120, 120, "no_orders"),  # the period before
]


def stop_points() -> list[Point]:
    points = []
    for machine, start, minutes, lost, reason in STOPS:
        tags = {"factory": FACTORY, "sector": MACHINES[machine][0], "machine": machine}
        fields: dict[str, float | int | str | bool] = {
            "duration_s": minutes * 60.0,
            "lost_s": lost * 60.0,
            "state": "down" if reason == "breakdown" else "idle",
            "open": False,
            "micro": False,
            "reason": reason,
        }
        points.append(Point(STOP, tags, fields, local_ms(*start)))
    return points


# Ticket events as the maintenance service writes them: (id, rule, machine, event, local time).
TICKETS = [
    (1, "hot", "press-1", "opened", (2026, 3, 3, 10, 0)),
    (1, "hot", "press-1", "resolved", (2026, 3, 3, 13, 0)),  # 3 h
    (2, "service", "press-1", "opened", (2026, 2, 20, 8, 0)),  # before the period …
    (2, "service", "press-1", "resolved", (2026, 3, 4, 8, 0)),  # … 288 h, preventive
    (3, "hot", "press-2", "opened", (2026, 3, 4, 20, 0)),  # still open
    (4, "hot", "press-2", "opened", (2026, 3, 5, 9, 0)),  # after the period
]
RULES = [
    {
        "id": "hot",
        "machines": ["press-1", "press-2"],
        "threshold": {"signal": "strokes", "above": 9},
    },
    {"id": "service", "machines": ["press-1", "press-2"], "meter": {"run_hours": 500}},
    {"id": "vibration", "machines": ["lathe-1"], "drift": {"signal": "strokes"}},
]


def ticket_points() -> list[Point]:
    points = []
    for ticket, rule, machine, event, at in TICKETS:
        tags = {
            "factory": FACTORY,
            "sector": MACHINES[machine][0],
            "machine": machine,
            "rule": rule,
        }
        fields: dict[str, float | int | str | bool] = {
            "id": ticket, "status": "resolved" if event == "resolved" else "open",
            "title": f"{machine}: {rule}", "severity": "warning", "event": event,
        }  # fmt: skip
        points.append(Point("ticket", tags, fields, local_ms(*at)))
    # The rules' state at the period's end (the service writes it every cycle): press-1's
    # service is due, press-2's halfway (not shown), the lathe drifts; an older point of the
    # lathe said otherwise.
    status: list[tuple[str, str, str, dict[str, float | bool], tuple[int, int, int, int, int]]] = [
        ("press-1", "service", "meter", {"progress": 1.04, "firing": True}, (2026, 3, 4, 23, 0)),
        ("press-2", "service", "meter", {"progress": 0.5, "firing": False}, (2026, 3, 4, 23, 0)),
        ("lathe-1", "vibration", "drift", {"firing": False}, (2026, 3, 4, 20, 0)),
        ("lathe-1", "vibration", "drift", {"firing": True}, (2026, 3, 4, 23, 30)),
    ]
    for machine, rule, test, state, at in status:
        tags = {"factory": FACTORY, "sector": MACHINES[machine][0], "machine": machine,
                "rule": rule, "test": test}  # fmt: skip
        points.append(Point("rule_status", tags, {"verdict": "fire", **state}, local_ms(*at)))
    return points


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_OVERRIDES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def plant_file(tmp_path: Path, influxdb: InfluxDBDatabase) -> Path:
    path = tmp_path / "plant.yaml"
    data = yaml.safe_load(config_text(influxdb.url, influxdb.database))
    data["maintenance"] = {"rules": RULES}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    minutes = random_minutes(local_ms(2026, 3, 1), local_ms(2026, 3, 5), seed=11)
    await write(influxdb.url, influxdb.database, [*minutes, *stop_points(), *ticket_points()])
    return path


@dataclass
class Page:
    """What the test reads of the report: elements by id, table rows by their data key (a
    machine id or a loss category), the sectors' big figures."""

    by_id: dict[str, str]
    rows: dict[str, list[str]]
    sectors: list[str]


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def parse(page: str) -> Page:
    by_id = {}
    for opened in re.finditer(r'<(?P<tag>\w+)[^>]*\bid="(?P<id>[^"]+)"[^>]*>', page):
        # Up to the first closing tag of its kind: the ids read here are on flat elements.
        close = page.index(f"</{opened['tag']}>", opened.end())
        by_id[opened["id"]] = _text(page[opened.end() : close])
    rows = {
        m["key"]: [_text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", m["body"], re.S)]
        for m in re.finditer(
            r'<tr class="(?:machine|loss)" data-(?:machine|category)="(?P<key>[^"]+)">'
            r"(?P<body>.*?)</tr>",
            page,
            re.S,
        )
    }
    sectors = [_text(m) for m in re.findall(r'<span class="use">(.*?)</span>', page, re.S)]
    return Page(by_id, rows, sectors)


def kpi_json(
    capsys: pytest.CaptureFixture[str], config: Path, *args: str
) -> dict[str, dict[str, Any]]:
    assert main(["kpi", str(config), "--json", *args]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    return {row["label"]: row for row in rows}


def percent(ratio: float | None, language: str) -> str:
    """Written here again, not imported: 64,3 % in es and pt-BR, 64.3% in en."""
    if ratio is None:
        return "—"
    text = f"{ratio * 100:.1f}"
    return text + "%" if language == "en" else text.replace(".", ",") + " %"


@pytest.mark.parametrize("language", ["es", "pt-BR", "en"])
async def test_every_figure_equals_what_kpi_and_stops_compute(
    plant_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], language: str
) -> None:
    out = tmp_path / f"report-{language}.html"
    args = ["--from", START.isoformat(), "--to", END.isoformat()]
    assert main(["report", str(plant_file), *args, "--lang", language, "--out", str(out)]) == 0
    capsys.readouterr()
    page = parse(out.read_text(encoding="utf-8"))

    plant = kpi_json(capsys, plant_file, *args)
    plant_before = kpi_json(capsys, plant_file, "--from", "2026-03-01", "--to", "2026-03-02")
    (now,) = plant.values()
    (before,) = plant_before.values()
    assert page.by_id["plant-use"].rstrip("*") == percent(now["capacity_use"], language)
    assert percent(now["capacity_use"], language) in page.by_id["plant-sentence"]
    assert percent(before["capacity_use"], language) in page.by_id["plant-sentence"]

    sectors = kpi_json(capsys, plant_file, *args, "--by", "sector")
    assert [s.rstrip("*") for s in page.sectors] == [
        percent(sectors[s]["capacity_use"], language) for s in ("pressing", "turning", "heat")
    ]

    machines = kpi_json(capsys, plant_file, *args, "--by", "machine")
    for machine, row in machines.items():
        cells = page.rows[machine]
        shown = [cells[2].rstrip("*"), *cells[3:7]]
        expected = [
            percent(row[name], language)
            for name in ("capacity_use", "availability", "performance", "quality", "oee")
        ]
        assert shown == expected, machine
        # Its stops and the planned time they cost (micro-stops left out, as in the losses).
        mine = [st for st in STOPS if st[0] == machine and START <= dt.date(*st[1][:3]) <= END]
        lost = f"{sum(st[3] for st in mine) / 60:.1f}"
        assert cells[9:11] == [str(len(mine)), lost if language == "en" else lost.replace(".", ",")]

    # Losses: what `aguante stops --json` sums for the same local days, by category.
    assert main(["stops", str(plant_file), *args, "--json"]) == 0
    losses = json.loads(capsys.readouterr().out)["losses"]["by_category"]
    assert losses, "the stops written by the test are found"
    for loss in losses:
        cells = page.rows[loss["category"]]
        hours = f"{loss['lost_s'] / 3600:.1f}"
        assert cells[1] == (hours if language == "en" else hours.replace(".", ",")), loss
        assert cells[3] == str(loss["stops"])
    # 90 + 45 + 30 + 60 minutes in the period; the 120 of March 2nd are the period before's.
    assert {k: v[1] for k, v in page.rows.items() if k in {"demand", "supply"}} == {
        "demand": "1.5" if language == "en" else "1,5",
        "supply": "0.8" if language == "en" else "0,8",
    }
    assert page.rows["demand"][4] == ("2.0" if language == "en" else "2,0")  # before: 120 min


def test_the_sentences_say_up_down_or_the_same(tmp_path: Path) -> None:
    def used(ratio: float) -> Totals:
        return Totals(produced=ratio * 1000, capacity=1000, parts_produced=ratio * 1000,
                      parts_capacity=1000, parts_machines=frozenset({"m"}))  # fmt: skip

    assert sentence("Prensas", used(0.64), used(0.58), "en") == (
        "Prensas used 64.0% of its capacity, up from 58.0%."
    )
    assert sentence("Prensas", used(0.64), used(0.58), "es") == (
        "Prensas usó el 64,0 % de su capacidad, más que el 58,0 % del período anterior."
    )
    assert "menos que el 70,0 %" in sentence("Prensas", used(0.64), used(0.70), "es")
    assert "o mesmo" in sentence("Prensas", used(0.64), used(0.64001), "pt-BR")
    assert sentence("Hornos", Totals(), used(0.5), "en").startswith("Hornos: there is no data")
    assert sentence("Hornos", used(0.5), None, "en") == "Hornos used 50.0% of its capacity."


def test_the_period_before_a_whole_month_is_the_month_before() -> None:
    assert Period(dt.date(2026, 10, 1), dt.date(2026, 10, 31)).before() == Period(
        dt.date(2026, 9, 1), dt.date(2026, 9, 30)
    )
    assert Period(dt.date(2026, 1, 1), dt.date(2026, 3, 31)).before() == Period(
        dt.date(2025, 10, 1), dt.date(2025, 12, 31)
    )
    assert Period(dt.date(2026, 3, 3), dt.date(2026, 3, 4)).before() == Period(*BEFORE)
    with pytest.raises(ValueError, match="empty"):
        Period(dt.date(2026, 3, 4), dt.date(2026, 3, 3))
    assert format_date(dt.date(2026, 3, 4), "es") == "4/3/2026"
    assert format_date(dt.date(2026, 3, 4), "en") == "3/4/2026"


async def test_the_pdf_has_the_summary_page_first_and_renders(
    plant_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.pdf"
    args = ["--from", START.isoformat(), "--to", END.isoformat(), "--format", "pdf"]
    assert main(["report", str(plant_file), *args, "--out", str(out)]) == 0, capsys.readouterr()
    assert out.read_bytes().startswith(b"%PDF")
    images = render_pages(out, tmp_path / "pages")
    # The summary alone on the first page; losses, trends, machines, maintenance and the
    # glossary on the two after it (for this plant of four machines and three sectors).
    assert len(images) == 3, [p.name for p in images]
    assert all(p.stat().st_size > 1000 for p in images)
    first, second, third = (page_text(out, n) for n in (1, 2, 3))
    assert "coop-test: informe para la asamblea" in first
    assert "de su capacidad" in first and "Dónde se fue el resto" not in first
    assert second.lstrip().startswith("Dónde se fue el resto")
    assert "Palabras de este informe" in third

    # The same report as a page on screen (a projector), photographed by headless Chromium.
    html = tmp_path / "report.html"
    assert main(["report", str(plant_file), *args[:4], "--out", str(html)]) == 0
    shot = screenshot(html, tmp_path / "screen.png")
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


def screenshot(page: Path, png: Path) -> Path:
    """The page as headless Chromium shows it, 1280 px wide; kept under test-artifacts/report/."""
    browser = shutil.which("chromium")
    assert browser is not None, "chromium is installed by `make test`"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={png.parent / 'chromium-profile'}", f"--screenshot={png}",
         "--window-size=1280,2400", page.as_uri()],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    kept = ARTIFACTS / "screen.png"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, kept)
    return png


def page_text(pdf: Path, page: int) -> str:
    done = subprocess.run(
        ["pdftotext", "-f", str(page), "-l", str(page), str(pdf), "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def render_pages(pdf: Path, folder: Path) -> list[Path]:
    """The PDF's pages as PNG images (pdftoppm), also kept under test-artifacts/report/."""
    pdftoppm = shutil.which("pdftoppm")
    assert pdftoppm is not None, "poppler-utils is installed by `make test`"
    folder.mkdir()
    subprocess.run([pdftoppm, "-r", "40", "-png", str(pdf), str(folder / "page")], check=True)
    images = sorted(folder.glob("page*.png"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for image in images:
        shutil.copyfile(image, ARTIFACTS / image.name)
    return images


def test_bad_dates_and_a_bad_config_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(config_text("http://127.0.0.1:9", "none"), encoding="utf-8")
    out = tmp_path / "r.html"
    backwards = ["--from", "2026-03-04", "--to", "2026-03-03", "--out", str(out)]
    assert main(["report", str(config), *backwards]) == 2
    assert "empty" in capsys.readouterr().err
    code = main(
        ["report", str(config), "--from", "2026-03-03", "--to", "2026-03-04", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("aguante report:") and not out.exists()
    assert re.search(r"127\.0\.0\.1:9", err), err


def test_decisions_and_maintenance_in_the_report(
    plant_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = ["decision", str(plant_file), "Se aprueba el segundo turno", "--date", "2026-03-04"]
    assert main([*record, "--sector", "pressing"]) == 0
    assert "Decisión registrada: 4/3/2026, pressing: Se aprueba el segundo turno" in (
        capsys.readouterr().out
    )
    assert main(["decision", str(plant_file), "Compra de acero a la cooperativa", "--date",
                 "2026-03-04"]) == 0  # fmt: skip
    assert main(["decision", str(plant_file), "x", "--sector", "nowhere"]) == 1
    assert "no sector 'nowhere'" in capsys.readouterr().err
    assert main(["decision", str(plant_file), "--list", "--from", "2026-03-01"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == [
        "4/3/2026  toda la planta  Compra de acero a la cooperativa",
        "4/3/2026  pressing  Se aprueba el segundo turno",
    ]

    out = tmp_path / "report.html"
    args = ["--from", START.isoformat(), "--to", END.isoformat()]
    assert main(["report", str(plant_file), *args, "--out", str(out), "--lang", "en"]) == 0
    page = out.read_text(encoding="utf-8")

    # Before and after: the decision's day to the period's end (one day), and one day before.
    rows = re.findall(r'<tr class="decision">(.*?)</tr>', page, re.S)
    cells = [[_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows]
    capsys.readouterr()
    before = kpi_json(capsys, plant_file, "--from", "2026-03-03", "--to", "2026-03-03",
                      "--sector", "pressing")  # fmt: skip
    after = kpi_json(capsys, plant_file, "--from", "2026-03-04", "--to", "2026-03-04",
                     "--sector", "pressing")  # fmt: skip
    plant_before = kpi_json(capsys, plant_file, "--from", "2026-03-03", "--to", "2026-03-03")
    plant_after = kpi_json(capsys, plant_file, "--from", "2026-03-04", "--to", "2026-03-04")

    def use(rows: dict[str, dict[str, Any]]) -> str:
        (row,) = rows.values()
        return percent(row["capacity_use"], "en")

    assert sorted(cells) == sorted([
        ["3/4/2026", "Se aprueba el segundo turno", "pressing", "1", use(before), use(after)],
        ["3/4/2026", "Compra de acero a la cooperativa", FACTORY, "1", use(plant_before),
         use(plant_after)],
    ])  # fmt: skip
    # Both marked on the charts: the sector's and the plant's, at the period's second day.
    assert page.count('stroke-dasharray="6,3"') == 2
    assert "Compra de acero a la cooper…" in page  # cut to fit the chart

    found = parse(page).by_id
    assert found["tickets-opened"] == "Tickets opened in the period: 2"
    assert found["tickets-resolved"] == "Tickets resolved in the period: 2"
    # Only failures' repairs: ticket 1 (3 h); ticket 2 was planned service (a meter rule).
    assert found["mttr"] == "Mean time to repair (MTTR): 3.0 hours (repairs of faults finished: 1)"
    assert found["preventive"] == "Preventive work done (run hours, cycles, calendar): 1"
    meters = re.findall(r'data-meter="([^"]+)"', page)
    assert meters == ["press-1/service"]  # press-2 at 50 % is not near
    assert "104.0%" in page and ">due<" in page
    assert re.findall(r'<ul id="drifting">\s*<li>(.*?)</li>', page) == ["lathe-1 (vibration)"]


@pytest.mark.parametrize("days", [2, 6], ids=["more-machines-than-days", "more-days"])
def test_each_machines_trend_equals_its_daily_kpis(
    plant_file: Path, influxdb: InfluxDBDatabase, days: int
) -> None:
    # The sparklines are read a day at a time for every machine, or a machine at a time for
    # every day, whichever takes fewer requests: both must give `kpis` per machine and day.
    config = load_config(plant_file)
    period = Period(START, START + dt.timedelta(days=days - 1))
    now = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    with InfluxQL(influxdb.url, influxdb.database) as db:
        trend = gather(db, config, period, compare=False, now=now).trend
        expected = {
            m.id: [
                row.totals.capacity_use
                for row in kpis(
                    db,
                    config,
                    period.start,
                    period.end + dt.timedelta(days=1),
                    by="day",
                    machines=[m.id],
                    now=now,
                )
            ]
            for m in config.machines
        }
    assert trend.machines == expected
    assert len(trend.starts) == days
    assert any(v is not None for values in expected.values() for v in values)
