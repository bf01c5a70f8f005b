"""The Modbus source over an in-memory link: decoding, counting faults, logging once, reconnect."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from collector.config import Config, parse_config
from collector.sources import Reading
from collector.sources.modbus import ModbusConnection, modbus_sources
from tests.collector.fake_modbus import FakeLink

CONFIG = """
factory: coop
sectors: [{id: press}]
machines:
  - id: press-1
    sector: press
    modbus:
      transport: rtu-over-tcp
      host: 127.0.0.1
      port: 5020
      unit: 1
      poll_interval: 0.01
      timeout: 0.01
      signals:
        - {name: cycles, table: holding, address: 0, type: uint16}
        - {name: oil_temp, table: holding, address: 1, type: int16, scale: 0.1}
        - {name: running, table: coil, address: 0, type: bool}
  - id: press-2
    sector: press
    modbus:
      transport: rtu-over-tcp
      host: 127.0.0.1
      port: 5020
      unit: 2
      poll_interval: 0.01
      timeout: 0.01
      signals:
        - {name: cycles, table: holding, address: 0, type: uint16}
  - id: lathe-1
    sector: press
    modbus:
      host: 127.0.0.1
      port: 5021
      signals: [{name: power, table: input, address: 0, type: float32, order: CDAB}]
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG, environ={})


async def take(connection: ModbusConnection, n: int) -> list[Reading]:
    readings: list[Reading] = []
    iterator: AsyncIterator[Reading] = aiter(connection)
    async with asyncio.timeout(5):
        while len(readings) < n:
            readings.append(await anext(iterator))
    await iterator.aclose()  # type: ignore[attr-defined]
    return readings


def test_machines_on_one_gateway_share_one_connection(config: Config) -> None:
    names = [c.name for c in modbus_sources(config, client_factory=FakeLink())]
    assert names == ["rtu-over-tcp://127.0.0.1:5020", "tcp://127.0.0.1:5021"]


async def test_values_are_decoded_with_one_request_per_block(config: Config) -> None:
    link = FakeLink()
    link.set(1, "holding", 0, 65535, 0xFF38)
    link.set(1, "coil", 0, 1)
    link.set(2, "holding", 0, 7)
    (gateway, _) = modbus_sources(config, client_factory=link)
    readings = await take(gateway, 2)
    by_machine = {r.machine: r.values for r in readings}
    assert by_machine["press-1"] == {
        "cycles": 65535,
        "oil_temp": pytest.approx(-20.0),
        "running": True,
    }
    assert by_machine["press-2"] == {"cycles": 7}
    assert sorted(link.requests[:3]) == [
        (1, "coil", 0, 1),
        (1, "holding", 0, 2),
        (2, "holding", 0, 1),
    ]


