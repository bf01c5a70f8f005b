"""Importing paper records: reading CSV as Excel writes it, checking every row, splitting counts
over minutes, the minutes of machines without sensors, and writing in batches."""

from __future__ import annotations

import datetime as dt
import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

import collector.importer
from collector.config import LANGUAGES, Config, load_config
from collector.importer import (
    ImportFile,
    ImportInterrupted,
    ImportRejected,
    ProgressBar,
    TimeProblem,
    parse_count,
    parse_import,
    parse_local_time,
    plan_import,
    read_import,
    split_count,
    write_import,
)
from collector.schema import STOP, UTILIZATION, UTILIZATION_SECONDS, Point
from collector.sinks import RetryableWriteError
from collector.sinks.memory import MemorySink

GOLDEN = Path(__file__).parent.parent / "golden" / "import"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
ZONE = ZoneInfo("America/Argentina/Buenos_Aires")


def local_ms(text: str, zone: ZoneInfo = ZONE) -> int:
    return round(dt.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp() * 1000)


NOW = local_ms("2026-11-25T12:00")


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(GOLDEN / "factory.yaml", environ={})


def parse(text: str, config: Config) -> ImportFile:
    return parse_import(text, config, source="rows.csv", now_ms=NOW)


def problems(text: str, config: Config) -> list[str]:
    with pytest.raises(ImportRejected) as caught:
        parse(text, config)
    return [p.text("en", "rows.csv") for p in caught.value.problems]


# -- golden cases: the exact text a user reads -----------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, config: Config) -> None:
    folder = GOLDEN / case
    expected = sorted(folder.glob("expected*.txt"))
    assert expected, f"{case}: no expected.txt"
    with pytest.raises(ImportRejected) as caught:
        read_import(folder / "rows.csv", config, now_ms=NOW)
    for path in expected:
        suffix = path.name.removeprefix("expected").removesuffix(".txt").lstrip(".")
        language = next(lang for lang in LANGUAGES if lang == (suffix or "en"))
        text = "\n".join(p.text(language, "rows.csv") for p in caught.value.problems)
        assert text + "\n" == path.read_text(encoding="utf-8"), f"{case} ({language})"


def test_a_missing_file_is_one_problem(config: Config, tmp_path: Path) -> None:
    with pytest.raises(ImportRejected) as caught:
        read_import(tmp_path / "nowhere.csv", config, now_ms=NOW)
    (problem,) = caught.value.problems
    assert problem.text("en", "nowhere.csv") == (
        "nowhere.csv: cannot read the file: No such file or directory"
    )


# -- cells -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "local"),
    [
        ("2026-10-03 06:00", "2026-10-03T06:00"),
        ("2026-10-03 6:05:07", "2026-10-03T06:05:07"),
        ("2026-10-03T06:00:00", "2026-10-03T06:00"),
        ("2026-10-03 06:00:00,250", "2026-10-03T06:00:00.250"),
        ("03/10/2026 06:00", "2026-10-03T06:00"),  # day first, as in Argentina and Brazil
        ("3/10/2026 06:00:30", "2026-10-03T06:00:30"),
    ],
)
def test_local_times_are_read_in_the_plant_zone(text: str, local: str) -> None:
    assert parse_local_time(text, ZONE) == local_ms(local)


def test_an_offset_or_z_wins_over_the_plant_zone() -> None:
    utc = round(dt.datetime(2026, 10, 3, 9, 0, tzinfo=dt.UTC).timestamp() * 1000)
    assert parse_local_time("2026-10-03T09:00Z", ZONE) == utc
    assert parse_local_time("2026-10-03T07:00-02:00", ZONE) == utc
    assert parse_local_time("2026-10-03 06:00 -0300", ZONE) == utc


@pytest.mark.parametrize("text", ["2026-10-03", "yesterday", "2026-02-30 06:00", "06:00"])
def test_text_that_is_no_date_time_is_refused(text: str) -> None:
    with pytest.raises(TimeProblem) as caught:
        parse_local_time(text, ZONE)
    assert caught.value.key == "import.problem.bad_time"


