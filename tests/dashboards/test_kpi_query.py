"""KPI queries against the real InfluxDB: made-up utilization minutes are written, queried by
every grouping, and the answers compared with the sums of the same points made in memory."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest

from collector.influxql import InfluxQL, QueryError
from collector.schema import Point
from collector.shifts import ShiftCalendar
from dashboards.kpi import Totals
from dashboards.kpi_query import (
    Grouping,
    KpiRow,
    SelectionError,
    Window,
    kpis,
    utilization_statement,
    windows,
)
from tests.conftest import InfluxDBDatabase
from tests.dashboards.plant import (
    MACHINES,
    ZONE,
    hourly_sums,
    local_ms,
    plant_config,
    random_minutes,
    utilization,
    write,
)

START, END = dt.date(2026, 2, 27), dt.date(2026, 3, 4)  # Friday to the Wednesday after, excluded
# Stretches of minutes around what matters: a Friday's shift change, the end of February (local
# midnight is 03:00 UTC), and Sunday into Monday morning (a new week, then a morning shift).
STRETCHES = [
    ((2026, 2, 27, 13), (2026, 2, 27, 15)),
    ((2026, 2, 28, 21), (2026, 3, 1, 1)),
    ((2026, 3, 1, 23), (2026, 3, 2, 7)),
]


def plant_points() -> list[Point]:
    points = []
    for seed, (first, last) in enumerate(STRETCHES):
        points += random_minutes(local_ms(*first), local_ms(*last), seed=seed)
    return points


def noise() -> list[Point]:
    """Points no KPI of the plant may count."""
    fields: dict[str, float | int] = {"running_s": 60.0, "planned_s": 60.0, "produced": 1000}
    inside = local_ms(2026, 3, 2, 10)
    return [
        utilization("press-1", inside, fields, factory="another-coop"),  # another plant
        utilization("ghost-1", inside, fields),  # a machine no longer in the config
        utilization("press-1", local_ms(2026, 2, 26, 23, 59), fields),  # before the span
        utilization("press-1", local_ms(2026, 3, 4), fields),  # at its end, excluded
    ]


def number(point: Point, name: str) -> float:
    value = point.fields[name]
    assert isinstance(value, int | float)
    return value


def local_date(point: Point) -> dt.date:
    return dt.datetime.fromtimestamp(point.time_ms / 1000, ZONE).date()


LABELS: dict[Grouping | None, Callable[[Point], str]] = {
    None: lambda p: "",
    "machine": lambda p: p.tags["machine"],
    "sector": lambda p: MACHINES[p.tags["machine"]][0],
    "shift": lambda p: p.tags.get("shift", ""),
    "day": lambda p: local_date(p).isoformat(),
    # Windows are clipped to the span: the first week and month start on Friday the 27th.
    "week": lambda p: max(
        local_date(p) - dt.timedelta(days=local_date(p).weekday()), START
    ).isoformat(),
    "month": lambda p: max(local_date(p).replace(day=1), START).isoformat(),
}
EXPECTED_LABELS: dict[Grouping | None, list[str]] = {
    None: [""],
    "machine": ["press-1", "press-2", "lathe-1", "oven-1"],
    "sector": ["pressing", "turning", "heat"],
    "shift": ["morning", "afternoon", ""],
    "day": ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02", "2026-03-03"],
    "week": ["2026-02-27", "2026-03-02"],
    "month": ["2026-02-27", "2026-03-01"],
}


# Calendar hours of each label for one machine, counted by hand over Friday 27 February to
# Tuesday 3 March: mornings Monday to Saturday, afternoons Monday to Friday.
CALENDAR_H: dict[Grouping | None, dict[str, float]] = {
    None: {"": 120},
    "machine": dict.fromkeys(MACHINES, 120),
    "sector": {"pressing": 120, "turning": 120, "heat": 120},
    "shift": {"morning": 4 * 8, "afternoon": 3 * 8, "": 120 - 7 * 8},
    "day": dict.fromkeys(EXPECTED_LABELS["day"], 24),
    "week": {"2026-02-27": 3 * 24, "2026-03-02": 2 * 24},
    "month": {"2026-02-27": 2 * 24, "2026-03-01": 3 * 24},
}


def members(by: Grouping | None, label: str) -> list[str]:
    """The machines a label stands for."""
    if by == "machine":
        return [label]
    if by == "sector":
        return [m for m, (sector, _, _) in MACHINES.items() if sector == label]
    return list(MACHINES)


def in_memory(
    points: Sequence[Point],
    label_of: Callable[[Point], str],
    calendar_h: dict[str, float],
    members: Callable[[str], Sequence[str]],
) -> dict[str, Totals]:
    """Each label's Totals: every machine's fields summed over the label, with its calendar
    time, then added up over the label's machines."""
    sums: dict[str, dict[str, dict[str, float]]] = {}
    for point in points:
        machine = sums.setdefault(label_of(point), {}).setdefault(point.tags["machine"], {})
        for name in point.fields:
            machine[name] = machine.get(name, 0) + number(point, name)
    return {
        label: sum(
            (
                Totals.from_row(
                    sums.get(label, {}).get(m, {}),
                    machine=m,
                    counted=MACHINES[m][2],
                    calendar_s=hours * 3600,
                )
                for m in members(label)
            ),
            Totals(),
        )
        for label, hours in calendar_h.items()
    }


