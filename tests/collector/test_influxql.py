"""The InfluxQL read client against the real InfluxDB: multi-statement answers, quoting of odd
names and values, exact tag regexes, time bounds, and every failure as a QueryError."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import httpx
import pytest

from collector.config import InfluxDBConfig
from collector.influxql import (
    InfluxQL,
    QueryError,
    Series,
    quote_ident,
    quote_string,
    regex_any,
    time_literal,
)
from collector.schema import Point
from collector.sinks.influxdb import InfluxDBSink
from tests.conftest import InfluxDBDatabase
from tests.services import InfluxDB, free_port

pytestmark = pytest.mark.integration

T0 = 1_772_420_400_000  # 2026-03-02 03:00 UTC, in ms

ODD_VALUES = [
    "a.b",
    "aXb",
    "x/y",
    "(p)",
    "m|n",
    "m",
    "it's",
    'say "hi"',
    "back\\slash",
    "a b",
    "a,b",
    "a=b",
    "ñandú",
    "[x]",
    "^$",
    "a*",
    "aaa",
]
ODD_MEASUREMENT = "odd \"meas\" 'ure'"
ODD_FIELD = "field \"f\" 'x'"
ODD_TAG = "tag key"


async def write(influxdb: InfluxDBDatabase, points: list[Point]) -> None:
    async with InfluxDBSink(
        url=influxdb.url, database=influxdb.database, create_database=True
    ) as sink:
        await sink.write(points)


def client(influxdb: InfluxDBDatabase) -> InfluxQL:
    return InfluxQL(influxdb.url, influxdb.database)


@pytest.fixture
async def odd(influxdb: InfluxDBDatabase) -> InfluxDBDatabase:
    await write(
        influxdb,
        [
            Point(ODD_MEASUREMENT, {ODD_TAG: value}, {ODD_FIELD: float(i)}, T0 + i)
            for i, value in enumerate(ODD_VALUES)
        ],
    )
    return influxdb


async def test_one_answer_per_statement(influxdb: InfluxDBDatabase) -> None:
    await write(
        influxdb,
        [
            Point("m", {"machine": "press-1"}, {"v": 1.5, "n": 2}, T0),
            Point("m", {"machine": "press-1"}, {"v": 2.5, "n": 3}, T0 + 60_000),
            Point("m", {"machine": "lathe-1"}, {"v": 10.0, "n": 4}, T0),
        ],
    )
    with client(influxdb) as db:
        answers = db.query(
            'SELECT "v", "n" FROM "m" WHERE "machine" = \'press-1\';\n'
            'SELECT "v" FROM "m" WHERE "machine" = \'nobody\'; '
            'SELECT sum("n") AS "n" FROM "m" GROUP BY "machine"'
        )
    assert len(answers) == 3
    assert answers[0] == [
        Series(
            "m",
            {},
            [{"time": T0, "v": 1.5, "n": 2}, {"time": T0 + 60_000, "v": 2.5, "n": 3}],
        )
    ]
    assert answers[1] == []
    assert sorted((s.tags["machine"], s.rows[0]["n"]) for s in answers[2]) == [
        ("lathe-1", 4),
        ("press-1", 5),
    ]


async def test_select_answers_one_statement(influxdb: InfluxDBDatabase) -> None:
    await write(influxdb, [Point("m", {}, {"v": 1.0}, T0)])
    with client(influxdb) as db:
        assert db.select('SELECT "v" FROM "m"') == [Series("m", {}, [{"time": T0, "v": 1.0}])]


@pytest.mark.parametrize("value", ODD_VALUES)
async def test_odd_names_and_values_are_quoted(odd: InfluxDBDatabase, value: str) -> None:
    field, measurement, tag = (
        quote_ident(ODD_FIELD),
        quote_ident(ODD_MEASUREMENT),
        quote_ident(ODD_TAG),
    )
    expected = [{"time": T0 + ODD_VALUES.index(value), ODD_FIELD: float(ODD_VALUES.index(value))}]
    with client(odd) as db:
        by_string, by_regex = db.query(
            f"SELECT {field} FROM {measurement} WHERE {tag} = {quote_string(value)}; "
            f"SELECT {field} FROM {measurement} WHERE {tag} =~ {regex_any([value])}"
        )
    assert by_string == [Series(ODD_MEASUREMENT, {}, expected)]
    assert by_regex == [Series(ODD_MEASUREMENT, {}, expected)]


async def test_regex_any_matches_exactly_its_values(odd: InfluxDBDatabase) -> None:
    wanted = ["a.b", "m|n", "a*", "x/y", "^$", "[x]"]
    with client(odd) as db:
        (series,) = db.select(
            f"SELECT {quote_ident(ODD_FIELD)} FROM {quote_ident(ODD_MEASUREMENT)} "
            f"WHERE {quote_ident(ODD_TAG)} =~ {regex_any(wanted)}"
        )
    found = sorted(ODD_VALUES[int(row[ODD_FIELD])] for row in series.rows)
    # Not aXb (a.b), m or n (m|n), aaa (a*), nor anything else.
    assert found == sorted(wanted)


async def test_tags_of_grouped_series_come_back_as_written(odd: InfluxDBDatabase) -> None:
    with client(odd) as db:
        series = db.select(
            f"SELECT count({quote_ident(ODD_FIELD)}) FROM {quote_ident(ODD_MEASUREMENT)} "
            f"GROUP BY {quote_ident(ODD_TAG)}"
        )
    assert sorted(s.tags[ODD_TAG] for s in series) == sorted(ODD_VALUES)


async def test_time_bounds_are_milliseconds_or_aware_datetimes(
    influxdb: InfluxDBDatabase,
) -> None:
    await write(influxdb, [Point("m", {}, {"v": float(i)}, T0 + i) for i in range(5)])
    upper = dt.datetime.fromtimestamp((T0 + 3) / 1000, dt.UTC)
    with client(influxdb) as db:
        rows = db.select(
            f'SELECT "v" FROM "m" WHERE time >= {time_literal(T0 + 1)} '
            f"AND time < {time_literal(upper)}"
        )[0].rows
    assert [row["time"] for row in rows] == [T0 + 1, T0 + 2]
    assert time_literal(upper) == str((T0 + 3) * 1_000_000)
    with pytest.raises(ValueError, match="aware"):
        time_literal(dt.datetime(2026, 3, 2))


async def test_a_syntax_error_carries_the_servers_reason(influxdb: InfluxDBDatabase) -> None:
    influxdb.create()
    with client(influxdb) as db, pytest.raises(QueryError) as caught:
        db.query("SELEC 1")
    message = str(caught.value)
    assert message.startswith(f"InfluxDB at {influxdb.url}: HTTP 400: error parsing query: ")
    assert "found SELEC" in message


async def test_a_failing_statement_among_several_is_an_error(influxdb: InfluxDBDatabase) -> None:
    await write(influxdb, [Point("m", {}, {"v": 1.0}, T0)])
    with client(influxdb) as db, pytest.raises(QueryError) as caught:
        db.query('SELECT "v" FROM "m"; SELECT "v" FROM "m" GROUP BY time(1h)')
    assert str(caught.value) == (
        f"InfluxDB at {influxdb.url}: GROUP BY requires at least one aggregate function"
    )


async def test_query_each_batches_and_names_the_failing_statement(
    influxdb: InfluxDBDatabase,
) -> None:
    await write(influxdb, [Point("m", {}, {"v": float(i)}, T0 + i) for i in range(3)])
    statements = [f'SELECT "v" FROM "m" WHERE time = {T0 + i}ms' for i in range(5)]
    with client(influxdb) as db:
        answers = db.query_each(statements, per_request=2)
        assert [[r["v"] for s in a for r in s.rows] for a in answers] == [
            [0.0],
            [1.0],
            [2.0],
            [],
            [],
        ]
        bad = 'SELECT "v" FROM "m" GROUP BY time(1h)'
        with pytest.raises(QueryError, match="GROUP BY requires at least one aggregate"):
            db.query_each([statements[0], bad, statements[1]])


def test_a_missing_database_is_an_error(influxdb: InfluxDBDatabase) -> None:
    with client(influxdb) as db, pytest.raises(QueryError) as caught:
        db.query('SELECT "v" FROM "m"')
    assert str(caught.value) == (
        f"InfluxDB at {influxdb.url}: database not found: {influxdb.database}"
    )


def test_an_unreachable_server_is_an_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with InfluxQL(url, "aguante", timeout=2) as db, pytest.raises(QueryError) as caught:
        db.query("SHOW DATABASES")
    assert str(caught.value).startswith(f"InfluxDB at {url}: ConnectError: ")


def test_an_answer_that_is_not_influxdbs_is_an_error() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    with (
        InfluxQL("http://influx.lan:8086", "aguante", transport=httpx.MockTransport(proxy)) as db,
        pytest.raises(QueryError) as caught,
    ):
        db.query("SHOW DATABASES")
    assert str(caught.value) == (
        "InfluxDB at http://influx.lan:8086: HTTP 502: <html>Bad Gateway</html>"
    )


def test_credentials_come_from_the_config(start_influxdb: Callable[..., InfluxDB]) -> None:
    server = start_influxdb(auth=True)
    server.create_database("aguante")
    anonymous = InfluxDBConfig(url=server.url, database="aguante")
    with InfluxQL.from_config(anonymous) as db, pytest.raises(QueryError) as caught:
        db.query("SHOW MEASUREMENTS")
    assert str(caught.value).startswith(f"InfluxDB at {server.url}: HTTP 401: ")
    admin = InfluxDBConfig(
        url=server.url,
        database="aguante",
        username=InfluxDB.ADMIN_USER,
        password=InfluxDB.ADMIN_PASSWORD,
    )
    with InfluxQL.from_config(admin) as db:
        assert db.query("SHOW MEASUREMENTS") == [[]]
