"""Shifts, machine states, counters and wear: the behaviour a real floor would show."""

from __future__ import annotations

import datetime as dt

from simulators import Scenario, Simulator, run_scenario
from tests.simulation import MONDAY_MORNING


def strokes(sim: Simulator) -> int:
    return sim.read_registers("press-plc", 1, "holding", 0, 1)[0]


async def test_16_bit_stroke_counter_wraps_at_65536(sim: Simulator) -> None:
    start = strokes(sim)
    assert start == 65000  # the scenario's initial value, right at start-up
    seen = [start]
    for _ in range(6 * 60):  # at most six simulated hours, a minute at a time
        sim.advance(60)
        seen.append(strokes(sim))
        if seen[-1] < seen[-2]:
            break
    assert seen[-1] < seen[-2], "the counter never wrapped"
    # Across the wrap it still moved forward: (new - old) mod 65536 is a small step.
    assert 0 < (seen[-1] - seen[-2]) % 65536 <= 9


async def test_counter_advances_only_while_running(sim: Simulator) -> None:
    steps = {"running": 0, "other": 0}
    for _ in range(240):
        state = sim.machine_state("press-1")  # states hold for whole minutes
        before = strokes(sim)
        sim.advance(60)
        delta = (strokes(sim) - before) % 65536
        if state == "running":
            assert delta in (8, 9, 10), delta  # 9 strokes a minute, floored
            steps["running"] += 1
        else:
            assert delta == 0, f"counter moved by {delta} while {state}"
            steps["other"] += 1
    assert steps["running"] and steps["other"], steps  # both cases were really seen


async def test_shifts_and_breaks_in_plant_time(metalworks: Scenario, port_base: int) -> None:
    def at(hour: int, minute: int = 0, day: int = 3) -> dt.datetime:
        return dt.datetime(2025, 3, day, hour, minute)  # March 2025: the 3rd is a Monday

    cases = [
        (at(3), {"off"}),  # night
        (at(10, 15), {"idle"}),  # morning break: powered, nobody at the machine
        (at(23), {"off"}),
        (at(9, day=9), {"off"}),  # Sunday
        (at(13, day=8), {"off"}),  # Saturday shift ends at 12:00
    ]
    for start, expected in cases:
        async with run_scenario(metalworks, port_base=port_base, start=start) as sim:
            sim.freeze()
            states = {sim.machine_state(m) for m in ("press-1", "lathe-1", "compressor-1")}
            assert states == expected, (start, states)
            if "off" in expected:
                assert sim.read_bits("press-plc", 1, "coil", 0, 2) == [False, False]


async def test_seeded_runs_are_reproducible(metalworks: Scenario, port_base: int) -> None:
    async def trace(seed: int) -> list[list[int]]:
        async with run_scenario(
            metalworks, port_base=port_base, seed=seed, start=MONDAY_MORNING
        ) as sim:
            sim.freeze()
            out = []
            for _ in range(30):
                sim.advance(97)
                out.append(sim.read_registers("moulder-plc", 1, "holding", 0, 13))
                out.append(sim.read_registers("gateway-1", 1, "input", 0, 14))
            return out

    assert await trace(7) == await trace(7)
    assert await trace(7) != await trace(8)


async def test_temperature_drifts_up_with_wear_until_a_cap(sim: Simulator) -> None:
    def oil_temp() -> float:
        raw = sim.read_registers("press-plc", 1, "holding", 1, 1)[0]
        return (raw - 65536 if raw >= 32768 else raw) / 10

    def running_sample() -> float:
        while sim.machine_state("press-1") != "running":
            sim.advance(60)
        return oil_temp()

    fresh = running_sample()
    sim.advance(14 * 24 * 3600)  # two weeks of shifts: far more than 22 / 1.2 running hours
    worn = running_sample()
    assert 46 - 0.5 <= fresh <= 46 + 2  # running level, barely worn
    assert worn >= 46 + 22 - 0.5  # the wear cap reached
    assert worn <= 46 + 22 + 0.5  # and not passed


async def test_freeze_holds_every_value(sim: Simulator) -> None:
    sim.unfreeze()
    sim.clock.speed = 600.0
    sim.freeze()
    frozen = sim.read_registers("welder-plc", 1, "holding", 0, 31)
    for _ in range(3):
        assert sim.read_registers("welder-plc", 1, "holding", 0, 31) == frozen
    sim.unfreeze()
    sim.advance(600)
    assert sim.read_registers("welder-plc", 1, "holding", 0, 31) != frozen