def assert_same(actual: Totals, expected: Totals, label: str) -> None:
    for field in dataclasses.fields(Totals):
        got, want = getattr(actual, field.name), getattr(expected, field.name)
        if isinstance(want, frozenset):
            assert got == want, f"{label!r}: {field.name}"
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9), f"{label!r}: {field.name}"


@pytest.fixture
async def filled(influxdb: InfluxDBDatabase) -> list[Point]:
    points = plant_points()
    await write(influxdb.url, influxdb.database, points + noise())
    return points


def query(
    influxdb: InfluxDBDatabase,
    by: Grouping | None = None,
    start: dt.date | dt.datetime = START,
    end: dt.date | dt.datetime = END,
    **selection: Sequence[str] | str | dt.datetime,
) -> list[KpiRow]:
    config = plant_config(influxdb.url, influxdb.database)
    with InfluxQL(influxdb.url, influxdb.database) as db:
        return kpis(db, config, start, end, by=by, **selection)  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.parametrize("by", list(LABELS))
async def test_each_grouping_equals_the_sums_of_the_points(
    influxdb: InfluxDBDatabase, filled: list[Point], by: Grouping | None
) -> None:
    rows = query(influxdb, by)
    assert [row.label for row in rows] == EXPECTED_LABELS[by]
    expected = in_memory(filled, LABELS[by], CALENDAR_H[by], lambda label: members(by, label))
    assert set(expected) == set(EXPECTED_LABELS[by])
    for row in rows:
        assert_same(row.totals, expected[row.label], row.label)
    whole = sum((row.totals for row in rows), Totals())
    assert whole.running_s == sum(number(p, "running_s") for p in filled)
    assert whole.produced == sum(number(p, "produced") for p in filled)
    assert whole.calendar_s == 120 * 3600 * len(MACHINES)


@pytest.mark.integration
async def test_rows_carry_their_local_time_span(
    influxdb: InfluxDBDatabase, filled: list[Point]
) -> None:
    weeks = query(influxdb, "week")
    spans = [(row.start, row.end) for row in weeks]
    assert spans == [
        (dt.datetime(2026, 2, 27, tzinfo=ZONE), dt.datetime(2026, 3, 2, tzinfo=ZONE)),
        (dt.datetime(2026, 3, 2, tzinfo=ZONE), dt.datetime(2026, 3, 4, tzinfo=ZONE)),
    ]
    (whole,) = query(influxdb)
    assert (whole.start, whole.end) == (
        dt.datetime(2026, 2, 27, tzinfo=ZONE),
        dt.datetime(2026, 3, 4, tzinfo=ZONE),
    )
    # A day without data (the 3rd) has no figures, not 0 %, and all of its time is unknown.
    day = query(influxdb, "day")[-1]
    assert day.label == "2026-03-03"
    assert day.totals == Totals(calendar_s=24 * 3600 * len(MACHINES))
    assert day.totals.oee is None
    assert day.totals.capacity_use is None
    assert day.totals.unknown_share == 1.0


