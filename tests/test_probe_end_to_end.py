"""`aguante probe` against the metalworks simulator over real Modbus TCP, RTU over TCP and RTU on
a pseudo-terminal. The probe is told only what a worker knows — the link, the unit, the number on
the display — and its answer is compared with the simulator's own register map."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.config import REGISTER_COUNT, ModbusDevice, Signal
from collector.decode import decode_signal
from collector.probe import (
    Candidate,
    Finder,
    Pacer,
    Prober,
    display_tolerance,
    parse_display,
    scan_registers,
    scan_units,
)
from collector.sources.modbus import make_client
from simulators import Simulator, load_scenario, run_scenario
from simulators.scenario import Device
from simulators.scenario import Signal as SimSignal
from tests.simulation import MONDAY_MORNING, free_port_base, with_pty_dir

pytestmark = pytest.mark.integration

AGUANTE = [str(Path(sys.executable).parent / "aguante")]
NUMERIC = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")
RATE = 200.0  # requests a second: fast for the test, still paced


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    """The metalworks plant, time held at a Monday morning (the worker moves it on)."""
    scenario = with_pty_dir(load_scenario("metalworks"), tmp_path)
    async with run_scenario(
        scenario, port_base=free_port_base(8), start=MONDAY_MORNING, frozen=True
    ) as simulator:
        yield simulator


def _link(sim: Simulator, device: Device, unit: int, **extra: Any) -> ModbusDevice:
    endpoint = sim.endpoints[device.name]
    data: dict[str, Any] = {
        "transport": endpoint.transport,
        "unit": unit,
        "timeout": 0.5,
        "retries": 0,
        "signals": [{"name": "probe", "table": "holding", "address": 0}],
        **extra,
    }
    if endpoint.transport == "rtu":
        data["serial_port"] = str(endpoint.port)  # for rtu, the pty's path
    else:
        data["host"], data["port"] = endpoint.host, endpoint.port
    return ModbusDevice.model_validate(data)


def _display(value: float, signal: SimSignal) -> str:
    """The number as the machine's display would show it."""
    if signal.type.startswith("float"):
        decimals = 3 if signal.type == "float64" else 1
    else:
        decimals = max(0, -math.floor(math.log10(signal.scale) + 1e-9))
    return f"{value:.{decimals}f}"


def _is_truth(candidate: Candidate, signal: SimSignal) -> bool:
    return (
        candidate.address == signal.address
        and (candidate.type == signal.type or signal.type in candidate.twins)
        and (candidate.order == signal.order or REGISTER_COUNT[signal.type] == 1)
        and math.isclose(candidate.scale, signal.scale)
    )


def _same_registers_narrower(candidate: Candidate, signal: SimSignal) -> bool:
    # A reading of part of the true registers that showed the same number at every reading: no
    # number the display showed could tell them apart (a 64-bit counter still below 2**32).
    first, last = signal.address, signal.address + REGISTER_COUNT[signal.type] - 1
    return (
        first <= candidate.address
        and candidate.address + candidate.width - 1 <= last
        and candidate.width < REGISTER_COUNT[signal.type]
        and math.isclose(candidate.scale, signal.scale)
    )


async def test_find_recovers_every_numeric_signal_of_the_plant(sim: Simulator) -> None:
    outcome: dict[str, str] = {}
    scenario = sim.scenario
    for device in scenario.devices:
        for machine in device.machines:
            link = _link(sim, device, machine.unit)
            prober = Prober(make_client(link, lambda sending, data: data), Pacer(RATE))
            try:
                assert await prober.connect()
                for signal in machine.signals:
                    if signal.type not in NUMERIC:
                        continue
                    key = f"{machine.id}.{signal.name}"
                    outcome[key] = await _find_one(sim, prober, machine.id, signal)
            finally:
                prober.close()
    exact = sorted(k for k, v in outcome.items() if v == "exact")
    narrower = sorted(k for k, v in outcome.items() if v == "narrower")
    assert set(exact) | set(narrower) == set(outcome), outcome
    assert len(outcome) >= 20  # every numeric signal of the plant, every type and order
    orders = {
        (s.type, s.order)
        for d in scenario.devices
        for m in d.machines
        for s in m.signals
        if f"{m.id}.{s.name}" in exact
    }
    # Each 16- and 32-bit type and every order the plant uses came back exactly.
    for wanted in [
        ("uint16", "ABCD"),
        ("int16", "ABCD"),
        ("float32", "ABCD"),
        ("float32", "CDAB"),
        ("int32", "CDAB"),
        ("uint32", "CDAB"),
        ("uint32", "DCBA"),
        ("uint32", "BADC"),
        ("float64", "ABCD"),
    ]:
        assert wanted in orders, (wanted, outcome)