def test_local_times_the_clocks_skip_or_repeat_are_refused() -> None:
    zone = ZoneInfo("America/New_York")
    with pytest.raises(TimeProblem) as skipped:
        parse_local_time("2026-03-08 02:30", zone)
    assert str(skipped.value) == (
        "2026-03-08 02:30 does not exist in America/New_York: the clocks jumped forward then"
    )
    with pytest.raises(TimeProblem) as twice:
        parse_local_time("2026-11-01 01:30", zone)
    assert str(twice.value) == (
        "2026-11-01 01:30 happens twice in America/New_York (the clocks went back): write it "
        "with its UTC offset, e.g. 2026-11-01T01:30-04:00"
    )
    assert (
        parse_local_time("2026-11-01T01:30-05:00", zone)
        - parse_local_time("2026-11-01T01:30-04:00", zone)
        == 3_600_000
    )


@pytest.mark.parametrize(
    ("text", "count"), [("1200", 1200), (" 7 ", 7), ("1200,0", 1200), ("1200.00", 1200), ("0", 0)]
)
def test_counts_accept_a_decimal_comma_or_point_with_no_fraction(text: str, count: int) -> None:
    assert parse_count(text) == count


# -- splitting counts over minutes ---------------------------------------------------------------


def test_largest_remainder_gives_the_leftovers_to_the_largest_fractions() -> None:
    assert split_count(10, [1, 1, 1]) == [4, 3, 3]  # ties go to the earliest
    assert split_count(7, [30, 60, 10]) == [2, 4, 1]  # quotas 2.1, 4.2, 0.7
    assert split_count(0, [5, 5]) == [0, 0]
    assert split_count(5, [0, 1]) == [0, 5]


def test_caps_keep_each_share_under_its_cap() -> None:
    # Unconstrained, 4 rejects over these minutes would be [2, 1, 1]: one in a minute that made
    # none. Capped, that one goes to the next largest remainder with room (quotas 2.34, 0.41,
    # 1.24).
    produced = split_count(5, [51, 9, 27])
    assert produced == [3, 0, 2]
    assert split_count(4, [51, 9, 27]) == [2, 1, 1]
    assert split_count(4, [51, 9, 27], caps=produced) == [3, 0, 1]


@given(
    count=st.integers(0, 10_000),
    weights=st.lists(st.integers(0, 60_000), min_size=1, max_size=50).filter(lambda w: sum(w)),
)
def test_shares_add_up_exactly_and_stay_within_one_of_their_quota(
    count: int, weights: list[int]
) -> None:
    shares = split_count(count, weights)
    assert sum(shares) == count
    total = sum(weights)
    for share, weight in zip(shares, weights, strict=True):
        assert abs(share * total - count * weight) < total


@given(
    produced=st.integers(0, 500),
    data=st.data(),
    weights=st.lists(st.integers(1, 60_000), min_size=1, max_size=30),
)
def test_rejects_split_within_each_minutes_parts(
    produced: int, data: st.DataObject, weights: list[int]
) -> None:
    rejected = data.draw(st.integers(0, produced))
    made = split_count(produced, weights)
    rejects = split_count(rejected, weights, caps=made)
    assert sum(rejects) == rejected
    assert all(r <= p for r, p in zip(rejects, made, strict=True))


# -- layouts as Excel writes them ---------------------------------------------------------------


def test_semicolons_bom_and_decimal_comma_as_excel_in_spanish_writes_them(config: Config) -> None:
    text = (
        "\ufeffMachine;Start;End;Produced;Rejected\r\n"
        "press-1;05/10/2026 06:00;05/10/2026 07:00;1200,0;3\r\n"
        ";;;;\r\n"
    )
    parsed = parse(text, config)
    assert parsed.layout == "production"
    (row,) = parsed.production
    assert (row.line, row.machine, row.produced, row.rejected) == (2, "press-1", 1200, 3)
    assert (row.start_ms, row.end_ms) == (
        local_ms("2026-10-05T06:00"),
        local_ms("2026-10-05T07:00"),
    )


def test_columns_in_any_order_and_reasons_by_name_in_any_language(config: Config) -> None:
    text = (
        "reason,end,machine,start\n"
        "BREAKDOWN,2026-10-05 07:00,oven-1,2026-10-05 06:00\n"
        "falta de matéria-prima,2026-10-05 08:00,oven-1,2026-10-05 07:00\n"
        '"Preparación / cambio de matriz",2026-10-05 09:00,oven-1,2026-10-05 08:00\n'
    )
    parsed = parse(text, config)
    assert parsed.layout == "stops"
    assert [s.reason.id for s in parsed.stops] == ["breakdown", "no_material", "setup"]