@pytest.mark.integration
async def test_time_to_come_is_not_counted_as_unknown(
    influxdb: InfluxDBDatabase, filled: list[Point]
) -> None:
    now = dt.datetime(2026, 3, 2, 10, 0, 30, tzinfo=ZONE)
    config = plant_config(influxdb.url, influxdb.database)
    with InfluxQL(influxdb.url, influxdb.database) as db:
        *_, monday, tuesday = kpis(db, config, START, END, by="day", machines=["press-1"], now=now)
    assert monday.totals.calendar_s == 10 * 3600  # up to the current minute
    assert monday.totals.recorded_s == 7 * 3600  # the points end at 07:00
    # Unknown: the minutes written as such, and 07:00 to 10:00, never written.
    unknown_s = sum(
        number(p, "unknown_s")
        for p in filled
        if p.tags["machine"] == "press-1" and p.time_ms >= local_ms(2026, 3, 2)
    )
    assert unknown_s > 0
    assert monday.totals.unknown_share == pytest.approx((unknown_s + 3 * 3600) / (10 * 3600))
    assert tuesday.totals == Totals()
    assert tuesday.totals.unknown_share is None


@pytest.mark.integration
async def test_capacity_use_is_judged_per_machine(
    influxdb: InfluxDBDatabase, filled: list[Point]
) -> None:
    rows = {row.label: row.totals for row in query(influxdb, "machine")}
    assert rows["press-1"].capacity_use_basis == "parts"
    assert rows["lathe-1"].capacity_use_basis == "time"
    # The oven has a rated speed, so capacity in its minutes, but no counter: time-based.
    assert rows["oven-1"].capacity > 0
    assert rows["oven-1"].capacity_use_basis == "time"
    assert rows["oven-1"].performance is None
    (plant,) = query(influxdb)
    assert plant.totals.capacity_use_basis == "parts"
    assert plant.totals.time_machines == {"lathe-1", "oven-1"}
    presses = rows["press-1"] + rows["press-2"]
    assert plant.totals.capacity_use == pytest.approx(presses.produced / presses.capacity)


@pytest.mark.integration
async def test_machines_and_sector_narrow_the_set(
    influxdb: InfluxDBDatabase, filled: list[Point]
) -> None:
    chosen = [p for p in filled if p.tags["machine"] in ("lathe-1", "oven-1")]
    rows = query(influxdb, "machine", machines=["oven-1", "lathe-1", "oven-1"])
    assert [row.label for row in rows] == ["lathe-1", "oven-1"]  # config order, once each
    calendar_h = {"lathe-1": 120.0, "oven-1": 120.0}
    expected = in_memory(chosen, LABELS["machine"], calendar_h, lambda label: [label])
    for row in rows:
        assert_same(row.totals, expected[row.label], row.label)

    (pressing,) = query(influxdb, sector="pressing")
    presses = [p for p in filled if p.tags["sector"] == "pressing"]
    expected = in_memory(presses, LABELS[None], {"": 120}, lambda _: ["press-1", "press-2"])
    assert_same(pressing.totals, expected[""], "pressing")

    rows = query(influxdb, "sector", machines=["press-2", "lathe-1"])
    assert [row.label for row in rows] == ["pressing", "turning"]
    assert rows[0].totals.calendar_s == 120 * 3600  # press-2 alone


@pytest.mark.integration
async def test_aware_and_naive_datetimes_bound_the_span(
    influxdb: InfluxDBDatabase, filled: list[Point]
) -> None:
    # 21:00 to 23:00 local on the 28th, given naive (plant time) and as UTC.
    naive = query(influxdb, "machine", dt.datetime(2026, 2, 28, 21), dt.datetime(2026, 2, 28, 23))
    utc = query(
        influxdb,
        "machine",
        dt.datetime(2026, 3, 1, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 2, tzinfo=dt.UTC),
    )
    low, high = local_ms(2026, 2, 28, 21), local_ms(2026, 2, 28, 23)
    expected = in_memory(
        [p for p in filled if low <= p.time_ms < high],
        LABELS["machine"],
        dict.fromkeys(MACHINES, 2.0),
        lambda label: [label],
    )
    for rows in (naive, utc):
        for row in rows:
            assert_same(row.totals, expected[row.label], row.label)
        assert rows[0].totals.calendar_s == 120 * 60