async def test_an_exception_code_is_counted_and_the_other_units_go_on(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    link = FakeLink(faults={1: 2})
    link.set(2, "holding", 0, 9)
    (gateway, _) = modbus_sources(config, client_factory=link)
    with caplog.at_level(logging.WARNING):
        readings = await take(gateway, 5)
    assert {r.machine for r in readings} == {"press-2"}
    press_1 = gateway.health()[0]
    assert press_1.exceptions[2] >= 10  # two requests a poll, each refused
    assert press_1.up is True  # it answers: the link and the device are alive
    assert "down" not in caplog.text


async def test_a_silent_unit_is_logged_down_once_and_back_once(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    link = FakeLink(faults={1: "timeout"})
    (gateway, _) = modbus_sources(config, client_factory=link)
    with caplog.at_level(logging.INFO):
        await take(gateway, 5)  # five polls of press-2 while press-1 stays silent
        health = gateway.health()[0]
        assert health.timeouts >= 4
        (silent,) = gateway.unavailable()  # the collector turns its state unknown at once
        assert silent.machine == "press-1" and "cycles" in silent.signals
        assert abs(silent.since_ms - time.time() * 1000) < 5000
        link.faults.clear()
        readings = await take(gateway, 10)
        assert gateway.unavailable() == []
    assert "press-1" in {r.machine for r in readings}
    assert caplog.text.count("press-1: device down") == 1
    assert caplog.text.count("press-1: device back") == 1
    # After a timeout the remaining request of that poll is skipped, not waited for again.
    assert health.requests < 2 * health.polls


async def test_a_dead_link_reconnects_with_backoff(config: Config) -> None:
    link = FakeLink(reachable=False)
    link.set(1, "holding", 0, 1)
    (gateway, _) = modbus_sources(
        config, client_factory=link, reconnect_initial=0.01, reconnect_max=0.04
    )
    iterator = aiter(gateway)
    pending = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0.3)
    assert not pending.done()
    # 0.01 + 0.02 + 0.04 + 0.04 … ≈ 8 tries in 0.3 s; without the backoff cap it would be fewer,
    # without backoff at all, hundreds.
    assert 4 <= link.connects <= 12
    assert all(h.up is False for h in gateway.health())
    link.reachable = True
    reading = await asyncio.wait_for(pending, 2)
    assert reading.machine in {"press-1", "press-2"}
    await iterator.aclose()  # type: ignore[attr-defined]


async def test_an_answer_that_does_not_fit_its_request_is_not_decoded(config: Config) -> None:
    """A late RTU frame taken for the next request's answer must not become a value."""
    link = FakeLink()
    link.set(2, "holding", 0, 5)
    short = link.read_holding_registers

    async def stray(address: int, *, count: int = 1, device_id: int = 1) -> Any:
        response = await short(address, count=count, device_id=device_id)
        if device_id == 1:
            response.registers = response.registers[:1]  # one register for a read of two
        return response

    link.read_holding_registers = stray  # type: ignore[method-assign]
    (gateway, _) = modbus_sources(config, client_factory=link)
    readings = await take(gateway, 6)
    press_1 = [r.values for r in readings if r.machine == "press-1"]
    assert press_1 and all(set(values) == {"running"} for values in press_1)
    assert gateway.health()[0].bad_answers == len(press_1)


async def test_a_link_that_accepts_then_drops_backs_off_and_logs_once(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    link = FakeLink(drops_every_read=True)
    (gateway, _) = modbus_sources(
        config, client_factory=link, reconnect_initial=0.01, reconnect_max=0.04
    )
    iterator = aiter(gateway)
    with caplog.at_level(logging.INFO):
        pending = asyncio.ensure_future(anext(iterator))
        await asyncio.sleep(0.3)
        assert 4 <= link.connects <= 12  # backoff, not one reconnect per loop turn
        link.drops_every_read = False
        link.set(1, "holding", 0, 1)
        await asyncio.wait_for(pending, 2)
    await iterator.aclose()  # type: ignore[attr-defined]
    assert caplog.text.count("link down") == 1
    assert caplog.text.count("link back up") == 1


async def test_pause_between_requests_holds_between_units_of_one_bus() -> None:
    text = CONFIG.replace(
        "poll_interval: 0.01\n", "poll_interval: 0.01\n      pause_between_requests: 0.05\n"
    )
    link = FakeLink()
    (gateway, _) = modbus_sources(parse_config(text, environ={}), client_factory=link)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await take(gateway, 4)
    # press-1 takes two requests a poll, press-2 one: at least 5 requests, 4 pauses of 50 ms
    # between them, whichever unit each was for.
    assert len(link.requests) >= 5
    assert loop.time() - started >= 0.05 * (len(link.requests) - 1) - 0.01


def test_devices_connected_together_are_spread_over_their_interval() -> None:
    # A thousand devices connected at once, all due at the same instant every second, made the
    # last of them wait up to 0.2 s each time (benchmarks: scale-1000); a few stay together.
    from collector.sources.modbus import DEVICES_PER_PHASE, PHASE_SPREAD_MAX, _phase

    phases = [_phase(f"m-{n}", 1.0, 10) for n in range(1000)]
    assert sorted(set(phases)) == [n / 10 for n in range(10)]
    assert max(phases.count(p) for p in set(phases)) < 2 * DEVICES_PER_PHASE
    assert {_phase(f"m-{n}", 1.0, 1) for n in range(20)} == {0.0}  # one turn for a few
    assert _phase("m-7", 1.0, 10) == _phase("m-7", 1.0, 10)  # the same at every start
    assert _phase("slow", 600.0, 10) < PHASE_SPREAD_MAX


def test_devices_of_one_phase_are_due_together_whenever_they_connected() -> None:
    # Each device has its own connection, made at its own instant: their polls still fall in
    # one turn of the event loop (the plant benchmark: 20 wake-ups a second cost more CPU).
    from collector.sources.modbus import _first_due, _phase

    dues = {_first_due(1000.001 + n * 0.013, f"m-{n}", 1.0, 1) for n in range(20)}
    assert dues == {1001.0}
    due = _first_due(1000.25, "m-3", 1.0, 10)
    assert due == 1001.0 + _phase("m-3", 1.0, 10) and due - 1000.25 <= 2.0
    assert _first_due(1000.25, "slow", 600.0, 1) == 1001.0  # within a second, not 10 min


async def test_the_phases_follow_the_number_of_devices() -> None:
    from collector.sources.modbus import modbus_sources

    def phases(devices: int) -> set[int]:
        machines = "".join(
            f"  - {{id: m{n}, sector: s, modbus: {{host: 127.0.0.1, port: {1000 + n},"
            " signals: [{name: v, table: holding, address: 0, type: uint16}]}}\n"
            for n in range(devices)
        )
        config = parse_config(
            f"factory: f\nsectors: [{{id: s}}]\nmachines:\n{machines}", environ={}
        )
        return {source._phases for source in modbus_sources(config)}

    assert phases(20) == {1}
    assert phases(250) == {3}
