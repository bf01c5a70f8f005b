"""InfluxDBSink: arguments, HTTP details through httpx.MockTransport, and the real InfluxDB."""

from __future__ import annotations

import gzip
from collections.abc import Callable

import httpx
import pytest

import collector.sinks as sinks
from collector.config import InfluxDBConfig
from collector.lineprotocol import encode_point
from collector.schema import Point
from collector.sinks import AuthWriteError, RejectedWriteError, RetryableWriteError, Sink
from collector.sinks.influxdb import InfluxDBSink
from collector.sinks.memory import MemorySink
from tests.conftest import InfluxDBDatabase
from tests.services import InfluxDB

T0 = 1_700_000_000_000


def points(n: int, measurement: str = "reading", value: float = 1.5) -> list[Point]:
    return [
        Point(measurement, {"machine": "torno 1"}, {"temp": value + i}, T0 + i) for i in range(n)
    ]


def test_sinks_all_is_exported() -> None:
    assert sorted(sinks.__all__) == sorted(
        n for n, o in vars(sinks).items() if getattr(o, "__module__", None) == sinks.__name__
    )


def test_both_sinks_satisfy_the_protocol() -> None:
    chosen: list[Sink] = [MemorySink(), InfluxDBSink(url="http://h:8086", database="d")]
    assert len(chosen) == 2  # mypy checks the assignment above


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"url": "localhost:8086"},
            "InfluxDB url 'localhost:8086' must start with http:// or https:// and name a host, "
            "e.g. http://localhost:8086",
        ),
        (
            {"url": "http://h:8086/?db=x"},
            "InfluxDB url 'http://h:8086/?db=x' must not carry a query string; "
            "give database and credentials as their own settings",
        ),
        (
            {"url": "http://u:secret@h:8086"},
            "InfluxDB url must not carry a user name or password (they would not be sent); "
            "give them as username and password",
        ),
        ({"database": ""}, "InfluxDB database name is empty: set the database to write to"),
        (
            {"username": "u"},
            "InfluxDB username and password go together: set both or neither",
        ),
        (
            {"username": "u", "password": "p", "token": "t"},
            "InfluxDB takes either a token or a username and password, not both",
        ),
        ({"token": ""}, "InfluxDB token is empty: unset it or give the real token"),
        ({"timeout": 0}, "InfluxDB timeout must be more than 0 seconds, not 0"),
        (
            {"retention_policy": ""},
            "InfluxDB retention_policy is empty: unset it to use the default",
        ),
    ],
)
def test_bad_arguments_are_refused_at_once(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"url": "http://localhost:8086", "database": "plant"}
    with pytest.raises(ValueError) as caught:
        InfluxDBSink(**(arguments | kwargs))  # type: ignore[arg-type]
    assert str(caught.value) == message


def recording(
    requests: list[httpx.Request], respond: Callable[[httpx.Request], httpx.Response] | None = None
) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return respond(request) if respond else httpx.Response(204)

    return httpx.MockTransport(handler)


async def test_request_carries_database_precision_policy_token_and_gzip() -> None:
    requests: list[httpx.Request] = []
    sink = InfluxDBSink(
        url="http://influx.local:8086/prefix/",
        database="plant",
        retention_policy="one year",
        token="s3cret",
        gzip=True,
        transport=recording(requests),
    )
    async with sink:
        await sink.write(points(2))
    [request] = requests
    assert request.method == "POST"
    assert request.url.path == "/prefix/write"
    assert dict(request.url.params) == {"db": "plant", "precision": "ms", "rp": "one year"}
    assert request.headers["Authorization"] == "Token s3cret"
    assert request.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(request.content).decode() == "".join(
        encode_point(p) + "\n" for p in points(2)
    )