@pytest.mark.integration
async def test_an_empty_database_gives_no_figures_but_unknown_time(
    influxdb: InfluxDBDatabase,
) -> None:
    influxdb.create()
    rows = query(influxdb, "machine")
    assert [row.label for row in rows] == list(MACHINES)
    for row in rows:
        assert row.totals == Totals(calendar_s=120 * 3600)
        assert row.totals.unknown_share == 1.0
        assert row.totals.capacity_use_basis is None
        assert [row.totals.availability, row.totals.oee, row.totals.capacity_use] == [None] * 3
    shifts = query(influxdb, "shift")
    assert [row.label for row in shifts] == ["morning", "afternoon", ""]
    assert [row.totals.calendar_s / 3600 / len(MACHINES) for row in shifts] == [32, 24, 64]
    # A change of shifts in force during the span brings its shifts along.
    # A change of shifts in force during the span brings its shifts along (and replaces the
    # usual week's: on Monday 7 December only the night from 22:00 is a shift).
    later = dt.datetime(2027, 1, 1, tzinfo=ZONE)
    december = query(influxdb, "shift", dt.date(2026, 12, 7), dt.date(2026, 12, 8), now=later)
    assert [row.label for row in december] == ["morning", "afternoon", "night", ""]
    assert [row.totals.calendar_s / 3600 / len(MACHINES) for row in december] == [0, 0, 2, 22]


@pytest.mark.integration
async def test_more_windows_than_one_request_holds(influxdb: InfluxDBDatabase) -> None:
    fields: dict[str, float | int] = {"running_s": 60.0, "planned_s": 60.0, "produced": 3}
    late = [
        utilization("press-1", local_ms(2026, 9, 30, 23, 59), fields),
        utilization("press-1", local_ms(2026, 10, 1, 0, 0), fields),
    ]
    await write(influxdb.url, influxdb.database, late)
    rows = query(influxdb, "day", dt.date(2026, 1, 1), dt.date(2026, 11, 1))
    assert len(rows) == 304
    counted = {row.label: row.totals.produced for row in rows if row.totals.produced}
    assert counted == {"2026-09-30": 3, "2026-10-01": 3}