def test_rejected_is_optional(config: Config) -> None:
    parsed = parse(
        "machine,start,end,produced\noven-1,2026-10-05 06:00,2026-10-05 07:00,5\n", config
    )
    assert parsed.production[0].rejected is None


def test_a_combined_file_holds_production_and_stops(config: Config) -> None:
    parsed = parse(PAPER_DAY, config)
    assert parsed.layout == "combined"
    assert [r.line for r in parsed.production] == [2]
    assert [s.line for s in parsed.stops] == [3, 4, 5]


def test_every_problem_of_the_file_is_reported_in_line_order(config: Config) -> None:
    text = (
        "machine,start,end,reason\n"
        "oven-1,2026-10-05 06:00,2026-10-05 07:00,breakdown\n"
        "oven-9,2026-10-05 06:00,2026-10-05 05:00,broken\n"
        "oven-1,2026-10-05 06:30,2026-12-05 07:00,setup\n"
    )
    assert problems(text, config) == [
        "rows.csv:3: column machine: 'oven-9' is not a machine in the config (did you mean "
        "'oven-1'?)",
        "rows.csv:3: column end: 2026-10-05 05:00 is not after start (2026-10-05 06:00)",
        "rows.csv:3: column reason: 'broken' is not a stop reason; use one of: no_material (No "
        "raw material), no_orders (No orders), breakdown (Breakdown), waiting_maintenance "
        "(Waiting for maintenance), no_operator (No operator), power_cut (Power cut), setup "
        "(Setup / changeover), planned_maintenance (Planned maintenance), assembly (Assembly / "
        "meeting), other (Other)",
        "rows.csv:4: column end: 2026-12-05 07:00 is in the future (it is 2026-11-25 12:00 at "
        "the plant)",
    ]


def test_warnings_do_not_stop_an_import(config: Config) -> None:
    text = (
        "machine,start,end,produced,reason\n"
        "oven-1,2026-10-05 06:00,2026-10-05 07:00,1500,\n"
        "press-1,2026-10-05 08:00,2026-10-05 09:00,,breakdown\n"
        "mixer-1,2026-10-05 06:00,2026-10-05 07:00,10,\n"
    )
    parsed = parse(text, config)
    assert [w.text("en", "rows.csv") for w in parsed.warnings] == [
        "rows.csv: oven-1 has no sensors and this file gives no stops for it: all planned time "
        "of its minutes counts as running",
        "rows.csv: mixer-1 has no sensors and this file gives no stops for it: all planned time "
        "of its minutes counts as running",
        "rows.csv: press-1 has sensors: the collector records its stops itself; these are "
        "stored beside them",
        "rows.csv:2: column produced: 1500 parts in 1:00:00 is more than twice oven-1's rated "
        "speed (600/h): check the number",
    ]


# -- the points -----------------------------------------------------------------------------------

# A paper-only oven on a Monday: shifts 06:00-14:00 (break 10:00-10:20) and 14:00-22:00.
PAPER_DAY = (
    "machine,start,end,produced,rejected,reason\n"
    "oven-1,2026-10-05 06:00,2026-10-05 14:00,3999,7,\n"
    "oven-1,2026-10-05 09:50,2026-10-05 10:40,,,breakdown\n"  # 20 min of it in the break
    "oven-1,2026-10-05 13:30:30,2026-10-05 14:30,,,no_orders\n"  # into the afternoon shift
    "oven-1,2026-10-05 21:50,2026-10-05 22:10:30,,,power_cut\n"  # past the last shift
)
STATES = [f for f in UTILIZATION_SECONDS if f != "planned_s"]


def utilization(points: list[Point] | tuple[Point, ...]) -> dict[int, Point]:
    return {p.time_ms: p for p in points if p.measurement == UTILIZATION}