async def test_username_and_password_go_as_basic_auth_not_query_parameters() -> None:
    requests: list[httpx.Request] = []
    sink = InfluxDBSink(
        url="http://h:8086",
        database="d",
        username="ana",
        password="pw",
        transport=recording(requests),
    )
    async with sink:
        await sink.write(points(1))
    assert requests[0].headers["Authorization"] == "Basic YW5hOnB3"
    assert "u" not in requests[0].url.params and "p" not in requests[0].url.params
    assert "Content-Encoding" not in requests[0].headers


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (
            401,
            '{"error":"authorization failed"}',
            AuthWriteError,
            "InfluxDB at http://h:8086: authentication failed (401: authorization failed); "
            "check username/password or token",
        ),
        (
            403,
            '{"code":"forbidden","message":"insufficient permissions"}',
            AuthWriteError,
            "InfluxDB at http://h:8086: not allowed to write to database 'plant' "
            "(403: insufficient permissions)",
        ),
        (
            404,
            '{"error":"database not found: \\"plant\\""}',
            AuthWriteError,
            "InfluxDB at http://h:8086: database 'plant' not found "
            '(404: database not found: "plant"); create it or set create_database',
        ),
        (
            500,
            '{"error":"timeout"}',
            RetryableWriteError,
            "InfluxDB at http://h:8086: HTTP 500: timeout",
        ),
        (429, "", RetryableWriteError, "InfluxDB at http://h:8086: HTTP 429: Too Many Requests"),
        (
            503,
            "<html>bad gateway</html>",
            RetryableWriteError,
            "InfluxDB at http://h:8086: HTTP 503: <html>bad gateway</html>",
        ),
    ],
)
async def test_status_codes_become_project_errors(
    status: int, body: str, error: type[Exception], message: str
) -> None:
    transport = recording([], lambda _: httpx.Response(status, text=body))
    async with InfluxDBSink(url="http://h:8086", database="plant", transport=transport) as sink:
        with pytest.raises(error) as caught:
            await sink.write(points(3))
    assert str(caught.value) == message


async def test_network_errors_are_retryable_and_name_the_endpoint() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    for respond, message in [
        (refuse, "InfluxDB at http://h:8086: ConnectError: [Errno 111] Connection refused"),
        (hang, "InfluxDB at http://h:8086: no answer within 2.5 s (ReadTimeout)"),
    ]:
        transport = recording([], respond)
        sink = InfluxDBSink(url="http://h:8086", database="d", timeout=2.5, transport=transport)
        async with sink:
            with pytest.raises(RetryableWriteError) as caught:
                await sink.write(points(1))
        assert str(caught.value) == message
        assert isinstance(caught.value.__cause__, httpx.TransportError)


async def test_bisection_isolates_bad_lines_in_few_requests() -> None:
    requests: list[httpx.Request] = []
    bad = {T0 + 3, T0 + 700}

    def server(request: httpx.Request) -> httpx.Response:
        lines = request.content.decode().splitlines()
        if any(int(line.rsplit(" ", 1)[1]) in bad for line in lines):
            return httpx.Response(
                400, json={"error": "partial write: field type conflict dropped=1"}
            )
        return httpx.Response(204)

    batch = points(1000)
    async with InfluxDBSink(
        url="http://h", database="d", transport=recording(requests, server)
    ) as sink:
        with pytest.raises(RejectedWriteError) as caught:
            await sink.write(batch)
    assert caught.value.lines == tuple(encode_point(batch[i]) for i in (3, 700))
    assert caught.value.reason == "partial write: field type conflict dropped=1"
    assert str(caught.value) == (
        "InfluxDB at http://h: refused 2 of 1000 points, "
        "first because partial write: field type conflict dropped=1"
    )
    assert len(requests) <= 2 * 2 * 10 + 1  # two bad lines, log2(1000) levels, two halves each


async def test_a_batch_refused_whole_is_not_bisected() -> None:
    requests: list[httpx.Request] = []
    transport = recording(
        requests,
        lambda _: httpx.Response(400, json={"error": "partial write: beyond retention dropped=50"}),
    )
    async with InfluxDBSink(url="http://h", database="d", transport=transport) as sink:
        with pytest.raises(RejectedWriteError) as caught:
            await sink.write(points(50))
    assert len(caught.value.lines) == 50
    assert len(requests) == 1


