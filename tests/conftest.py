"""Fixtures for every test: leak checks for threads and asyncio tasks, and real services."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.services import (
    InfluxDB,
    Mosquitto,
    ServiceError,
    TlsFiles,
    make_tls_files,
    quote_ident,
)

pytest_plugins = ["pytester"]

_GRACE_S = 2.0

# `aguante collect` runs on uvloop where it is installed: the tests that run the collector
# against real brokers, databases and devices run on both loops.
ON_BOTH_LOOPS = frozenset(
    {
        "test_end_to_end.py",
        "test_mqtt_end_to_end.py",
        "test_mqtt_security.py",
        "test_mqtt_turns.py",
        "test_app.py",
        "test_modbus_source.py",
    }
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    try:
        import uvloop
    except ImportError:  # not built for this platform: `collect` runs on asyncio's loop there
        return {"asyncio": asyncio.new_event_loop}
    if item.path.name not in ON_BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop}  # one factory: no test id of its own
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (a short grace lets finishing threads exit)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + _GRACE_S
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if leaked:
        pytest.fail(f"test left threads running: {[t.name for t in leaked]}", pytrace=False)


@pytest.fixture(autouse=True)
async def no_pending_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks pending on its loop (they would be cancelled
    silently when pytest-asyncio closes the loop)."""
    yield
    current = asyncio.current_task()
    for _ in range(10):  # let tasks that are finishing run to their end
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not pending:
            return
        await asyncio.sleep(0.01)
    names = [t.get_name() + ": " + repr(t.get_coro()) for t in pending]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    pytest.fail(f"test left asyncio tasks pending: {names}", pytrace=False)


@pytest.fixture(scope="session")
def influxdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """One influxd for the whole session. Fails (never skips) when influxd is missing."""
    server = _start_or_fail(tmp_path_factory.mktemp("influxdb"))
    try:
        yield server
    finally:
        server.stop()


@dataclass
class InfluxDBDatabase:
    """A running InfluxDB and a database name of this test's own (not created)."""

    server: InfluxDB
    database: str

    @property
    def url(self) -> str:
        return self.server.url

    def create(self) -> None:
        self.server.create_database(self.database)

    def query(self, q: str) -> list[dict[str, Any]]:
        return self.server.query(q, database=self.database)

    def select_all(self, measurement: str) -> list[dict[str, Any]]:
        return self.query(f"SELECT * FROM {quote_ident(measurement)}")


_database_numbers = itertools.count(1)


@pytest.fixture
def influxdb(influxdb_server: InfluxDB) -> InfluxDBDatabase:
    return InfluxDBDatabase(influxdb_server, f"test_{next(_database_numbers)}")


@pytest.fixture
def start_influxdb(tmp_path: Path) -> Iterator[Callable[..., InfluxDB]]:
    """Start influxd instances of this test's own (to stop, restart or enable auth)."""
    servers: list[InfluxDB] = []

    def start(*, auth: bool = False) -> InfluxDB:
        server = _start_or_fail(tmp_path / f"influxdb{len(servers)}", auth=auth)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def _start_or_fail(root: Path, *, auth: bool = False) -> InfluxDB:
    try:
        server = InfluxDB(root, auth=auth)
        server.start()
    except Exception as exc:
        pytest.fail(f"cannot start InfluxDB for the integration tests: {exc}", pytrace=False)
    return server


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto broker of this test's own on a free port (stop() and start() keep sessions)."""
    try:
        broker = Mosquitto(tmp_path / "mosquitto")
        broker.start()
    except Exception as exc:
        pytest.fail(f"cannot start Mosquitto for the integration tests: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


def make_tls_or_fail(directory: Path, name: str = "aguante test") -> TlsFiles:
    try:
        return make_tls_files(directory, name=name)
    except ServiceError as exc:
        pytest.fail(f"cannot make test certificates: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed."""
    return make_tls_or_fail(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start Mosquitto with the given options (tls, require_certificate, users); stopped after
    the test. Fails (never skips) when mosquitto, mosquitto_passwd or openssl is missing."""
    brokers: list[Mosquitto] = []

    def start(**options: Any) -> Mosquitto:
        try:
            broker = Mosquitto(tmp_path / f"mosquitto{len(brokers)}", **options)
            brokers.append(broker)
            broker.start()
        except ServiceError as exc:
            pytest.fail(f"cannot start Mosquitto for the integration tests: {exc}", pytrace=False)
        return broker

    try:
        yield start
    finally:
        for broker in brokers:
            broker.stop()
