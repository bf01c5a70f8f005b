"""KPI arithmetic: published OEE worked examples rebuilt as utilization minutes, capacity use with
and without a part counter, sets mixing both, and every ratio whose denominator is 0."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboards.kpi import RATIOS, Totals

Row = dict[str, float]


def minute(state: str, *, planned: bool, capacity: float = 0, **counts: float) -> Row:
    """One machine-minute: 60 s in one state."""
    row: Row = {f"{s}_s": 0 for s in ("running", "idle", "down", "off", "unknown")}
    row[f"{state}_s"] = 60
    row["planned_s"] = 60 if planned or state == "running" else 0
    row["capacity"] = capacity
    row["running_capacity"] = capacity if state == "running" else 0
    return row | counts


def spread(total: int, slots: int) -> list[int]:
    """`total` parts spread as evenly as whole parts go over `slots` minutes."""
    each, extra = divmod(total, slots)
    return [each + 1 if i < extra else each for i in range(slots)]


def shift(
    *,
    breaks: int,
    down: int,
    running: int,
    per_minute_at_rated: float,
    produced: int,
    rejected: int,
) -> list[Row]:
    """A shift as the collector would roll it up: breaks (not planned), stops, running minutes."""
    rows = [minute("idle", planned=False, capacity=per_minute_at_rated) for _ in range(breaks)]
    rows += [minute("down", planned=True, capacity=per_minute_at_rated) for _ in range(down)]
    made, bad = spread(produced, running), spread(rejected, running)
    rows += [
        minute(
            "running",
            planned=True,
            capacity=per_minute_at_rated,
            produced=made[i],
            rejected=bad[i],
        )
        for i in range(running)
    ]
    return rows


def total(rows: Iterable[Row], machine: str | None = "m", counted: bool = True) -> Totals:
    return sum((Totals.from_row(r, machine=machine, counted=counted) for r in rows), Totals())


def pct(ratio: float | None) -> float:
    assert ratio is not None
    return ratio * 100


# (source, shift, published availability, performance, quality, OEE in %)
PUBLISHED = [
    pytest.param(
        # OEE.com (Vorne) "Calculate OEE": 480 min shift, two 15 min breaks and a 30 min meal,
        # 47 min down, ideal cycle 1.0 s, 19,271 made, 423 rejected.
        dict(breaks=60, down=47, running=373, per_minute_at_rated=60, produced=19271, rejected=423),
        (88.81, 86.11, 97.81, 74.79),
        id="oee.com",
    ),
    pytest.param(
        # Wikipedia, "Overall equipment effectiveness": 480 min shift, 30 min break, 60 min
        # unscheduled downtime, standard rate 40 units/min, 14,400 made, 420 defective.
        dict(breaks=30, down=60, running=390, per_minute_at_rated=40, produced=14400, rejected=420),
        (86.67, 92.31, 97.08, 77.67),
        id="wikipedia",
    ),
    pytest.param(
        # A calculator's example: 480 min planned, 420 min run, ideal cycle 1 min, 400 made,
        # 380 good.
        dict(breaks=0, down=60, running=420, per_minute_at_rated=1, produced=400, rejected=20),
        (87.5, 95.2, 95.0, 79.1),
        id="1-minute-cycle",
    ),
]


@pytest.mark.parametrize(("example", "published"), PUBLISHED)
def test_published_oee_examples(example: dict[str, int], published: tuple[float, ...]) -> None:
    totals = total(shift(**example))
    availability, performance, quality, oee = published
    assert pct(totals.availability) == pytest.approx(availability, abs=0.1)
    assert pct(totals.performance) == pytest.approx(performance, abs=0.1)
    assert pct(totals.quality) == pytest.approx(quality, abs=0.1)
    assert pct(totals.oee) == pytest.approx(oee, abs=0.1)


def test_vorne_example_sums() -> None:
    totals = total(shift(**PUBLISHED[0].values[0]))  # type: ignore[arg-type]
    assert totals.planned_s == 420 * 60
    assert totals.running_s == 373 * 60
    assert totals.down_s == 47 * 60
    assert totals.produced == 19271
    assert totals.rejected == 423
    assert totals.running_capacity == 373 * 60
    assert totals.calendar_s == 480 * 60


def test_capacity_use_with_a_counter_is_parts_over_capacity() -> None:
    # 1200 parts/h for a whole day: 28,800 parts of capacity; 10,080 made = 35 %.
    day = shift(breaks=0, down=0, running=1440, per_minute_at_rated=20, produced=10080, rejected=0)
    totals = total(day)
    assert totals.capacity == 28800
    assert totals.capacity_use_basis == "parts"
    assert pct(totals.capacity_use) == pytest.approx(35.0)
    assert totals.time_based_machines == 0
    assert totals.parts_machines == {"m"}


def test_capacity_use_without_a_counter_is_time_based() -> None:
    # No counter, no rated speed: 504 of 1440 minutes running = 35 % of calendar time.
    day = [minute("running", planned=True) for _ in range(504)]
    day += [minute("off", planned=False) for _ in range(936)]
    totals = total(day, counted=False)
    assert totals.capacity_use_basis == "time"
    assert pct(totals.capacity_use) == pytest.approx(35.0)
    assert pct(totals.time_based_use) == pytest.approx(35.0)
    assert totals.time_based_machines == 1
    assert totals.performance is None  # not a fake 0 %
    assert totals.quality is None
    assert totals.oee is None
    assert totals.availability == 1.0


def test_a_rated_speed_without_a_counter_is_still_time_based() -> None:
    # The collector writes capacity from the rated speed, but no part is ever counted.
    day = [minute("running", planned=True, capacity=20) for _ in range(30)]
    day += [minute("idle", planned=True, capacity=20) for _ in range(90)]
    totals = total(day, counted=False)
    assert totals.capacity == 120 * 20
    assert totals.capacity_use_basis == "time"
    assert pct(totals.capacity_use) == pytest.approx(25.0)
    assert totals.performance is None


def test_a_mixed_set_is_parts_based_over_the_machines_that_count() -> None:
    press = shift(breaks=0, down=60, running=60, per_minute_at_rated=20, produced=900, rejected=0)
    lathe = [minute("running", planned=True) for _ in range(100)]
    lathe += [minute("idle", planned=True) for _ in range(20)]
    oven = [minute("running", planned=True, capacity=1) for _ in range(120)]
    totals = total(press, "press") + total(lathe, "lathe", False) + total(oven, "oven", False)
    assert totals.capacity_use_basis == "parts"
    # 900 made of the press's 120 min × 20 = 2400: the lathe and the oven are left out.
    assert pct(totals.capacity_use) == pytest.approx(37.5)
    assert totals.time_based_machines == 2
    assert totals.time_machines == {"lathe", "oven"}
    assert totals.parts_machines == {"press"}
    # Performance is the press's alone (900 of 1200 at rated speed), not dragged down by the oven.
    assert pct(totals.performance) == pytest.approx(75.0)
    # Time-based use and availability cover all three: (60 + 100 + 120) of 360 minutes.
    assert pct(totals.time_based_use) == pytest.approx(280 / 360 * 100)
    assert pct(totals.availability) == pytest.approx(280 / 360 * 100)


def test_no_data_gives_no_figures() -> None:
    empty = Totals()
    for name in RATIOS:
        assert getattr(empty, name) is None, name
    assert empty.capacity_use_basis is None
    assert empty.time_based_machines == 0
    nothing = Totals.from_row({}, machine="m", counted=False)
    assert nothing == empty  # a machine without minutes is neither parts- nor time-based


def test_each_zero_denominator_alone() -> None:
    unplanned = total([minute("off", planned=False) for _ in range(10)])
    assert unplanned.availability is None
    assert unplanned.unknown_share == 0.0
    assert unplanned.time_based_use == 0.0  # ten known minutes off: a real 0 %

    idle = total([minute("idle", planned=True, capacity=20) for _ in range(10)])
    assert idle.availability == 0.0
    assert idle.performance is None  # never ran: no running capacity
    assert idle.quality is None  # made nothing
    assert idle.oee is None
    assert idle.capacity_use == 0.0

    all_bad = total([minute("running", planned=True, capacity=10, produced=5, rejected=5)])
    assert all_bad.quality == 0.0
    assert all_bad.oee == 0.0


def test_unknown_share_is_shown_over_calendar_time() -> None:
    rows = [minute("unknown", planned=True) for _ in range(15)]
    rows += [minute("running", planned=True) for _ in range(45)]
    totals = total(rows, counted=False)
    assert pct(totals.unknown_share) == pytest.approx(25.0)
    assert pct(totals.time_based_use) == pytest.approx(75.0)


def test_minutes_never_written_count_as_unknown_not_as_stopped() -> None:
    # Half an hour written, all of it running at 90 % of rated speed, in an hour of calendar.
    half = {"running_s": 1800, "planned_s": 1800, "capacity": 600, "running_capacity": 600}
    totals = Totals.from_row(half | {"produced": 540}, machine="m", calendar_s=3600)
    assert totals.recorded_s == 1800
    assert totals.unrecorded_s == 1800
    assert pct(totals.unknown_share) == pytest.approx(50.0)
    # The figures are those of the time recorded, the only time capacity is known for.
    assert pct(totals.capacity_use) == pytest.approx(90.0)
    assert pct(totals.time_based_use) == pytest.approx(100.0)
    assert pct(totals.availability) == pytest.approx(100.0)

    nothing = Totals.from_row({}, machine="m", counted=False, calendar_s=3600)
    assert nothing.unknown_share == 1.0
    assert [getattr(nothing, name) for name in RATIOS if name != "unknown_share"] == [None] * 6
    assert nothing.capacity_use_basis is None
    assert nothing.time_machines == frozenset()


def test_from_row_reads_what_influxdb_answers() -> None:
    row = {"time": 0, "planned_s": 30, "running_s": 20.5, "idle_s": None, "produced": 7}
    totals = Totals.from_row(row)
    assert totals.running_s == 20.5
    assert totals.idle_s == 0
    assert totals.calendar_s == 20.5  # the state seconds recorded
    assert totals.parts_machines == frozenset()  # no machine named
    assert Totals.from_row(row, calendar_s=3600).calendar_s == 3600
    assert Totals.from_row(row | {"calendar_s": 60}).calendar_s == 60
    with pytest.raises(TypeError, match="running_s must be a number"):
        Totals.from_row({"running_s": "60"})
    with pytest.raises(TypeError, match="produced must be a number"):
        Totals.from_row({"produced": True})


def test_to_dict_is_ready_for_json() -> None:
    totals = total([minute("running", planned=True, capacity=2, produced=1)], "m")
    data = totals.to_dict()
    assert data["availability"] == 1.0
    assert data["capacity_use"] == 0.5
    assert data["capacity_use_basis"] == "parts"
    assert data["parts_machines"] == ["m"]
    assert data["time_machines"] == []
    assert data["produced"] == 1
    assert data["quality"] == 1.0
    assert (data["recorded_s"], data["unrecorded_s"], data["calendar_s"]) == (60, 0, 60)
    assert set(RATIOS) <= set(data)


FIELDS = ("running_s", "unknown_s", "planned_s", "produced", "rejected", "capacity")
rows_strategy = st.lists(
    st.fixed_dictionaries({name: st.integers(0, 60) for name in FIELDS}), max_size=30
)


@settings(max_examples=200, deadline=None)
@given(rows=rows_strategy, cut=st.integers(0, 30))
def test_sums_do_not_depend_on_how_minutes_are_grouped(rows: list[Row], cut: int) -> None:
    whole = Totals.from_row({name: sum(r[name] for r in rows) for name in FIELDS})
    by_minute = total(rows, machine=None)
    assert by_minute == total(rows[:cut], machine=None) + total(rows[cut:], machine=None)
    for name in (*FIELDS, "calendar_s"):
        assert getattr(by_minute, name) == getattr(whole, name)
    if all(r["capacity"] > 0 for r in rows):
        assert by_minute.capacity_use == whole.capacity_use
        assert by_minute.quality == whole.quality


def test_adding_is_commutative_and_zero_is_neutral() -> None:
    a = total(shift(breaks=5, down=5, running=5, per_minute_at_rated=3, produced=9, rejected=1))
    b = total([minute("running", planned=False) for _ in range(3)], "n", counted=False)
    assert a + b == b + a
    assert a + Totals() == a
    assert (a + b).time_machines == {"n"}
    assert (a + b).parts_machines == {"m"}


@pytest.mark.parametrize("name", ["dashboards.kpi", "dashboards.kpi_query", "dashboards.cli"])
def test_all_matches_what_the_module_defines(name: str) -> None:
    module = importlib.import_module(name)
    assert {n for n in module.__all__ if not hasattr(module, n)} == set()
    defined = {
        n
        for n, value in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }
    assert defined <= set(module.__all__)