def test_counts_add_up_to_the_rows_exactly(config: Config) -> None:
    plan = plan_import(parse(PAPER_DAY, config), config)
    minutes = utilization(plan.points)
    assert sum(int(p.fields.get("produced", 0)) for p in minutes.values()) == 3999
    assert sum(int(p.fields.get("rejected", 0)) for p in minutes.values()) == 7
    for point in minutes.values():
        assert int(point.fields.get("rejected", 0)) <= int(point.fields.get("produced", 0))


def test_a_paper_machines_minutes_are_whole_and_add_up_to_60_seconds(config: Config) -> None:
    plan = plan_import(parse(PAPER_DAY, config), config)
    minutes = utilization(plan.points)
    # 06:00-14:30 (the production row and the stop that runs past it), 21:50-22:10.
    assert len(minutes) == 510 + 21
    for point in minutes.values():
        assert sum(float(point.fields[f]) for f in STATES) == 60.0
        assert point.fields["unknown_s"] == 0.0
        assert point.fields["capacity"] == 10.0  # 600 parts an hour
        assert point.fields["micro_stops"] == 0

    def seconds(local: str) -> list[float]:
        """planned, running, idle, down, off."""
        point = minutes[local_ms(local)]
        return [float(point.fields[f]) for f in UTILIZATION_SECONDS[:5]]

    assert seconds("2026-10-05T09:00") == [60, 60, 0, 0, 0]
    # A breakdown (category machine) is down time; in the break it loses no planned time.
    assert seconds("2026-10-05T09:55") == [60, 0, 0, 60, 0]
    assert seconds("2026-10-05T10:05") == [0, 0, 0, 60, 0]
    # No orders (category demand) is idle time; the stop begins 30 s into the minute.
    assert seconds("2026-10-05T13:30") == [60, 30, 30, 0, 0]
    assert seconds("2026-10-05T14:10") == [60, 0, 60, 0, 0]
    # A power cut (category other) past the last shift; the plant is off after it.
    assert seconds("2026-10-05T21:59") == [60, 0, 60, 0, 0]
    assert seconds("2026-10-05T22:05") == [0, 0, 60, 0, 0]
    assert seconds("2026-10-05T22:10") == [0, 0, 30, 0, 30]
    assert minutes[local_ms("2026-10-05T13:30")].fields["running_capacity"] == 5.0
    # Minutes of a stop only carry no counts: the file says nothing about them.
    assert "produced" not in minutes[local_ms("2026-10-05T14:10")].fields
    assert "produced" in minutes[local_ms("2026-10-05T13:59")].fields


def test_stop_points_carry_the_planned_time_they_lost(config: Config) -> None:
    plan = plan_import(parse(PAPER_DAY, config), config)
    stops = {p.time_ms: p for p in plan.points if p.measurement == STOP}
    breakdown = stops[local_ms("2026-10-05T09:50")]
    assert breakdown.tags == {"factory": "coop-golden", "sector": "bakery", "machine": "oven-1"}
    assert breakdown.fields == {
        "duration_s": 3000.0,
        "lost_s": 1800.0,  # 50 minutes, 20 of them in the break
        "state": "down",
        "open": False,
        "micro": False,
        "reason": "breakdown",
    }
    power_cut = stops[local_ms("2026-10-05T21:50")]
    assert (power_cut.fields["state"], power_cut.fields["duration_s"]) == ("idle", 1230.0)
    assert power_cut.fields["lost_s"] == 600.0


def test_minutes_crossing_a_shift_boundary_get_their_own_shift(config: Config) -> None:
    text = (
        "machine,start,end,produced\n"
        "press-1,2026-10-05 13:58:30,2026-10-05 14:01:30,180\n"
        "press-1,2026-10-05 21:59,2026-10-05 22:01,120\n"
    )
    minutes = utilization(plan_import(parse(text, config), config).points)
    shifts = {t: p.tags.get("shift") for t, p in minutes.items()}
    assert shifts == {
        local_ms("2026-10-05T13:58"): "morning",
        local_ms("2026-10-05T13:59"): "morning",
        local_ms("2026-10-05T14:00"): "afternoon",
        local_ms("2026-10-05T14:01"): "afternoon",
        local_ms("2026-10-05T21:59"): "afternoon",
        local_ms("2026-10-05T22:00"): None,  # outside every shift: no tag at all
    }
    assert "shift" not in minutes[local_ms("2026-10-05T22:00")].tags
    produced = {t: p.fields["produced"] for t, p in minutes.items()}
    assert list(produced.values()) == [30, 60, 60, 30, 60, 60]


