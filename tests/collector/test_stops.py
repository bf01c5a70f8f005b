"""Stops: their IDs, reasons by id or name, losses per reason and category, the tables people
read, and listing and giving reasons against a real InfluxDB."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import yaml

import collector.stops
from collector.config import Config, parse_config
from collector.influxql import InfluxQL
from collector.schema import STOP, Point
from collector.sinks.influxdb import InfluxDBSink
from collector.sinks.memory import MemorySink
from collector.stops import (
    InvalidStopId,
    Stop,
    StopNotFound,
    UnknownReason,
    assign_reason,
    find_stop,
    list_stops,
    losses_by_reason,
    losses_table,
    parse_stop_id,
    resolve_reason,
    stop_id,
    stops_table,
)
from tests.conftest import InfluxDBDatabase

ZONE = ZoneInfo("America/Argentina/Buenos_Aires")

FACTORY = {
    "factory": "coop",
    "timezone": "America/Argentina/Buenos_Aires",
    "language": "es",
    "sectors": [{"id": "pressing"}, {"id": "bakery"}],
    "machines": [
        {"id": "press-1", "sector": "pressing", "rated_per_hour": 1200},
        {"id": "press-2", "sector": "pressing", "rated_per_hour": 600},
        {"id": "oven-1", "sector": "bakery"},
    ],
}


def make_config(**changes: object) -> Config:
    return parse_config(yaml.safe_dump(FACTORY | changes), environ={})


def local_ms(text: str) -> int:
    return round(dt.datetime.fromisoformat(text).replace(tzinfo=ZONE).timestamp() * 1000)


def a_stop(
    machine: str,
    start: str,
    seconds: float,
    reason: str = "",
    *,
    lost_s: float | None = None,
    state: str = "down",
    open: bool = False,
) -> Stop:
    """A stop lasting `seconds`, all of them planned time unless `lost_s` says."""
    sector = "bakery" if machine.startswith("oven") else "pressing"
    lost = seconds if lost_s is None else lost_s
    return Stop(machine, sector, local_ms(start), seconds, lost, state, open, False, reason)


# -- IDs and reasons ---------------------------------------------------------------------------


def test_a_stop_id_is_its_machine_and_utc_start_in_ms() -> None:
    assert stop_id("press-1", 1764066725123) == "press-1@1764066725123"
    assert parse_stop_id(" press-1@1764066725123 ") == ("press-1", 1764066725123)
    assert parse_stop_id("line_2.b@0") == ("line_2.b", 0)


@pytest.mark.parametrize("text", ["press-1", "press-1@", "@1764066725123", "press 1@5", "a@1.5"])
def test_text_that_is_no_stop_id_is_refused(text: str) -> None:
    with pytest.raises(InvalidStopId):
        parse_stop_id(text)


def test_reasons_by_id_or_by_name_in_any_language() -> None:
    config = make_config()
    assert resolve_reason(config, "breakdown") is config.reason("breakdown")
    assert resolve_reason(config, " ROTURA ") is config.reason("breakdown")
    assert resolve_reason(config, "falta de energia") is config.reason("power_cut")
    assert resolve_reason(config, "No orders") is config.reason("no_orders")
    assert resolve_reason(config, "rotura total") is None
    assert resolve_reason(config, "") is None


def test_a_plants_own_reasons_replace_the_defaults() -> None:
    config = make_config(
        stop_reasons=[
            {"id": "no_gas", "category": "supply", "label": {"es": "Sin gas", "en": "No gas"}}
        ]
    )
    assert resolve_reason(config, "sin gas") is config.reason("no_gas")
    assert resolve_reason(config, "breakdown") is None


# -- losses ----------------------------------------------------------------------------------


def test_losses_per_reason_and_category_in_hours_and_parts() -> None:
    config = make_config()
    stops = [
        a_stop("press-1", "2026-11-24T08:00", 1800, "breakdown"),  # 600 parts at 1200/h
        a_stop("press-2", "2026-11-24T09:00", 3600, "setup"),  # 600 parts at 600/h
        a_stop("oven-1", "2026-11-24T10:00", 900, "breakdown"),  # no rated speed
        a_stop("press-1", "2026-11-24T11:00", 300, "no_orders"),
        a_stop("press-1", "2026-11-24T12:00", 60),
        a_stop("press-1", "2026-11-24T13:00", 120, "gone_from_config"),
    ]
    losses = losses_by_reason(stops, config)
    assert list(losses.by_category) == ["machine", "demand", "other", "unassigned"]
    machine = losses.by_category["machine"]
    assert (machine.stops, machine.lost_s, machine.parts, machine.unrated_s) == (3, 6300, 1200, 900)
    assert machine.lost_h == 1.75
    assert list(losses.by_reason) == ["setup", "breakdown", "no_orders", "gone_from_config", ""]
    breakdown = losses.by_reason["breakdown"]
    assert (breakdown.lost_s, breakdown.parts, breakdown.unrated_s) == (2700, 600, 900)
    assert losses.by_reason[""].parts == 20
    assert losses.total.lost_s == 6780
    assert losses.total.stops == 6


def test_parts_are_none_when_no_machine_had_a_rated_speed() -> None:
    losses = losses_by_reason(
        [a_stop("oven-1", "2026-11-24T10:00", 900, "breakdown")], make_config()
    )
    assert losses.by_reason["breakdown"].parts is None
    assert losses.total.unrated_s == 900


# -- tables ------------------------------------------------------------------------------------


def test_the_table_of_stops_in_spanish() -> None:
    config = make_config()
    stops = [
        a_stop("press-1", "2026-11-24T10:15:03", 750, "breakdown", open=True),
        a_stop("oven-1", "2026-11-24T09:00", 3723, "", state="idle", lost_s=0),
    ]
    assert stops_table(stops, config, "es") == [
        "ID                     Máquina  Inicio               Duración  Planif. perdido  Estado"
        "    Motivo",
        f"press-1@{local_ms('2026-11-24T10:15:03')}  press-1  2026-11-24 10:15:03   0:12:30"
        "          0:12:30  En falla  Rotura  en curso",
        f"oven-1@{local_ms('2026-11-24T09:00')}   oven-1   2026-11-24 09:00:00   1:02:03"
        "          0:00:00  Parada    —",
    ]


def test_the_table_of_losses_in_portuguese() -> None:
    config = make_config()
    stops = [
        a_stop("press-1", "2026-11-24T08:00", 1800, "breakdown"),
        a_stop("oven-1", "2026-11-24T09:00", 600),
    ]
    assert losses_table(losses_by_reason(stops, config), "pt-BR") == [
        "Causa                          Paradas  Planej. perdido  Peças perdidas",
        "Máquina (quebras, manutenção)        1          0:30:00             600",
        "Sem motivo atribuído                 1          0:10:00               —",
        "Total                                2          0:40:00             600",
        "sem peças para 0:10:00 de máquinas sem velocidade nominal",
    ]


def test_public_names_are_exported() -> None:
    public = {
        name
        for name, value in vars(collector.stops).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == "collector.stops"
    }
    assert public <= set(collector.stops.__all__)


# -- against InfluxDB -----------------------------------------------------------------------


def collector_stop(
    machine: str, start_ms: int, duration_s: float, *, micro: bool = False, reason: str = ""
) -> Point:
    """A stop point as the collector writes it."""
    sector = "bakery" if machine.startswith("oven") else "pressing"
    return Point(
        STOP,
        {"factory": "coop", "sector": sector, "machine": machine},
        {
            "duration_s": float(duration_s),
            "lost_s": float(duration_s),
            "state": "idle",
            "open": False,
            "micro": micro,
            "reason": reason,
        },
        start_ms,
    )


@pytest.fixture
async def stored(influxdb: InfluxDBDatabase) -> Config:
    config = make_config(influxdb={"url": influxdb.url, "database": influxdb.database})
    points = [
        collector_stop("press-1", local_ms("2026-11-24T08:00:00.123"), 600),
        collector_stop("press-1", local_ms("2026-11-24T09:00"), 30, micro=True),
        collector_stop("press-2", local_ms("2026-11-24T10:00"), 1200, reason="setup"),
        collector_stop("oven-1", local_ms("2026-11-23T10:00"), 300),
        # Another plant sharing the database.
        Point(
            STOP,
            {"factory": "other", "sector": "pressing", "machine": "press-1"},
            {"duration_s": 5.0, "reason": ""},
            local_ms("2026-11-24T08:30"),
        ),
    ]
    async with InfluxDBSink.from_config(config.influxdb) as sink:
        await sink.write(points)
    return config


DAY = (local_ms("2026-11-24T00:00"), local_ms("2026-11-25T00:00"))


@pytest.mark.integration
async def test_stops_are_listed_newest_first_without_micro_stops(stored: Config) -> None:
    with InfluxQL.from_config(stored.influxdb) as db:
        shown = list_stops(db, stored, *DAY)
        every = list_stops(db, stored, *DAY, include_micro=True)
        presses = list_stops(db, stored, local_ms("2026-11-20T00:00"), DAY[1], ["press-2"])
    assert [s.id for s in shown] == [
        f"press-2@{local_ms('2026-11-24T10:00')}",
        f"press-1@{local_ms('2026-11-24T08:00:00.123')}",
    ]
    assert shown[0].reason == "setup"
    assert shown[1].duration_s == 600.0
    assert shown[1].sector == "pressing"
    assert len(every) == 3 and every[1].micro
    assert [s.machine for s in presses] == ["press-2"]


@pytest.mark.integration
async def test_a_reason_is_written_into_the_stop_and_nothing_else_changes(
    stored: Config, influxdb: InfluxDBDatabase
) -> None:
    start = local_ms("2026-11-24T08:00:00.123")
    with InfluxQL.from_config(stored.influxdb) as db:
        async with InfluxDBSink.from_config(stored.influxdb) as sink:
            stop = await assign_reason(db, sink, stored, f"press-1@{start}", "Rotura")
        assert stop.reason == "breakdown"
        again = find_stop(db, stored, "press-1", start)
    assert again is not None
    assert (again.reason, again.duration_s, again.lost_s, again.state) == (
        "breakdown",
        600.0,
        600.0,
        "idle",
    )
    rows = influxdb.query("SELECT * FROM stop WHERE machine = 'press-1' AND factory = 'coop'")
    assert len(rows) == 2  # the reason went into the stop, not beside it


@pytest.mark.integration
async def test_a_reason_can_be_cleared(stored: Config) -> None:
    start = local_ms("2026-11-24T10:00")
    with InfluxQL.from_config(stored.influxdb) as db:
        async with InfluxDBSink.from_config(stored.influxdb) as sink:
            await assign_reason(db, sink, stored, f"press-2@{start}", "")
        stop = find_stop(db, stored, "press-2", start)
    assert stop is not None and stop.reason == ""


@pytest.mark.integration
async def test_no_reason_is_written_for_a_stop_that_is_not_there(stored: Config) -> None:
    sink = MemorySink()
    with InfluxQL.from_config(stored.influxdb) as db:
        start = local_ms("2026-11-24T08:00:00.123")
        with pytest.raises(StopNotFound):
            await assign_reason(db, sink, stored, f"press-1@{start + 1}", "breakdown")
        with pytest.raises(StopNotFound):  # the other plant's stop is not ours
            await assign_reason(db, sink, stored, f"press-1@{local_ms('2026-11-24T08:30')}", "")
        with pytest.raises(UnknownReason) as caught:
            await assign_reason(db, sink, stored, f"press-1@{start}", "broken")
        with pytest.raises(InvalidStopId):
            await assign_reason(db, sink, stored, "press-1", "breakdown")
    assert caught.value.reasons == tuple(stored.stop_reasons)
    assert sink.points == []