class OneStatementPerRequest(httpx.BaseTransport):
    """The real InfluxDB behind a front that, like InfluxDB 3's v1 API, runs one statement per
    request: it refuses requests of several, or answers only their first."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.statements: list[int] = []
        self._real = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.read().decode())
        statements = form["q"][0].split(";\n")
        self.statements.append(len(statements))
        if len(statements) > 1:
            if self.refuse:
                return httpx.Response(400, json={"error": "only one statement per query"})
            form["q"] = [statements[0]]
            request = httpx.Request(
                request.method,
                request.url,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                content=urlencode(form, doseq=True).encode(),
            )
        return self._real.handle_request(request)

    def close(self) -> None:
        self._real.close()


@pytest.mark.integration
@pytest.mark.parametrize("refuse", [True, False], ids=["refused", "dropped"])
async def test_a_server_of_one_statement_per_request_gets_them_one_by_one(
    influxdb: InfluxDBDatabase, filled: list[Point], refuse: bool
) -> None:
    config = plant_config(influxdb.url, influxdb.database)
    front = OneStatementPerRequest(refuse)
    with InfluxQL(influxdb.url, influxdb.database, transport=front) as db:
        rows = kpis(db, config, START, END, by="day")
    assert front.statements == [5, 1, 1, 1, 1, 1]
    assert rows == query(influxdb, "day")


@pytest.mark.integration
async def test_a_retention_policy_of_the_config_is_read(influxdb: InfluxDBDatabase) -> None:
    influxdb.create()
    policy = 'short "term"'
    influxdb.server.query(
        f'CREATE RETENTION POLICY "short \\"term\\"" ON "{influxdb.database}" '
        "DURATION INF REPLICATION 1",
        method="POST",
    )
    fields: dict[str, float | int] = {"running_s": 30.0, "idle_s": 30.0, "planned_s": 60.0}
    from collector.sinks.influxdb import InfluxDBSink

    async with InfluxDBSink(
        url=influxdb.url, database=influxdb.database, retention_policy=policy
    ) as sink:
        minute = utilization("lathe-1", local_ms(2026, 3, 2, 9), fields)
        await sink.write([minute, *hourly_sums([minute])])
    config = plant_config(influxdb.url, influxdb.database)
    config = config.model_copy(
        update={
            "influxdb": config.influxdb.model_copy(
                update={"retention_policy": policy, "rollup_retention_policy": None}
            )
        }
    )
    with InfluxQL(influxdb.url, influxdb.database) as db:
        (row,) = kpis(db, config, START, END, machines=["lathe-1"])
    assert row.totals.running_s == 30
    assert row.totals.availability == 0.5
    (default,) = query(influxdb, machines=["lathe-1"])
    assert default.totals.running_s == 0  # nothing in the default policy


@pytest.mark.integration
def test_a_missing_database_is_a_query_error(influxdb: InfluxDBDatabase) -> None:
    with pytest.raises(QueryError, match="database not found"):
        query(influxdb)
    with pytest.raises(QueryError, match="database not found"):
        query(influxdb, "day")  # five statements: the error is the first one's, alone


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (
            {"machines": ["press-9"]},
            "unknown machine(s) press-9; the config has press-1, press-2, lathe-1, oven-1",
        ),
        ({"sector": "paint"}, "unknown sector paint; the config has pressing, turning, heat"),
        (
            {"machines": ["press-1"], "sector": "turning"},
            "none of the machines press-1 is in turning",
        ),
        ({"by": "year"}, "cannot group by 'year'; choose one of machine, sector, shift, day, "),
        ({"end": START}, "the span is empty: 2026-02-27 is not before 2026-02-27"),
    ],
)
def test_a_selection_the_config_cannot_meet(selection: dict[str, object], message: str) -> None:
    config = plant_config()
    # No server at all: the selection is refused before any query is sent.
    with InfluxQL("http://127.0.0.1:9", "none") as db:
        arguments: dict[str, object] = {"start": START, "end": END} | selection
        with pytest.raises(SelectionError) as caught:
            kpis(db, config, **arguments)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def calendar(zone: str = "America/Argentina/Buenos_Aires") -> ShiftCalendar:
    return ShiftCalendar(plant_config().calendar, zone)


def at(zone: str, year: int, month: int, day: int, hour: int = 0) -> int:
    return round(dt.datetime(year, month, day, hour, tzinfo=ZoneInfo(zone)).timestamp() * 1000)


HOUR = 3_600_000


def test_days_follow_the_plants_clock_across_a_dst_change() -> None:
    zone = "Europe/Madrid"  # clocks go forward on 29 March 2026
    cut = windows(calendar(zone), at(zone, 2026, 3, 28), at(zone, 2026, 3, 31), "day")
    assert [w.label for w in cut] == ["2026-03-28", "2026-03-29", "2026-03-30"]
    assert [(w.end_ms - w.start_ms) // HOUR for w in cut] == [24, 23, 24]
    assert cut[0].start_ms == round(dt.datetime(2026, 3, 27, 23, tzinfo=dt.UTC).timestamp() * 1000)


def test_weeks_start_on_monday_and_months_roll_over_the_year() -> None:
    zone = "America/Argentina/Buenos_Aires"
    start, end = at(zone, 2026, 12, 17, 12), at(zone, 2027, 1, 6)  # a Thursday noon to a Wed.
    weeks = windows(calendar(), start, end, "week")
    assert [w.label for w in weeks] == ["2026-12-17", "2026-12-21", "2026-12-28", "2027-01-04"]
    assert weeks[0] == Window("2026-12-17", start, at(zone, 2026, 12, 21))
    assert weeks[-1] == Window("2027-01-04", at(zone, 2027, 1, 4), end)
    months = windows(calendar(), start, end, "month")
    assert months == [
        Window("2026-12-17", start, at(zone, 2027, 1, 1)),
        Window("2027-01-01", at(zone, 2027, 1, 1), end),
    ]
    assert windows(calendar(), start, end, None) == [Window("", start, end)]
    assert windows(calendar(), start, end, "machine") == [Window("", start, end)]


def test_the_statement_is_portable_influxql() -> None:
    config = plant_config()
    window = Window("", 1_000, 2_000)
    statement = utilization_statement(config, ["press-2", "press-1"], window, by_shift=True)
    sums = ", ".join(
        f'sum("{f}") AS "{f}"'
        for f in (
            "planned_s",
            "running_s",
            "idle_s",
            "down_s",
            "off_s",
            "unknown_s",
            "produced",
            "rejected",
            "capacity",
            "running_capacity",
            "micro_stops",
        )
    )
    assert statement == (
        f'SELECT {sums} FROM "utilization" WHERE time >= 1000000000 AND time < 2000000000 '
        'AND "factory" = \'coop-test\' AND "machine" =~ /^(press-1|press-2)$/ '
        'GROUP BY "machine", "shift"'
    )


@pytest.mark.integration
async def test_hours_come_from_the_hourly_sums_and_the_recent_ones_from_minutes(
    influxdb: InfluxDBDatabase, filled: list[Point]
) -> None:
    # The same answer from minutes alone, from hourly sums, and from both around odd edges.
    for by in ("day", "shift", "machine"):
        config = plant_config(influxdb.url, influxdb.database)
        start, end = dt.datetime(2026, 3, 2, 7, 30), dt.datetime(2026, 3, 4, 16, 45)
        with InfluxQL(influxdb.url, influxdb.database) as db:
            both = kpis(db, config, start, end, by=by)  # type: ignore[arg-type]
            minutes = kpis(db, config, start, end, by=by, hourly=False)  # type: ignore[arg-type]
        assert [r.label for r in both] == [r.label for r in minutes]
        for a, b in zip(both, minutes, strict=True):
            assert_same(a.totals, b.totals, a.label)
    # An hour not yet settled is read from its minutes: a wrong hourly sum there is not seen.
    recent = dt.datetime(2026, 3, 2, 10, 0, tzinfo=ZONE)
    wrong = utilization("lathe-1", local_ms(2026, 3, 2, 9), {"produced": 10_000})
    wrong = Point("utilization_1h", wrong.tags, wrong.fields, wrong.time_ms)
    await write(influxdb.url, influxdb.database, [wrong], hourly=False)
    with InfluxQL(influxdb.url, influxdb.database) as db:
        settled = kpis(db, config, START, recent, now=recent + dt.timedelta(minutes=20))
        unsettled = kpis(db, config, START, recent, now=recent + dt.timedelta(minutes=5))
    assert settled[0].totals.produced - unsettled[0].totals.produced == pytest.approx(
        10_000
        - sum(
            number(p, "produced")
            for p in filled
            if p.tags["machine"] == "lathe-1"
            and local_ms(2026, 3, 2, 9) <= p.time_ms < local_ms(2026, 3, 2, 10)
        )
    )


@pytest.mark.integration
async def test_whole_days_come_from_the_daily_sums(
    influxdb: InfluxDBDatabase, filled: list[Point]
) -> None:
    config = plant_config(influxdb.url, influxdb.database)
    with InfluxQL(influxdb.url, influxdb.database) as db:
        before = kpis(db, config, START, END, by="day")
    # A daily sum that disagrees with its minutes shows: the day was read from it.
    midnight = local_ms(2026, 3, 2)
    wrong = utilization("lathe-1", midnight, {"produced": 99_999})
    wrong = Point("utilization_1d", wrong.tags, wrong.fields, midnight)
    await write(influxdb.url, influxdb.database, [wrong], hourly=False)
    with InfluxQL(influxdb.url, influxdb.database) as db:
        after = kpis(db, config, START, END, by="day")
        minutes = kpis(db, config, START, END, by="day", hourly=False)
    changed = [a.label for a, b in zip(after, before, strict=True) if a.totals != b.totals]
    assert changed == ["2026-03-02"]
    for from_minutes, from_sums in zip(minutes, before, strict=True):
        assert_same(from_sums.totals, from_minutes.totals, from_sums.label)
