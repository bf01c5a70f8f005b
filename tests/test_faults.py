"""Faults injected into real processes: InfluxDB stopped, the collector killed with SIGKILL over
and over, a damaged buffer, a buffer that fills up. Nothing the collector took may be lost.

The simulators serve the metalworks plant frozen in time, so every stored reading can be
compared with what they serve; an MQTT publisher numbers its messages, so a missing one shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.app import Collector
from collector.buffer import DiskBuffer, buffered_lines, inspect_buffer
from collector.config import parse_config
from collector.lineprotocol import decode_line
from collector.sinks.influxdb import InfluxDBSink
from simulators import Simulator
from tests.services import InfluxDB, Mosquitto
from tests.test_end_to_end import (
    eventually,
    example_config,
    example_yaml,
    make_collector,
    port_base_of,
    running,
    sim,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.integration

SIGKILL_CYCLES = 20
SEQUENCE_TOPIC = "sensores/press-1/current"  # a plain number on the example's clamp topics


def stored_readings(server: InfluxDB, database: str) -> dict[str, list[dict[str, Any]]]:
    rows = server.query("SELECT * FROM reading GROUP BY machine", database=database)
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_machine.setdefault(row["machine"], []).append(row)
    return by_machine


async def test_influxdb_outage_every_reading_of_every_machine_arrives(
    sim: Simulator,  # noqa: F811
    start_influxdb: Callable[..., InfluxDB],
    tmp_path: Path,
) -> None:
    server = start_influxdb()
    server.create_database("outage")
    collector = make_collector(sim, tmp_path, server, "outage")
    config = collector.config
    async with running(collector):
        await eventually(lambda: bool(stored_readings(server, "outage")))
        server.stop()
        await asyncio.sleep(3.0)
        assert collector.delivery is not None
        assert collector.delivery.stats().depth > 0  # it really held readings on disk
        assert collector.delivery.stats().backlog_s >= 2.0  # and says how old they are
        assert inspect_buffer(tmp_path / "buffer").lines > 0
        server.start()
        await eventually(
            lambda: collector.delivery is not None and not collector.delivery.stats().depth
        )
        polls = {h.machine: h.good_polls for s in collector.sources for h in s.health()}
    stored = stored_readings(server, "outage")
    # Series by series: one point per good poll, each equal to what the simulator serves.
    assert set(stored) == set(polls)
    for machine in config.machines:
        rows = stored[machine.id]
        assert len(rows) == polls[machine.id], machine.id
        served = sim.values(machine.id)
        assert machine.modbus is not None
        for signal_ in machine.modbus.signals:
            if signal_.field_kind == "bool":
                assert {row[signal_.name] for row in rows} == {served[signal_.name]}
            elif signal_.field_kind == "float":
                expected = served[signal_.name]
                assert all(
                    row[signal_.name] == pytest.approx(expected, abs=abs(signal_.scale), rel=1e-6)
                    for row in rows
                ), (machine.id, signal_.name)
            else:  # frozen: every poll reads the same integer
                assert len({row[signal_.name] for row in rows}) == 1, (machine.id, signal_.name)
    stats = collector.delivery.stats()
    assert (stats.dropped, stats.quarantined, stats.corrupt, stats.depth) == (0, 0, 0, 0)
    assert stats.retried > 0


class SequencePublisher:
    """Publishes 1, 2, 3… at QoS 1; `acked` are the numbers the broker confirmed, so they are
    the broker's to deliver and the collector's to keep."""

    def __init__(self, broker: Mosquitto) -> None:
        self.acked: set[int] = set()
        self._mids: dict[int, int] = {}
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sequence-publisher")
        self._client.on_publish = self._on_publish
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        self._next = 1

    def _on_publish(self, client: Any, userdata: Any, mid: int, *args: Any) -> None:
        number = self._mids.pop(mid, None)
        if number is not None:
            self.acked.add(number)

    def publish(self, count: int) -> None:
        for _ in range(count):
            info = self._client.publish(SEQUENCE_TOPIC, str(self._next), qos=1)
            self._mids[info.mid] = self._next
            self._next += 1

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[SequencePublisher]:
    client = SequencePublisher(mosquitto)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def collector_process(config_path: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "collect", str(config_path)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=config_path.parent,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def subscribed(log: Path) -> int:
    """How many times the collector logging to `log` had its MQTT subscriptions granted."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count(": connected, ")