async def _find_one(sim: Simulator, prober: Prober, machine_id: str, signal: SimSignal) -> str:
    size = next(m for d in sim.scenario.devices for m in d.machines if m.id == machine_id).size(
        signal.table
    )
    unit = next(m.unit for d in sim.scenario.devices for m in d.machines if m.id == machine_id)
    finder = Finder(base=0)
    candidates: list[Candidate] = []
    for _ in range(6):
        value = float(sim.values(machine_id)[signal.name])
        text = _display(value, signal)
        if parse_display(text) == 0:  # every empty register shows 0: wait for a number
            sim.advance(61)
            continue
        registers = await prober.read_range(unit, signal.table, 0, size)
        candidates = finder.add(registers, parse_display(text), display_tolerance(text))
        assert candidates, f"{machine_id}.{signal.name}: nothing shows {text}"
        if _is_truth(candidates[0], signal):
            _check_snippet(candidates[0], signal, registers, value, text)
            return "exact"
        sim.advance(997)  # the worker waits for the display to change, the machine to stop
    if (
        candidates
        and _same_registers_narrower(candidates[0], signal)
        and any(_is_truth(c, signal) for c in candidates)
    ):
        return "narrower"
    raise AssertionError(
        f"{machine_id}.{signal.name}: best {candidates[0] if candidates else None} "
        f"after {len(finder.readings)} readings"
    )


def _check_snippet(
    candidate: Candidate, signal: SimSignal, registers: list[int], value: float, text: str
) -> None:
    # The printed config line, decoded by the collector itself, shows the display's number.
    entry = candidate.signal("value", signal.table)  # type: ignore[arg-type]
    entry["type"] = signal.type  # the twin a worker picks knowing the sign
    parsed = Signal.model_validate(entry)
    got = decode_signal(parsed, registers[signal.address : signal.address + parsed.register_count])
    assert abs(float(got) - parse_display(text)) <= display_tolerance(text) * 1.01
    assert math.isclose(float(got), value, rel_tol=1e-6, abs_tol=display_tolerance(text))


async def test_scan_finds_the_units_and_ranges_that_exist(sim: Simulator) -> None:
    scenario = sim.scenario
    gateway = next(d for d in scenario.devices if d.name == "gateway-1")
    link = _link(sim, gateway, 1, timeout=0.2)
    rate = 100.0
    prober = Prober(make_client(link, lambda sending, data: data), Pacer(rate))
    try:
        assert await prober.connect()
        before = sim.request_count("gateway-1")
        started = time.monotonic()
        answers = await scan_units(prober, range(1, 7))
        elapsed = time.monotonic() - started
        assert [a.unit for a in answers if a.present] == sorted(m.unit for m in gateway.machines)
        sent = sim.request_count("gateway-1") - before
        assert sent == prober.requests == 6
        assert elapsed >= (sent - 1) / rate * 0.95  # within its rate, counted at the device
        for machine in gateway.machines:
            for table in ("coil", "discrete", "holding", "input"):
                before = sim.request_count("gateway-1")
                started = time.monotonic()
                scan = await scan_registers(prober, machine.unit, table, 0, 400, resolution=10)
                elapsed = time.monotonic() - started
                size = machine.size(table)
                expected = [(0, size - 1)] if size else []
                assert scan.ranges == expected, (machine.id, table, scan)
                sent = sim.request_count("gateway-1") - before
                assert sent == scan.requests
                assert elapsed >= (sent - 1) / rate * 0.95
    finally:
        prober.close()


async def test_probe_find_command_prints_the_line_for_the_config(sim: Simulator) -> None:
    scenario = sim.scenario
    moulder = next(d for d in scenario.devices if d.name == "moulder-plc")
    machine = moulder.machines[0]
    signal = next(s for s in machine.signals if s.name == "zone2_temp")
    text = _display(float(sim.values(machine.id)[signal.name]), signal)
    endpoint = sim.endpoints["moulder-plc"]
    process = await asyncio.create_subprocess_exec(
        *AGUANTE,
        "probe",
        "find",
        "--host",
        str(endpoint.host),
        "--port",
        str(endpoint.port),
        "--unit",
        str(machine.unit),
        "--expect",
        text.replace(".", ","),
        "--count",
        str(machine.size("holding")),
        "--name",
        "zone2_temp",
        "--lang",
        "es",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert "forma(s) de leer holding" in lines[0]
    snippet = yaml.safe_load(next(line for line in lines if line.strip().startswith("- ")))
    assert snippet == [
        {"name": "zone2_temp", "table": "holding", "address": 2, "type": "float32", "order": "CDAB"}
    ]