async def test_create_database_waits_for_a_server_that_is_down_at_start() -> None:
    requests: list[httpx.Request] = []
    up = False

    def server(request: httpx.Request) -> httpx.Response:
        if not up:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/query":
            return httpx.Response(200, json={"results": [{"statement_id": 0}]})
        return httpx.Response(204)

    sink = InfluxDBSink(
        url="http://h",
        database='we "quote"',
        create_database=True,
        transport=recording(requests, server),
    )
    async with sink:
        with pytest.raises(RetryableWriteError):
            await sink.write(points(1))
        up = True
        await sink.write(points(1))
    queries = [r.url.params["q"] for r in requests if r.url.path == "/query"]
    assert queries == ['CREATE DATABASE "we \\"quote\\""'] * 3


# --- against the real InfluxDB ------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
async def test_writes_arrive_in_influxdb(influxdb: InfluxDBDatabase, compress: bool) -> None:
    async with InfluxDBSink(
        url=influxdb.url, database=influxdb.database, gzip=compress, create_database=True
    ) as sink:
        await sink.write(points(500))
    rows = influxdb.query('SELECT "temp", "machine" FROM "reading"')
    assert [(r["time"], r["temp"], r["machine"]) for r in rows] == [
        (T0 + i, 1.5 + i, "torno 1") for i in range(500)
    ]


@pytest.mark.integration
async def test_hourly_and_daily_sums_go_to_a_policy_of_long_shards(
    influxdb: InfluxDBDatabase,
) -> None:
    config = InfluxDBConfig(url=influxdb.url, database=influxdb.database)
    reading = Point("reading", {"machine": "m"}, {"temp": 1.0}, T0)
    hour = Point("utilization_1h", {"machine": "m"}, {"running_s": 3600.0}, T0)
    day = Point("utilization_1d", {"machine": "m"}, {"running_s": 86400.0}, T0)
    async with InfluxDBSink.from_config(config) as sink:
        await sink.write([reading, hour, day])
    policies = {r["name"]: r for r in influxdb.query("SHOW RETENTION POLICIES")}
    assert policies["aguante_rollups"]["shardGroupDuration"] == "8736h0m0s"  # 52 weeks
    assert influxdb.query('SELECT * FROM "reading"')
    assert not influxdb.query('SELECT * FROM "utilization_1h"')  # not in the default policy
    rows = influxdb.query('SELECT * FROM "aguante_rollups"."utilization_1h"')
    assert [r["running_s"] for r in rows] == [3600.0]
    assert influxdb.query('SELECT * FROM "aguante_rollups"."utilization_1d"')