def test_a_machine_with_sensors_gets_counts_only(config: Config) -> None:
    text = "machine,start,end,produced\npress-1,2026-10-05 06:00,2026-10-05 06:02,7\n"
    points = plan_import(parse(text, config), config).points
    assert [p.fields for p in points] == [{"produced": 4}, {"produced": 3}]
    assert points[0].tags == {
        "factory": "coop-golden",
        "sector": "pressing",
        "machine": "press-1",
        "shift": "morning",
    }


def test_rows_sharing_a_minute_add_their_counts(config: Config) -> None:
    text = (
        "machine,start,end,produced,rejected\n"
        "press-1,2026-10-05 06:00,2026-10-05 06:00:30,5,1\n"
        "press-1,2026-10-05 06:00:30,2026-10-05 06:01,6,2\n"
    )
    (point,) = plan_import(parse(text, config), config).points
    assert point.fields == {"produced": 11, "rejected": 3}


def test_a_plan_is_the_same_every_time(config: Config) -> None:
    first = plan_import(parse(PAPER_DAY, config), config)
    again = plan_import(parse(PAPER_DAY, config), config)
    assert first.points == again.points


# -- writing -------------------------------------------------------------------------------------


async def test_points_are_written_in_batches_with_progress(config: Config) -> None:
    plan = plan_import(parse(PAPER_DAY, config), config)
    sink = MemorySink()
    seen: list[tuple[int, int]] = []
    async with sink:
        await write_import(plan, sink, batch_size=200, progress=lambda d, t: seen.append((d, t)))
    assert [len(b) for b in sink.batches] == [200, 200, 134]
    assert sink.points == list(plan.points)
    assert seen == [(200, 534), (400, 534), (534, 534)]


async def test_a_failed_write_stops_and_says_which_rows_are_in(config: Config) -> None:
    text = "machine,start,end,produced\n" + "".join(
        f"press-1,2026-10-05 {h:02d}:00,2026-10-05 {h:02d}:59,59\n" for h in range(6, 12)
    )
    plan = plan_import(parse(text, config), config)
    sink = MemorySink()
    async with sink:
        with pytest.raises(ImportInterrupted) as caught:
            await write_import(plan, _FailOnBatch(sink, 3), batch_size=100)
    # 59 minutes a row: 200 points hold the first three rows whole.
    assert caught.value.points_written == 200
    assert caught.value.rows_written == 3
    assert str(caught.value.cause) == "InfluxDB down"


class _FailOnBatch:
    def __init__(self, sink: MemorySink, failing: int) -> None:
        self.sink = sink
        self.failing = failing
        self.calls = 0

    async def write(self, points: Sequence[Point]) -> None:
        self.calls += 1
        if self.calls == self.failing:
            raise RetryableWriteError("InfluxDB down")
        await self.sink.write(points)

    async def __aenter__(self) -> _FailOnBatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, "writing", width=10, tty=True)
    bar(5, 20)
    bar(20, 20)
    bar.close()
    assert stream.getvalue() == (
        "\rwriting [##........]  25 % 5/20\rwriting [##########] 100 % 20/20\n"
    )


def test_progress_elsewhere_is_one_line_per_ten_percent() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, "writing", tty=False)
    for done in (5, 10, 15, 100, 120, 200):
        bar(done, 200)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "writing: 50 % (100/200)",
        "writing: 60 % (120/200)",
        "writing: 100 % (200/200)",
    ]


def test_public_names_are_exported() -> None:
    public = {
        name
        for name, value in vars(collector.importer).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == "collector.importer"
    }
    assert public <= set(collector.importer.__all__)


def test_totals_per_machine(config: Config) -> None:
    plan = plan_import(parse(PAPER_DAY, config), config)
    (oven,) = plan.machines
    assert (oven.machine, oven.sensors, oven.minutes, oven.stops) == ("oven-1", False, 531, 3)
    assert (oven.produced, oven.rejected) == (3999, 7)
    counted: dict[str, int] = defaultdict(int)
    for point in plan.points:
        counted[point.measurement] += 1
    assert counted == {UTILIZATION: 531, STOP: 3}
