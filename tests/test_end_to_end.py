"""End to end: the metalworks simulation → the collector → a real InfluxDB.

The simulator computes engineering values and encodes them with its own code; the collector
decodes them with its own. Comparing what InfluxDB stored with the simulator's values checks
every type and byte order of the example config across the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.app import Collector
from collector.config import Config, parse_config
from collector.sinks.influxdb import InfluxDBSink
from collector.sources.modbus import ModbusConnection
from simulators import Simulator, load_scenario, run_scenario
from tests.conftest import InfluxDBDatabase
from tests.services import InfluxDB, Mosquitto
from tests.simulation import MONDAY_MORNING, free_port_base, with_pty_dir
from tests.waiting import eventually as _eventually

# Their checks query InfluxDB, blocking the collector's loop meanwhile: asked every 0.1 s.
eventually = functools.partial(_eventually, every=0.1)

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parent.parent / "examples" / "metalworks.yaml"
DEFAULT_PORT_BASE = 5020


def example_config(
    port_base: int,
    pty_dir: Path,
    url: str,
    database: str,
    mqtt_url: str | None = None,
    **influx: Any,
) -> Config:
    """examples/metalworks.yaml moved to this test's ports, pty folder, database and broker
    (without a broker: its Modbus machines only)."""
    text = example_yaml(port_base, pty_dir, url, database, mqtt_url, **influx)
    return parse_config(text, environ={})


def example_yaml(
    port_base: int,
    pty_dir: Path,
    url: str,
    database: str,
    mqtt_url: str | None = None,
    **influx: Any,
) -> str:
    """The text of `example_config`, for a collector run as its own process."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["influxdb"] = {"url": url, "database": database, "flush_interval": 0.1} | influx
    data["stats_interval"] = 0.5
    data["state_file"] = str(pty_dir / "aguante-state.json")
    if "maintenance" in data:
        data["maintenance"]["store"] = f"sqlite:///{pty_dir / 'aguante-tickets.db'}"
    if mqtt_url is None:
        data.pop("mqtt", None)
        data["machines"] = [m for m in data["machines"] if "modbus" in m]
        for machine in data["machines"]:
            machine.pop("mqtt", None)
        kept = {m["id"] for m in data["machines"]}
        rules = data.get("maintenance", {}).get("rules", [])
        for rule in rules:
            rule["machines"] = [m for m in rule.get("machines", []) if m in kept]
        data.get("maintenance", {})["rules"] = [r for r in rules if r["machines"]]
        data.get("maintenance", {}).pop("notifications", None)
        for crew in data.get("maintenance", {}).get("crews", []):
            crew.pop("notify", None)
    else:
        data["mqtt"]["url"] = mqtt_url
        data["mqtt"]["client_id"] = f"aguante-test-{database}"
    for machine in data["machines"]:
        device = machine.get("modbus")
        if device is None:
            continue
        device["poll_interval"] = 0.2
        device["timeout"] = 1.0
        device["retries"] = 0
        if "port" in device:
            device["port"] = port_base + device["port"] - DEFAULT_PORT_BASE
        if "serial_port" in device:
            device["serial_port"] = str(pty_dir / Path(device["serial_port"]).name)
    data["buffer"] = {"directory": str(pty_dir / "buffer")}
    data["influxdb"]["quarantine_file"] = str(pty_dir / "quarantine.jsonl")
    return yaml.safe_dump(data, allow_unicode=True)


@contextlib.asynccontextmanager
async def running(collector: Collector) -> AsyncIterator[Collector]:
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        yield collector
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    port_base = free_port_base(8)
    scenario = with_pty_dir(load_scenario("metalworks"), tmp_path)
    async with run_scenario(
        scenario, port_base=port_base, seed=3, start=MONDAY_MORNING, frozen=True
    ) as simulator:
        yield simulator


def port_base_of(sim: Simulator) -> int:
    return min(int(e.port) for e in sim.endpoints.values() if e.transport != "rtu")


