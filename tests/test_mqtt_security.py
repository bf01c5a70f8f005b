"""The collector against a Mosquitto that asks for TLS, client certificates or a password.

A real broker (tests/services.py), certificates made with `openssl` for this session, the
collector as `aguante` runs it (config text through parse_config, Collector, InfluxDBSink) and a
real InfluxDB: what works must store readings; what is refused must be said once in the log,
in words an operator can act on, while the collector keeps running and stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.app import Collector
from collector.config import Config, parse_config
from collector.sinks.influxdb import InfluxDBSink
from collector.sources.mqtt import MqttSource
from tests.conftest import InfluxDBDatabase, make_tls_or_fail
from tests.services import Mosquitto, TlsFiles
from tests.waiting import eventually as _eventually

# Their checks query InfluxDB, blocking the collector's loop meanwhile: asked every 0.05 s.
eventually = functools.partial(_eventually, every=0.05)

pytestmark = pytest.mark.integration

CLIENT_ID = "aguante-security"
TOPIC = "planta/saw-1/datos"
USERS = {"collector": "collector-password", "board": "board-password"}
SOURCE_LOGGER = "collector.sources.mqtt"

CONFIG = """
factory: coop
timezone: UTC
stats_interval: 0.3
influxdb: {{url: "{influx}", database: {database}, flush_interval: 0.1}}
mqtt:
  url: "{broker}"
  client_id: {client_id}
{tls}
sectors: [{{id: shop}}]
machines:
  - id: saw-1
    sector: shop
    mqtt:
      - topic: {topic}
        format: json
        signals: [{{name: blade_speed, path: speed}}]
"""


# -- certificates and brokers -------------------------------------------------------------------


@pytest.fixture(scope="session")
def other_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """An unrelated CA (and certificates), which the broker's certificates do not chain to."""
    return make_tls_or_fail(tmp_path_factory.mktemp("other-tls"), "someone else")


# -- the collector, a board and InfluxDB --------------------------------------------------------