@pytest.mark.integration
async def test_a_server_without_the_rollup_policy_gets_the_sums_in_the_default_one(
    influxdb: InfluxDBDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    influxdb.create()  # and no rollup policy: as on a server that has none (2.x, 3.x)
    hour = Point("utilization_1h", {"machine": "m"}, {"running_s": 3600.0}, T0)
    async with InfluxDBSink(
        url=influxdb.url,
        database=influxdb.database,
        retention_policies={"utilization_1h": "aguante_rollups"},
    ) as sink:
        await sink.write([hour])
        await sink.write([hour])
    assert influxdb.query('SELECT * FROM "utilization_1h"')
    assert caplog.text.count("no retention policy 'aguante_rollups'") == 1


@pytest.mark.integration
async def test_field_type_conflict_refuses_only_the_bad_lines(influxdb: InfluxDBDatabase) -> None:
    influxdb.create()
    good = points(10)
    conflicting = [
        Point("reading", {"machine": "torno 1"}, {"temp": 7}, T0 + 100),  # integer, not float
        Point("reading", {"machine": "torno 1"}, {"temp": "hot"}, T0 + 101),
    ]
    unencodable = Point("reading", {"machine": "a\nb"}, {"temp": 1.0}, T0 + 102)
    batch = [*good[:4], conflicting[0], *good[4:8], unencodable, conflicting[1], *good[8:]]
    async with InfluxDBSink(url=influxdb.url, database=influxdb.database) as sink:
        await sink.write(good[:1])  # the field becomes a float
        with pytest.raises(RejectedWriteError) as caught:
            await sink.write(batch)
    assert caught.value.lines == (
        repr(unencodable),
        encode_point(conflicting[0]),
        encode_point(conflicting[1]),
    )
    assert caught.value.reasons == (
        "the tag value 'a\\nb' contains a line break",
        'partial write: field type conflict: input field "temp" on measurement "reading" '
        "is type integer, already exists as type float dropped=1",
        'partial write: field type conflict: input field "temp" on measurement "reading" '
        "is type string, already exists as type float dropped=1",
    )
    rows = influxdb.query('SELECT "temp" FROM "reading"')
    assert [(r["time"], r["temp"]) for r in rows] == [(p.time_ms, p.fields["temp"]) for p in good]


@pytest.mark.integration
async def test_missing_database_holds_the_data(influxdb: InfluxDBDatabase) -> None:
    async with InfluxDBSink(url=influxdb.url, database=influxdb.database) as sink:
        with pytest.raises(AuthWriteError) as caught:
            await sink.write(points(1))
    assert str(caught.value) == (
        f"InfluxDB at {influxdb.url}: database {influxdb.database!r} not found "
        f'(404: database not found: "{influxdb.database}"); create it or set create_database'
    )


@pytest.mark.integration
async def test_stopped_server_is_retryable(start_influxdb: Callable[..., InfluxDB]) -> None:
    server = start_influxdb()
    server.create_database("plant")
    async with InfluxDBSink(url=server.url, database="plant") as sink:
        await sink.write(points(1))
        server.stop()
        with pytest.raises(RetryableWriteError) as caught:
            await sink.write(points(2))
        assert str(caught.value).startswith(f"InfluxDB at {server.url}: ConnectError: ")
        server.start()
        await sink.write(points(2))
    assert len(server.query('SELECT * FROM "reading"', database="plant")) == 2


@pytest.mark.integration
async def test_username_and_password_against_auth_enabled_influxdb(
    start_influxdb: Callable[..., InfluxDB],
) -> None:
    server = start_influxdb(auth=True)
    async with InfluxDBSink(
        url=server.url,
        database="plant",
        username=InfluxDB.ADMIN_USER,
        password=InfluxDB.ADMIN_PASSWORD,
        create_database=True,
    ) as sink:
        await sink.write(points(3))
    assert len(server.query('SELECT * FROM "reading"', database="plant")) == 3
    async with InfluxDBSink(
        url=server.url, database="plant", username=InfluxDB.ADMIN_USER, password="wrong"
    ) as sink:
        with pytest.raises(AuthWriteError) as caught:
            await sink.write(points(1))
    assert str(caught.value) == (
        f"InfluxDB at {server.url}: authentication failed (401: authorization failed); "
        "check username/password or token"
    )


@pytest.mark.integration
async def test_a_write_only_user_writes_although_it_may_not_create_the_database(
    start_influxdb: Callable[..., InfluxDB], caplog: pytest.LogCaptureFixture
) -> None:
    """As docker-compose.yml sets it up: an admin creates the database, the collector writes."""
    server = start_influxdb(auth=True)
    server.create_database("plant")
    server.query("CREATE USER writer WITH PASSWORD 'w-secret'", method="POST")
    server.query('GRANT WRITE ON "plant" TO writer', method="POST")
    async with InfluxDBSink(
        url=server.url,
        database="plant",
        username="writer",
        password="w-secret",
        create_database=True,
    ) as sink:
        await sink.write(points(2))
    assert len(server.query('SELECT * FROM "reading"', database="plant")) == 2
    assert "could not create database 'plant'" in caplog.text
