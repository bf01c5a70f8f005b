"""The simulated shop floor: a clock that can run fast or freeze, shifts, and machines whose
states and register values are a pure function of (simulated time, seed, scenario, writes)."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from bisect import bisect_right
from zoneinfo import ZoneInfo

from simulators.encoding import encode
from simulators.protocol import ILLEGAL_ADDRESS, ModbusError, Table
from simulators.scenario import WEEKDAYS, BareMachine, Behaviour, Machine, Scenario, Signal, State

__all__ = ["MachineModel", "Schedule", "SimClock", "unit_random"]

_STATES: tuple[State, ...] = ("off", "idle", "running", "fault")


class SimClock:
    """Simulated UNIX time: starts at `start`, runs `speed` times faster than the wall clock."""

    def __init__(self, start: float, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._anchor_sim = start
        self._anchor_wall = time.monotonic()
        self.frozen = False

    def now(self) -> float:
        if self.frozen:
            return self._anchor_sim
        return self._anchor_sim + (time.monotonic() - self._anchor_wall) * self.speed

    def freeze(self) -> None:
        self._anchor_sim, self.frozen = self.now(), True

    def unfreeze(self) -> None:
        if self.frozen:
            self._anchor_wall, self.frozen = time.monotonic(), False

    def advance(self, seconds: float) -> None:
        """Jump simulated time forward (tests use it instead of waiting)."""
        if seconds < 0:
            raise ValueError("simulated time only moves forward")
        self._anchor_sim += seconds


def unit_random(*parts: object) -> float:
    """A reproducible number in [0, 1) for these parts (unlike hash(), stable across runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Schedule:
    """When the plant works, in its own time zone."""

    def __init__(self, scenario: Scenario) -> None:
        self.zone = ZoneInfo(scenario.timezone)
        self.shifts = scenario.shifts
        self.breaks = scenario.breaks

    def at(self, epoch: float) -> State | None:
        """'off' outside shifts, 'idle' during a break, None while machines may work."""
        if not self.shifts:
            return None
        local = dt.datetime.fromtimestamp(epoch, self.zone)
        now, today = local.time(), WEEKDAYS[local.weekday()]
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        for shift in self.shifts:
            if shift.start < shift.end:
                working = today in shift.days and shift.start <= now < shift.end
            else:  # past midnight: belongs to the day it started on
                working = (today in shift.days and now >= shift.start) or (
                    yesterday in shift.days and now < shift.end
                )
            if working:
                return "idle" if any(b.start <= now < b.end for b in self.breaks) else None
        return "off"


class MachineModel:
    """One machine as a Modbus slave (and what its boards see). States change per whole
    simulated minute (so counters are exact sums over minutes), drawn per block of minutes from
    the seed. A machine with no PLC has no registers, but the same states and values."""

    def __init__(
        self, machine: BareMachine, schedule: Schedule, clock: SimClock, seed: int, origin: float
    ) -> None:
        self.machine = machine
        self.schedule = schedule
        self.clock = clock
        self.seed = seed
        self.origin = origin  # simulated time at which accumulators hold their `initial`
        self.writes: dict[tuple[Table, int], int] = {}
        states = list(machine.states.items())
        total = sum(w for _, w in states)
        self._thresholds = [sum(w for _, w in states[: i + 1]) / total for i in range(len(states))]
        self._choices: list[State] = [s for s, _ in states]
        self._cached_at = origin
        self._cached: dict[State, float] = dict.fromkeys(_STATES, 0.0)
        self._spans: dict[Table, list[tuple[int, int, Signal]]] = {}
        self.signals: list[Signal] = machine.signals if isinstance(machine, Machine) else []
        for signal in self.signals:
            self._spans.setdefault(signal.table, []).append(
                (signal.address, signal.address + signal.width, signal)
            )
        for spans in self._spans.values():
            spans.sort(key=lambda span: span[0])

    # -- states and time ------------------------------------------------------------------------

    def state_at(self, t: float) -> State:
        minute = math.floor(t / 60)
        forced = self.schedule.at(minute * 60)
        if forced is not None:
            return forced
        draw = unit_random(self.seed, self.machine.id, minute // self.machine.block_minutes)
        return self._choices[min(bisect_right(self._thresholds, draw), len(self._choices) - 1)]

    def seconds_by_state(self, t: float) -> dict[State, float]:
        """Simulated seconds spent in each state between the origin and `t`."""
        if t < self._cached_at:  # time never runs back, but a fresh origin might be earlier
            self._cached_at, self._cached = self.origin, dict.fromkeys(_STATES, 0.0)
        totals, at = dict(self._cached), self._cached_at
        while at < t:
            boundary = (math.floor(at / 60) + 1) * 60
            end = min(boundary, t)
            totals[self.state_at(at)] += end - at
            if end == boundary:  # only whole minutes are cached: they never change
                self._cached_at, self._cached = end, dict(totals)
            at = end
        return totals

    def value(self, signal: Signal, t: float) -> float | int | str | bool:
        """The engineering value of a signal at simulated time `t`."""
        return self.follow(signal.name, signal.value, t)

    def follow(self, name: str, rule: Behaviour, t: float) -> float | int | str | bool:
        """What a value following `rule` is at simulated time `t` (`name` seeds its noise)."""
        if rule.constant is not None:
            return rule.constant
        state = self.state_at(t)
        if rule.state is not None:
            return state in rule.state
        if rule.accumulate is not None:
            seconds = self.seconds_by_state(t)
            return rule.initial + sum(rate * seconds[s] for s, rate in rule.accumulate.items())
        assert rule.level is not None
        run_hours = self.seconds_by_state(t)["running"] / 3600
        wear = min(rule.wear * run_hours, rule.wear_max) if rule.wear else 0.0
        noise = rule.noise * (2 * unit_random(self.seed, self.machine.id, name, int(t)) - 1)
        return rule.level.get(state, 0.0) + wear + noise

    def registers(self, signal: Signal, t: float) -> list[int]:
        """The raw registers (or one bit) of a signal, raw = (value - offset) / scale."""
        value = self.value(signal, t)
        if signal.type == "bool":
            return [1 if value else 0]
        if isinstance(value, str):
            return encode(value, signal.type, signal.order, signal.count or 0)
        raw = (float(value) - signal.offset) / signal.scale
        if signal.type.startswith(("int", "uint")):
            # Counters step down to whole units, as a PLC's do; measurements round.
            accumulating = signal.value.accumulate is not None
            return encode(
                math.floor(raw) if accumulating else round(raw), signal.type, signal.order
            )
        return encode(raw, signal.type, signal.order)

    # -- the Slave protocol ---------------------------------------------------------------------

    def read(self, table: Table, address: int, count: int) -> list[int]:
        self._check_range(table, address, count)
        t = self.clock.now()  # one instant for the whole request, so multi-register values agree
        out = [0] * count
        end = address + count
        for start, stop, signal in self._spans.get(table, []):
            if stop <= address or start >= end:
                continue
            raw = self.registers(signal, t)
            for i, word in enumerate(raw):
                if address <= start + i < end:
                    out[start + i - address] |= (
                        word << signal.bit if signal.bit is not None else word
                    )
        for i in range(count):
            written = self.writes.get((table, address + i))
            if written is not None:
                out[i] = written
        return out

    def write(self, table: Table, address: int, values: list[int]) -> None:
        self._check_range(table, address, len(values))
        for i in range(len(values)):
            if not any(
                start <= address + i < stop and signal.writable
                for start, stop, signal in self._spans.get(table, [])
            ):
                raise ModbusError(ILLEGAL_ADDRESS)  # read-only, as on most old PLCs
        for i, value in enumerate(values):
            self.writes[(table, address + i)] = value

    def _check_range(self, table: Table, address: int, count: int) -> None:
        size = self.machine.size(table) if isinstance(self.machine, Machine) else 0
        if address + count > size:
            raise ModbusError(ILLEGAL_ADDRESS)