def make_config(
    influxdb: InfluxDBDatabase,
    broker_url: str,
    *,
    tls: Mapping[str, Path] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    influxdb.create()
    tls_line = "" if tls is None else f"  tls: {json.dumps({k: str(v) for k, v in tls.items()})}"
    text = CONFIG.format(
        influx=influxdb.url,
        database=influxdb.database,
        broker=broker_url,
        client_id=CLIENT_ID,
        tls=tls_line,
        topic=TOPIC,
    )
    return parse_config(text, environ=environ or {})


@contextlib.asynccontextmanager
async def running(config: Config, tmp_path: Path) -> AsyncIterator[Collector]:
    """The collector running until the block ends; then it must stop within a few seconds."""
    influx = config.influxdb
    sink = InfluxDBSink(url=influx.url, database=influx.database)
    collector = Collector(
        config,
        sink=sink,
        quarantine_path=tmp_path / "quarantine.jsonl",
        buffer_path=tmp_path / "buffer",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        yield collector
        assert not task.done(), "the collector ended on its own"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def mqtt_source(collector: Collector) -> MqttSource:
    (source,) = (s for s in collector.sources if isinstance(s, MqttSource))
    return source


@contextlib.contextmanager
def board(
    broker: Mosquitto,
    *,
    tls: TlsFiles | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Iterator[Callable[[str], None]]:
    """A board publishing QoS 1 messages to `broker`, over TLS with its client certificate when
    given `tls`; it must be let in."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="board-sim")
    if tls is not None:
        client.tls_set(
            ca_certs=str(tls.ca_file),
            certfile=str(tls.client_cert),
            keyfile=str(tls.client_key),
            cert_reqs=ssl.CERT_REQUIRED,
        )
    if username is not None:
        client.username_pw_set(username, password)
    answered = threading.Event()
    reasons: list[str] = []

    def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        reasons.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert answered.wait(5), "the board got no answer from the broker"
        assert reasons == ["Success"], f"the board was not let in: {reasons}"

        def publish(payload: str) -> None:
            client.publish(TOPIC, payload, qos=1).wait_for_publish(5)

        yield publish
    finally:
        client.disconnect()
        client.loop_stop()


def speeds(influxdb: InfluxDBDatabase) -> list[float]:
    rows = influxdb.query("SELECT blade_speed FROM reading WHERE machine = 'saw-1' ORDER BY time")
    return [row["blade_speed"] for row in rows]


def source_messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == SOURCE_LOGGER and r.levelno >= level
    ]


async def readings_arrive(config: Config, influxdb: InfluxDBDatabase, tmp_path: Path,
                          publish: Callable[[str], None]) -> None:  # fmt: skip
    async with running(config, tmp_path) as collector:
        source = mqtt_source(collector)
        await eventually(lambda: source.health_records()[0].fields["connected"] is True)
        for speed in (2890, 2891, 2892):
            publish(json.dumps({"speed": speed}))
        await eventually(lambda: len(speeds(influxdb)) == 3)
    assert speeds(influxdb) == [2890.0, 2891.0, 2892.0]


async def refused_quietly_then_stops(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Run until paho has tried twice (the first attempt and one retry), then stop: no crash,
    never connected, a clean stop (the autouse fixtures check threads and tasks)."""
    caplog.set_level(logging.INFO)
    async with running(config, tmp_path) as collector:
        source = mqtt_source(collector)
        # Two failed attempts: the first and a retry, which must not be logged again.
        await eventually(
            lambda: source.health_records()[0].fields["connect_failures"] >= 2, within=5
        )
        await asyncio.sleep(0.3)  # the retry's outcome reaches the event loop
        assert source.health_records()[0].fields["connected"] is False
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []  # no "source failed", no traceback
    assert "collector stopped" in caplog.messages


def said_once(caplog: pytest.LogCaptureFixture, *, contains: list[str]) -> None:
    """Exactly one warning of the MQTT source holds every piece of `contains`."""
    warnings = source_messages(caplog, logging.WARNING)
    matching = [m for m in warnings if all(piece in m for piece in contains)]
    assert len(matching) == 1, f"wanted one warning with {contains}, the source logged {warnings}"
    assert len(warnings) == 1, f"one connection problem, logged once: {warnings}"


# -- TLS ------------------------------------------------------------------------------------------


async def test_tls_with_the_brokers_ca_stores_readings(
    start_broker: Callable[..., Mosquitto],
    tls_files: TlsFiles,
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = start_broker(tls=tls_files)
    assert broker.url == f"mqtts://127.0.0.1:{broker.port}"
    config = make_config(influxdb, broker.url, tls={"ca_file": tls_files.ca_file})
    with board(broker, tls=tls_files) as publish:
        await readings_arrive(config, influxdb, tmp_path, publish)
    assert source_messages(caplog, logging.INFO) == [
        f"mqtt {broker.url}: connected, 1 subscriptions"
    ]


async def test_plain_mqtt_to_a_tls_listener_is_said_once(
    start_broker: Callable[..., Mosquitto],
    tls_files: TlsFiles,
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # mqtt:// where the broker speaks mqtts://: a common slip when a broker moves to TLS.
    broker = start_broker(tls=tls_files)
    url = f"mqtt://127.0.0.1:{broker.port}"
    await refused_quietly_then_stops(make_config(influxdb, url), tmp_path, caplog)
    said_once(
        caplog,
        contains=[f"mqtt {url}: ", "closed the connection before accepting it"],
    )


# paho-mqtt 2.2 leaves the socket of a failed TLS handshake for the garbage collector (it does
# not close it in Client._ssl_wrap_socket): a ResourceWarning, nothing worse, on each attempt.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)
async def test_a_ca_that_did_not_sign_the_brokers_certificate_is_said_once(
    start_broker: Callable[..., Mosquitto],
    tls_files: TlsFiles,
    other_tls_files: TlsFiles,
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = start_broker(tls=tls_files)
    config = make_config(influxdb, broker.url, tls={"ca_file": other_tls_files.ca_file})
    await refused_quietly_then_stops(config, tmp_path, caplog)
    said_once(
        caplog,
        contains=[
            f"mqtt {broker.url}: cannot connect",
            "certificate verify failed",
            "mqtt.tls.ca_file",
        ],
    )


async def test_client_certificate_required_and_given_stores_readings(
    start_broker: Callable[..., Mosquitto],
    tls_files: TlsFiles,
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = start_broker(tls=tls_files, require_certificate=True)
    tls = {
        "ca_file": tls_files.ca_file,
        "cert_file": tls_files.client_cert,
        "key_file": tls_files.client_key,
    }
    config = make_config(influxdb, broker.url, tls=tls)
    with board(broker, tls=tls_files) as publish:
        await readings_arrive(config, influxdb, tmp_path, publish)
    assert source_messages(caplog, logging.INFO) == [
        f"mqtt {broker.url}: connected, 1 subscriptions"
    ]


async def test_client_certificate_required_but_missing_is_said_once(
    start_broker: Callable[..., Mosquitto],
    tls_files: TlsFiles,
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = start_broker(tls=tls_files, require_certificate=True)
    config = make_config(influxdb, broker.url, tls={"ca_file": tls_files.ca_file})
    await refused_quietly_then_stops(config, tmp_path, caplog)
    said_once(
        caplog,
        contains=[
            f"mqtt {broker.url}: ",
            "closed the connection before accepting it",
            "certificate required",
        ],
    )


# -- user name and password -----------------------------------------------------------------------


async def test_username_and_password_from_the_environment_store_readings(
    start_broker: Callable[..., Mosquitto],
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = start_broker(users=USERS)
    environ = {
        "AGUANTE_MQTT_URL": broker.url,
        "AGUANTE_MQTT_USERNAME": "collector",
        "AGUANTE_MQTT_PASSWORD": USERS["collector"],
    }
    config = make_config(influxdb, "mqtt://broker.invalid:1883", environ=environ)
    assert (config.mqtt.url, config.mqtt.username) == (broker.url, "collector")
    with board(broker, username="board", password=USERS["board"]) as publish:
        await readings_arrive(config, influxdb, tmp_path, publish)
    assert source_messages(caplog, logging.INFO) == [
        f"mqtt {broker.url}: connected, 1 subscriptions"
    ]


async def test_username_password_and_tls_with_a_client_certificate_together(
    start_broker: Callable[..., Mosquitto],
    tls_files: TlsFiles,
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
) -> None:
    broker = start_broker(tls=tls_files, require_certificate=True, users=USERS)
    environ = {"AGUANTE_MQTT_USERNAME": "collector", "AGUANTE_MQTT_PASSWORD": USERS["collector"]}
    tls = {
        "ca_file": tls_files.ca_file,
        "cert_file": tls_files.client_cert,
        "key_file": tls_files.client_key,
    }
    config = make_config(influxdb, broker.url, tls=tls, environ=environ)
    with board(broker, tls=tls_files, username="board", password=USERS["board"]) as publish:
        await readings_arrive(config, influxdb, tmp_path, publish)


async def test_a_subscription_the_acl_refuses_is_said_once_and_the_rest_flow(
    start_broker: Callable[..., Mosquitto],
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The collector may read the saw's topic but not the furnace's: the broker answers the
    # SUBSCRIBE with a refusal for that filter, and the operator must learn which one.
    caplog.set_level(logging.INFO)
    acls = {"collector": [("subscribePattern", TOPIC)], "board": [("publishClientSend", TOPIC)]}
    broker = start_broker(users=USERS, acls=acls)
    environ = {"AGUANTE_MQTT_USERNAME": "collector", "AGUANTE_MQTT_PASSWORD": USERS["collector"]}
    text = CONFIG.format(
        influx=influxdb.url,
        database=influxdb.database,
        broker=broker.url,
        client_id=CLIENT_ID,
        tls="",
        topic=TOPIC,
    )
    text += "  - id: furnace-1\n    sector: shop\n    mqtt:\n      - topic: planta/furnace-1/t\n"
    text += "        signals: [{name: temperature}]\n"
    influxdb.create()
    config = parse_config(text, environ=environ)
    with board(broker, username="board", password=USERS["board"]) as publish:
        await readings_arrive(config, influxdb, tmp_path, publish)
    assert source_messages(caplog, logging.WARNING) == [
        f"mqtt {broker.url}: the broker refused 1 of 2 subscriptions: planta/furnace-1/t "
        "(does its ACL let this user read them?)"
    ]
    assert (
        source_messages(caplog, logging.INFO)[-1]
        == f"mqtt {broker.url}: connected, 1 subscriptions"
    )


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param(
            {"AGUANTE_MQTT_USERNAME": "collector", "AGUANTE_MQTT_PASSWORD": "not-the-password"},
            id="wrong-password",
        ),
        pytest.param(
            {"AGUANTE_MQTT_USERNAME": "nobody", "AGUANTE_MQTT_PASSWORD": "nobodys-password"},
            id="unknown-user",
        ),
        pytest.param({}, id="no-credentials"),
    ],
)
async def test_refused_credentials_are_said_once(
    environ: dict[str, str],
    start_broker: Callable[..., Mosquitto],
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = start_broker(users=USERS)
    config = make_config(influxdb, broker.url, environ=environ)
    await refused_quietly_then_stops(config, tmp_path, caplog)
    assert source_messages(caplog, logging.WARNING) == [
        f"mqtt {broker.url}: the broker refused the connection: Not authorized "
        "(check AGUANTE_MQTT_USERNAME and AGUANTE_MQTT_PASSWORD); retrying with backoff"
    ]
    secret = environ.get("AGUANTE_MQTT_PASSWORD")
    assert secret is None or secret not in caplog.text