def make_collector(
    sim: Simulator, tmp_path: Path, influx: InfluxDBDatabase | InfluxDB, database: str
) -> Collector:
    if isinstance(influx, InfluxDBDatabase):
        influx.create()  # so the test may query before the collector's first write
    config = example_config(port_base_of(sim), tmp_path, influx.url, database)
    sink = InfluxDBSink.from_config(config.influxdb)
    return Collector(
        config,
        sink=sink,
        quarantine_path=tmp_path / "quarantine.jsonl",
        buffer_path=tmp_path / "buffer",
    )


def latest(influxdb: InfluxDBDatabase, machine: str) -> dict[str, Any]:
    rows = influxdb.query(
        f"SELECT * FROM reading WHERE machine = '{machine}' ORDER BY time DESC LIMIT 1"
    )
    return rows[0] if rows else {}


async def test_stored_values_equal_what_the_simulated_machines_serve(
    sim: Simulator, influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    collector = make_collector(sim, tmp_path, influxdb, influxdb.database)
    machines = {m.id: m for m in collector.config.machines}
    async with running(collector):
        # Frozen time: every poll reads the same registers, so any stored row can be compared.
        await eventually(lambda: all(latest(influxdb, m) for m in machines))
    checked = 0
    for machine_id, machine in machines.items():
        stored = latest(influxdb, machine_id)
        served = sim.values(machine_id)
        assert stored["factory"] == collector.config.factory
        assert stored["sector"] == machine.sector
        assert machine.modbus is not None
        for signal in machine.modbus.signals:
            value, expected = stored[signal.name], served[signal.name]
            if signal.field_kind == "float":
                # Encoding rounds to the register's resolution (scale) or to float32.
                assert value == pytest.approx(expected, abs=abs(signal.scale), rel=1e-6), signal
            elif signal.field_kind == "int":
                # The simulator rounds measurements and floors counters, which wrap as PLCs do.
                wrap = 2 ** (16 * signal.register_count)
                candidates = {math.floor(expected), round(expected)}
                assert value in candidates | {c % wrap for c in candidates}, signal
            else:
                assert value == expected, (machine_id, signal.name)
            checked += 1
    assert checked == sum(len(m.modbus.signals) for m in machines.values() if m.modbus)
    # The last raw frames of each link are kept for bug reports: a request and its answer.
    for source in collector.sources:
        assert isinstance(source, ModbusConnection)
        frames = source.last_frames()
        assert any(" -> " in f for f in frames) and any(" <- " in f for f in frames), frames
    assert not (tmp_path / "quarantine.jsonl").exists()


async def test_a_device_switched_off_delays_no_other_and_is_read_again(
    sim: Simulator, influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    collector = make_collector(sim, tmp_path, influxdb, influxdb.database)

    def count(machine: str) -> int:
        rows = influxdb.query(f"SELECT count(strokes) FROM reading WHERE machine = '{machine}'")
        return int(rows[0]["count"]) if rows else 0

    def polls(machine: str) -> int:
        rows = influxdb.query(f"SELECT count(shots) FROM reading WHERE machine = '{machine}'")
        return int(rows[0]["count"]) if rows else 0

    async with running(collector):
        await eventually(lambda: count("press-1") > 0)
        await sim.set_fault("press-plc", "drop")
        await asyncio.sleep(0.5)
        before = polls("moulder-1")
        await asyncio.sleep(2.0)
        after = polls("moulder-1")
        press_while_off = count("press-1")
        # The moulder is polled every 0.2 s; 2 s of a dead press must not slow it down.
        assert after - before >= 7
        await sim.clear_fault("press-plc")
        await eventually(lambda: count("press-1") > press_while_off)
    health = influxdb.query(
        "SELECT last(link_errors) AS link_errors, last(up) AS up FROM collector "
        "WHERE machine = 'press-1'"
    )[0]
    assert health["link_errors"] >= 1
    assert health["up"] is True


@pytest.mark.parametrize(
    ("fault", "arg", "counter"),
    [
        ("timeout", None, "timeouts"),
        ("exception", 4, "exceptions"),
        ("slow", 1.5, "timeouts"),  # slower than the 1 s the config waits
        ("garbage", None, "errors"),  # a bad CRC is dropped by the framer: no answer
    ],
)
async def test_device_faults_are_counted_and_its_neighbour_goes_on(
    sim: Simulator,
    influxdb: InfluxDBDatabase,
    tmp_path: Path,
    fault: str,
    arg: float | None,
    counter: str,
) -> None:
    collector = make_collector(sim, tmp_path, influxdb, influxdb.database)
    await sim.set_fault("furnace-1", fault, arg)
    async with running(collector):

        def counted() -> bool:
            rows = influxdb.query(
                f"SELECT last({counter}) AS n FROM collector WHERE machine = 'furnace-1'"
            )
            return bool(rows) and rows[0]["n"] >= 2

        await eventually(counted)
        # The lathe shares the furnace's gateway and keeps being read.
        assert latest(influxdb, "lathe-1")
    assert not latest(influxdb, "furnace-1")


async def test_influxdb_restarting_mid_run_loses_nothing(
    sim: Simulator, start_influxdb: Callable[..., InfluxDB], tmp_path: Path
) -> None:
    server = start_influxdb()
    server.create_database("restart")
    collector = make_collector(sim, tmp_path, server, "restart")
    sim.unfreeze()

    def stored() -> int:
        rows = server.query("SELECT count(voltage) FROM reading", database="restart")
        return int(rows[0]["count"]) if rows else 0

    async with running(collector):
        await eventually(lambda: stored() > 0)
        server.stop()
        await asyncio.sleep(2.0)  # readings pile up in the buffer meanwhile
        assert collector.delivery is not None
        assert collector.delivery.stats().depth > 0
        server.start()
        await eventually(
            lambda: collector.delivery is not None and collector.delivery.stats().depth == 0
        )
    assert collector.delivery is not None
    stats = collector.delivery.stats()
    assert stats.dropped == 0 and stats.quarantined == 0
    lathe_polls = next(h for s in collector.sources for h in s.health() if h.machine == "lathe-1")
    # Every good poll of the lathe is one stored point; none lost across the restart.
    assert stored() == lathe_polls.good_polls


async def test_the_whole_example_plant_arrives_over_modbus_and_mqtt(
    influxdb: InfluxDBDatabase, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Both worlds of examples/metalworks.yaml at once: every machine, every signal stored."""
    influxdb.create()
    port_base = free_port_base(8)
    scenario = with_pty_dir(load_scenario("metalworks"), tmp_path)
    async with run_scenario(
        scenario,
        port_base=port_base,
        seed=5,
        start=MONDAY_MORNING,
        mqtt_url=mosquitto.url,
        board_period=0.2,
    ):
        config = example_config(
            port_base, tmp_path, influxdb.url, influxdb.database, mqtt_url=mosquitto.url
        )
        sink = InfluxDBSink.from_config(config.influxdb)
        collector = Collector(
            config,
            sink=sink,
            quarantine_path=tmp_path / "quarantine.jsonl",
            buffer_path=tmp_path / "buffer",
        )
        expected = {
            m.id: {s.name for s in (m.modbus.signals if m.modbus else [])}
            | {s.name for board in m.mqtt for s in board.signals}
            for m in config.machines
        }
        for board in config.mqtt.subscriptions:
            for machine in expected:
                if board.machine in (None, machine) and any(
                    machine in t for t in [board.topic.replace("{machine}", machine)]
                ):
                    pass  # placeholder boards are checked through the machines that have them

        def stored() -> dict[str, set[str]]:
            found: dict[str, set[str]] = {}
            for row in influxdb.query("SELECT * FROM reading GROUP BY machine"):
                found.setdefault(row["machine"], set()).update(
                    k for k, v in row.items() if v is not None and k not in ("time", "_name")
                )
            return found

        def missing() -> dict[str, set[str]]:
            found = stored()
            gaps = {m: names - found.get(m, set()) for m, names in expected.items()}
            return {m: gap for m, gap in gaps.items() if gap}

        async with running(collector):
            with contextlib.suppress(TimeoutError):
                await eventually(lambda: not missing(), within=30)
    assert missing() == {}
    assert not (tmp_path / "quarantine.jsonl").exists()
