"""Start-up and shut-down, the HTTP control endpoint, generated scenarios, scenario errors and
the `simulate` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from simulators import (
    Scenario,
    ScenarioError,
    Simulator,
    generate_scenario,
    load_scenario,
    run_scenario,
)
from tests.simulation import MONDAY_MORNING

REPO = Path(__file__).resolve().parents[2]


async def http(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode() if body is not None else b""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, data = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(data)


async def test_control_endpoint(sim: Simulator, port_base: int) -> None:
    port = port_base - 1
    status, devices = await http(port, "GET", "/devices")
    assert status == 200 and devices[0]["device"] == "press-plc"
    assert await http(
        port, "POST", "/faults", {"device": "welder-1", "kind": "exception", "arg": 4}
    )
    assert await http(port, "GET", "/faults") == (200, {"welder-1": "exception:4"})
    status, error = await http(port, "POST", "/faults", {"device": "nope", "kind": "drop"})
    assert status == 400 and "no device, machine or board 'nope'" in error["error"]
    status, error = await http(port, "POST", "/faults", {"device": "all", "kind": "melt"})
    assert status == 400 and "unknown fault kind 'melt'" in error["error"]
    assert (await http(port, "DELETE", "/faults/welder-1"))[0] == 200
    assert sim.faults() == {}
    assert await http(port, "POST", "/unfreeze") == (200, {"frozen": False})
    assert await http(port, "POST", "/freeze") == (200, {"frozen": True})
    status, now = await http(port, "POST", "/advance", {"seconds": 3600})
    assert now["time"].startswith("2025-03-03T10:00")
    assert (await http(port, "GET", "/nothing"))[0] == 404


def is_link(path: Path) -> bool:  # a quick local check; no need for a thread in a test
    return path.is_symlink()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_clean_start_and_stop(metalworks: Scenario, port_base: int) -> None:
    threads, tasks, fds = threading.active_count(), len(asyncio.all_tasks()), open_fds()
    pty = Path(str(metalworks.devices[-1].path))
    async with run_scenario(
        metalworks, port_base=port_base, control_port=port_base - 1, faults=["press-plc=drop"]
    ) as sim:
        assert is_link(pty)
        c = AsyncModbusTcpClient("127.0.0.1", port=port_base + 1, timeout=1, retries=0)
        await c.connect()
        await c.read_holding_registers(0, count=2, device_id=1)  # a connection left open
        await sim.set_fault("all", "slow", 5)
        pending = asyncio.create_task(c.read_holding_registers(0, count=2, device_id=1))
        await asyncio.sleep(0.1)  # the server is now sleeping inside a request
    c.close()
    await asyncio.gather(pending, return_exceptions=True)
    assert not is_link(pty)
    assert threading.active_count() == threads
    assert len(asyncio.all_tasks()) == tasks
    assert open_fds() <= fds


async def test_port_in_use_fails_cleanly(metalworks: Scenario, port_base: int) -> None:
    async with run_scenario(metalworks, port_base=port_base):
        with pytest.raises(OSError):
            async with run_scenario(metalworks.model_copy(), port_base=port_base):
                pass


async def test_generated_scenario_for_benchmarks(port_base: int) -> None:
    scenario = generate_scenario(devices=3, registers=200)
    async with run_scenario(
        scenario, port_base=port_base, start=MONDAY_MORNING, frozen=True
    ) as sim:
        assert [e.port for e in sim.endpoints.values()] == [port_base, port_base + 1, port_base + 2]
        c = AsyncModbusTcpClient("127.0.0.1", port=port_base + 2, timeout=1, retries=0)
        await c.connect()
        first = await c.read_holding_registers(0, count=125, device_id=1)
        rest = await c.read_holding_registers(125, count=75, device_id=1)
        c.close()
        assert first.registers[:3] == [0, 1, 2] and len(rest.registers) == 75
        sim.advance(10)
        assert sim.read_registers("dev-2", 1, "holding", 0, 3) == [10, 21, 32]
        assert sim.request_count("dev-2") == 2 and sim.request_count("dev-0") == 0


def test_packaged_metalworks_covers_every_type_and_order() -> None:
    signals = [
        s for d in load_scenario("metalworks").devices for m in d.machines for s in m.signals
    ]
    types = {s.type for s in signals}
    assert types == {
        "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
        "string",
    }  # fmt: skip
    assert {s.order for s in signals if s.type not in ("bool", "string")} >= {
        "ABCD", "CDAB", "BADC", "DCBA"
    }  # fmt: skip
    bools = {(s.table, s.bit is not None) for s in signals if s.type == "bool"}
    assert bools >= {("coil", False), ("discrete", False), ("holding", True)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["devices"][0]["machines"][0]["signals"][4].update(bit=3),
            "devices[0](press-plc).machines[0](press-1).signals[4](strokes): "
            "Value error, strokes: 'bit' is only for a bool packed in a register",
        ),
        (
            lambda d: d["devices"][1].update(offset=0),
            "Value error, two devices share a port offset",
        ),
        (
            lambda d: d["devices"][3]["machines"][1].update(unit=1),
            "devices[3](gateway-1): Value error, gateway-1: two machines share a unit id",
        ),
        (lambda d: d.update(timezone="Mars/Olympus"), "timezone: Value error, unknown time zone"),
        (
            lambda d: d["devices"][2]["machines"][0]["signals"][3].pop("count"),
            "'count' (registers) goes with 'type: string'",
        ),
    ],
)
def test_scenario_errors_name_the_key(tmp_path: Path, change: Any, message: str) -> None:
    import yaml

    data = load_scenario("metalworks").model_dump(mode="json")
    change(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: 1 problem(s)")
    assert message in str(info.value)


def test_unknown_scenario_name() -> None:
    with pytest.raises(
        ScenarioError, match="no scenario 'bakery': give a YAML path or one of: metalworks"
    ):
        load_scenario("bakery")


def test_simulate_command_serves_until_sigint(tmp_path: Path) -> None:
    from tests.simulation import free_port_base, with_pty_dir

    scenario = with_pty_dir(load_scenario("metalworks"), tmp_path)
    path = tmp_path / "plant.yaml"
    import yaml

    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json"), allow_unicode=True))
    base = free_port_base(8)
    script = (
        "import argparse, sys\n"
        "from simulators.cli import register\n"
        "p = argparse.ArgumentParser('aguante'); register(p.add_subparsers(required=True))\n"
        "a = p.parse_args(); sys.exit(a.func(a))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "simulate", str(path), "--port-base", str(base),
         "--fault", "welder-plc=timeout", "--speed", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(lines) + out
    assert proc.returncode == 0, err
    assert f"press-plc  tcp  127.0.0.1:{base}" in text
    assert f"control: http://127.0.0.1:{base - 1}/devices" in text
    assert text.rstrip().endswith("stopped")


def test_example_collector_config_reads_this_scenario() -> None:
    """examples/metalworks.yaml (the collector's format) must match the simulated map exactly."""
    from collector.config import load_config

    config = load_config(REPO / "examples" / "metalworks.yaml", environ={})
    scenario = load_scenario("metalworks")
    served = {
        (m.id, s.name): (d, m.unit, s)
        for d in scenario.devices
        for m in d.machines
        for s in m.signals
        if (m.id, s.name) != ("press-1", "horn")  # only ever written, never polled
    }
    for machine in config.machines:
        if machine.modbus is None:
            continue  # seen only through MQTT boards: test_boards checks those
        for read in machine.modbus.signals:
            device, unit, spec = served.pop((machine.id, read.name))
            assert machine.modbus.unit == unit
            if device.transport == "rtu":
                assert machine.modbus.serial_port == device.path
            else:
                assert (machine.modbus.transport, machine.modbus.port) == (
                    device.transport,
                    5020 + (device.offset or 0),
                )
            assert (
                read.wire_table,
                read.wire_address,
                read.type,
                read.order or "ABCD",
            ) == (
                spec.table,
                spec.address,
                spec.type,
                spec.order,
            ), (machine.id, read.name)
            assert (read.bit, read.count, read.scale, read.offset) == (
                spec.bit,
                spec.count,
                spec.scale,
                spec.offset,
            ), (machine.id, read.name)
    assert not served, f"served but not in the example: {sorted(served)}"


def test_simulators_import_nothing_from_the_other_packages() -> None:
    import ast

    for path in (REPO / "simulators").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            for name in names:
                assert name.split(".")[0] not in ("collector", "dashboards", "maintenance"), path