def wait_for(check: Callable[[], bool], within: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise AssertionError(f"waited {within} s for {what}\n{tail}")
        time.sleep(0.05)


async def test_sigkill_during_an_outage_loses_nothing_the_buffer_took(
    sim: Simulator,  # noqa: F811
    start_influxdb: Callable[..., InfluxDB],
    mosquitto: Mosquitto,
    publisher: SequencePublisher,
    tmp_path: Path,
) -> None:
    server = start_influxdb()
    server.create_database("killed")
    text = example_yaml(port_base_of(sim), tmp_path, server.url, "killed", mosquitto.url)
    config_path = tmp_path / "plant.yaml"
    config_path.write_text(text, encoding="utf-8")
    config = parse_config(text, environ={})
    buffer_dir = Path(config.buffer.directory)
    log = tmp_path / "collector.log"
    server.stop()  # InfluxDB is down for all the kills
    taken: set[str] = set()  # every line the buffer held when the collector was killed

    def run_and_kill() -> None:
        before = inspect_buffer(buffer_dir).lines
        sessions = subscribed(log)
        with collector_process(config_path, log) as process:
            # Killed once it has taken readings of its own and the broker has answered its
            # SUBSCRIBE: messages published before the first SUBSCRIBE ever are kept for nobody.
            wait_for(
                lambda: (
                    (inspect_buffer(buffer_dir).lines > before and subscribed(log) > sessions)
                    or process.poll() is not None
                ),
                20.0,
                "the collector's first readings and its subscriptions",
                log,
            )
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            publisher.publish(10)
            time.sleep(0.3)
            process.send_signal(signal.SIGKILL)
        taken.update(buffered_lines(buffer_dir))

    for _ in range(SIGKILL_CYCLES):
        await asyncio.to_thread(run_and_kill)
    assert len(publisher.acked) >= SIGKILL_CYCLES * 10 - 10  # the broker confirmed them
    server.start()
    with collector_process(config_path, log) as process:
        missing: set[int] = set()

        def drained() -> bool:
            rows = server.query(
                "SELECT current FROM reading WHERE machine = 'press-1'", database="killed"
            )
            numbers = {int(row["current"]) for row in rows if row.get("current") is not None}
            missing.clear()
            missing.update(publisher.acked - numbers)
            return not missing and inspect_buffer(buffer_dir).lines < 500

        try:
            await asyncio.to_thread(wait_for, drained, 60.0, "the backlog to be written")
        except AssertionError as exc:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{exc}; messages missing: {sorted(missing)}\n{tail}") from None
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output[-3000:]
    # Every line the buffer had taken before a SIGKILL is in InfluxDB, with the same values.
    readings = {
        (row["machine"], row["time"]): row
        for row in server.query("SELECT * FROM reading GROUP BY machine", database="killed")
    }
    checked = 0
    for line in taken:
        point = decode_line(line)
        if point.measurement != "reading":
            continue
        row = readings.get((point.tags["machine"], point.time_ms))
        assert row is not None, f"lost: {line}"
        for name, value in point.fields.items():
            assert row[name] == pytest.approx(value), (line, name)
        checked += 1
    assert checked > SIGKILL_CYCLES  # readings were taken in every cycle
    # Each acknowledged message is stored once: a repeat after a kill is the same point again.
    rows = server.query("SELECT current FROM reading WHERE machine = 'press-1'", database="killed")
    numbers = [int(row["current"]) for row in rows if row.get("current") is not None]
    assert publisher.acked <= set(numbers)
    assert len(numbers) == len(set(numbers)), "a message was stored at two time stamps"


async def test_a_damaged_buffer_opens_and_its_good_records_are_written(
    start_influxdb: Callable[..., InfluxDB], tmp_path: Path
) -> None:
    buffer = DiskBuffer(tmp_path / "buffer", max_bytes=1 << 20, segment_bytes=1 << 16)
    for i in range(300):
        buffer.put(
            [f"reading,factory=coop,machine=press-1,sector=press v={i}i {1_700_000_000_000 + i}"]
        )
    buffer.close()
    [segment] = sorted((tmp_path / "buffer").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"\xff" * 8  # a damaged sector in the middle
    segment.write_bytes(bytes(data[:-5]))  # and a write cut short at the end
    info = inspect_buffer(tmp_path / "buffer")
    assert info.lost_bytes > 0 and 290 <= info.lines < 300

    server = start_influxdb()
    server.create_database("damaged")
    config = parse_config(
        f"""
factory: coop
influxdb: {{url: "{server.url}", database: damaged, flush_interval: 0.1}}
buffer: {{directory: "{tmp_path / "buffer"}"}}
sectors: [{{id: press}}]
machines:
  - id: press-1
    sector: press
    modbus: {{host: 127.0.0.1, port: 9, signals: [{{name: v, table: holding, address: 0}}]}}
""",
        environ={},
    )
    collector = Collector(
        config,
        sink=InfluxDBSink.from_config(config.influxdb),
        sources=[],
        quarantine_path=tmp_path / "q.jsonl",
    )
    async with running(collector):
        await eventually(
            lambda: collector.delivery is not None and not collector.delivery.stats().depth
        )
        assert collector.delivery is not None
        # A lower bound: a record whose header was hit cannot say how many lines it held.
        assert 1 <= collector.delivery.stats().corrupt <= 300 - info.lines
    rows = server.query("SELECT v FROM reading", database="damaged")
    values = [row["v"] for row in rows]
    assert len(values) == info.lines
    assert values == sorted(values) and values[0] == 0  # the records before the damage…
    assert max(values) >= 290  # …and after it
    # The collector says how many it could not read back, in its own measurement.
    health = server.query(
        "SELECT last(corrupt) AS corrupt FROM collector WHERE machine = '_buffer'",
        database="damaged",
    )
    assert health[0]["corrupt"] == collector.delivery.stats().corrupt


async def test_a_full_buffer_drops_the_oldest_and_counts_them(
    sim: Simulator,  # noqa: F811
    start_influxdb: Callable[..., InfluxDB],
    tmp_path: Path,
) -> None:
    server = start_influxdb()
    server.create_database("full")
    config = example_config(port_base_of(sim), tmp_path, server.url, "full")
    config = config.model_copy(
        update={
            "buffer": config.buffer.model_copy(
                update={"max_bytes": 4 * 4096, "segment_bytes": 4096}
            )
        }
    )
    collector = Collector(
        config,
        sink=InfluxDBSink.from_config(config.influxdb),
        quarantine_path=tmp_path / "q.jsonl",
        buffer_path=tmp_path / "buffer",
    )
    server.stop()
    async with running(collector):
        await eventually(lambda: collector.delivery is not None)
        assert collector.delivery is not None
        delivery = collector.delivery
        await eventually(lambda: delivery.stats().dropped > 200, within=30)
        sizes = [p.stat().st_size for p in (tmp_path / "buffer").glob("*.seg")]
        assert sum(sizes) <= 4 * 4096
        server.start()
        await eventually(lambda: delivery.stats().depth == 0)
        await asyncio.sleep(config.stats_interval * 2)  # a health point after the outage
    stats = delivery.stats()
    polls = sum(h.good_polls for s in collector.sources for h in s.health())
    stored = sum(len(rows) for rows in stored_readings(server, "full").values())
    # Only what the policy dropped is missing: every other reading is stored.
    assert stored + stats.dropped >= polls  # dropped counts state and health lines too
    assert stored < polls
    [health] = server.query(
        "SELECT last(dropped) AS dropped FROM collector WHERE machine = '_buffer'", database="full"
    )
    assert health["dropped"] == stats.dropped


@pytest.fixture(autouse=True)
def _no_buffer_in_the_working_directory() -> Iterator[None]:
    # A collector given no buffer path uses the config's; none of these may land in the repo.
    before = Path("aguante-buffer").exists()
    yield
    assert Path("aguante-buffer").exists() == before


@pytest.mark.parametrize(("fault", "arg"), [("slow", 1.5), ("garbage", None), ("drop", None)])
async def test_a_failing_device_costs_the_others_no_polls(
    sim: Simulator,  # noqa: F811
    start_influxdb: Callable[..., InfluxDB],
    tmp_path: Path,
    fault: str,
    arg: float | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_influxdb()
    server.create_database("faulty")
    collector = make_collector(sim, tmp_path, server, "faulty")
    config = collector.config

    def good_polls() -> dict[str, int]:
        return {h.machine: h.good_polls for s in collector.sources for h in s.health()}

    async with running(collector):
        await eventually(lambda: all(good_polls().values()))
        await sim.set_fault("press-plc", fault, arg)
        await asyncio.sleep(1.0)
        before = good_polls()
        await asyncio.sleep(3.0)
        after = good_polls()
        await sim.clear_fault("press-plc")
    # Every other link is polled every 0.2 s: 15 polls in 3 s, less a little scheduling slack.
    press = next(m for m in config.machines if m.id == "press-1")
    assert press.modbus is not None
    others = [
        m.id for m in config.machines if m.modbus is not None and m.modbus.port != press.modbus.port
    ]
    assert len(others) >= 4
    for machine in others:
        assert after[machine] - before[machine] >= 13, (machine, fault, before, after)
    assert after["press-1"] - before["press-1"] <= 1  # it really was failing
    # Logged once, not once a poll: no traceback for each garbled answer. (pymodbus's own
    # logger, which says something at every timeout, is silenced by `aguante collect`.)
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and not r.name.startswith("pymodbus")
    ]
    assert not errors, [r.getMessage() for r in errors]
    undecodable = [r for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(undecodable) == (1 if fault == "garbage" else 0)
