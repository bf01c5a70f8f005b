"""Finding one's way on a device nobody documented: which unit ids answer, which registers exist,
and which register, type, order and scale show the number on the machine's own display.

The command line is `aguante probe` (collector/probe_cli.py); everything here works through the
Modbus source's client seam, so the unit tests drive it with an in-memory device.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.exceptions import ModbusException

from collector.config import REGISTER_COUNT, ModbusDevice, Signal, SignalType, Table
from collector.decode import DecodeError, compile_decoder
from collector.plan import coalesce_reads
from collector.schema import FieldValue
from collector.sources.modbus import ModbusClient

__all__ = [
    "Answer",
    "Candidate",
    "Finder",
    "Pacer",
    "ProbeError",
    "Prober",
    "RegisterScan",
    "UnitAnswer",
    "Watch",
    "Watched",
    "display_tolerance",
    "parse_display",
    "scan_registers",
    "scan_units",
]

BIT_TABLES = ("coil", "discrete")
# Modbus exception codes: 1 the function (table) is not supported, 2/3 no such address / count,
# 10/11 a gateway that found no device behind it (the unit is not there).
ILLEGAL_FUNCTION = 1
NO_SUCH_ADDRESS = (2, 3)
GATEWAY_NO_DEVICE = (10, 11)
MAX_READ = {"coil": 2000, "discrete": 2000, "holding": 125, "input": 125}

# What `find` tries, simplest first: the order of these tuples is part of the ranking.
FIND_TYPES: tuple[SignalType, ...] = (
    "uint16", "int16", "uint32", "int32", "float32", "uint64", "int64", "float64"
)  # fmt: skip
SCALES = tuple(10.0**k for k in range(-6, 7))
_ORDER_RANK = {"ABCD": 0.0, "CDAB": 0.4, "BADC": 0.8, "DCBA": 1.0}
_WIDTH_RANK = {1: 0.0, 2: 0.6, 4: 1.2}


class Pacer:
    """At most `rate` requests a second, whatever answers fast: a probe must never hammer a
    device that also runs a machine."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be more than 0 requests a second")
        self.interval = 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = 0.0

    async def wait(self) -> None:
        now = self._clock()
        if self._next > now:
            await self._sleep(self._next - now)
            now = self._clock()
        self._next = max(now, self._next) + self.interval


@dataclass(frozen=True, slots=True)
class Answer:
    """One read: its values, or the exception code the device sent, or no answer at all."""

    values: tuple[int, ...] = ()
    exception: int | None = None
    timeout: bool = False

    @property
    def ok(self) -> bool:
        return self.exception is None and not self.timeout


class Prober:
    """Reads through one link, paced, counting what it sent."""

    def __init__(self, client: ModbusClient, pacer: Pacer) -> None:
        self.client = client
        self.pacer = pacer
        self.requests = 0

    async def connect(self) -> bool:
        if self.client.connected:
            return True
        return bool(await self.client.connect())

    def close(self) -> None:
        self.client.close()

    async def read(self, unit: int, table: Table, address: int, count: int) -> Answer:
        """One request; a timeout or a dropped link is an Answer, never an exception."""
        await self.pacer.wait()
        self.requests += 1
        method = {
            "coil": self.client.read_coils,
            "discrete": self.client.read_discrete_inputs,
            "holding": self.client.read_holding_registers,
            "input": self.client.read_input_registers,
        }[table]
        try:
            if not self.client.connected and not await self.client.connect():
                return Answer(timeout=True)
            response = await method(address, count=count, device_id=unit)
        except (TimeoutError, ModbusException):  # no answer, a dropped link, a garbled frame
            return Answer(timeout=True)
        if response.isError():
            return Answer(exception=int(response.exception_code))
        data: Sequence[Any] = response.bits if table in BIT_TABLES else response.registers
        if len(data) < count:
            return Answer(exception=-1)  # a short answer: as good as no such address
        return Answer(values=tuple(int(v) for v in data[:count]))

    async def read_range(self, unit: int, table: Table, start: int, count: int) -> list[int]:
        """`count` values from `start`, in as few requests as the protocol allows; raises
        ProbeError when a part does not answer."""
        values: list[int] = []
        limit = MAX_READ[table]
        address = start
        while address < start + count:
            n = min(limit, start + count - address)
            answer = await self.read(unit, table, address, n)
            if not answer.ok:
                raise ProbeError(_describe_failure(table, address, n, answer))
            values.extend(answer.values)
            address += n
        return values


class ProbeError(RuntimeError):
    """A read the probe needed did not answer."""


def _describe_failure(table: str, address: int, count: int, answer: Answer) -> str:
    what = f"{table} {address}–{address + count - 1}"
    if answer.timeout:
        return f"{what}: no answer"
    if answer.exception == ILLEGAL_FUNCTION:
        return f"{what}: the device has no {table} table (exception 1)"
    if answer.exception in NO_SUCH_ADDRESS:
        return f"{what}: the device has no such address (exception {answer.exception})"
    return f"{what}: exception {answer.exception}"


# -- scan --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitAnswer:
    unit: int
    present: bool
    exception: int | None = None  # an exception still means the unit is there (but 10/11)


async def scan_units(
    prober: Prober,
    units: Iterable[int],
    *,
    table: Table = "holding",
    address: int = 0,
) -> list[UnitAnswer]:
    """Which unit ids answer a one-register read: any answer (an exception code too) means a
    device is there; silence or a gateway's 10/11 means none."""
    found = []
    for unit in units:
        answer = await prober.read(unit, table, address, 1)
        present = not answer.timeout and answer.exception not in GATEWAY_NO_DEVICE
        found.append(UnitAnswer(unit, present, answer.exception if present else None))
    return found


@dataclass
class RegisterScan:
    """What answered in one table: ranges (first, last) of addresses, both included."""

    table: Table
    ranges: list[tuple[int, int]] = field(default_factory=list)
    stopped: str | None = None  # why the scan ended early, if it did
    requests: int = 0

    def add(self, first: int, last: int) -> None:
        if self.ranges and self.ranges[-1][1] + 1 >= first:
            self.ranges[-1] = (self.ranges[-1][0], max(self.ranges[-1][1], last))
        else:
            self.ranges.append((first, last))


async def scan_registers(
    prober: Prober,
    unit: int,
    table: Table,
    start: int,
    end: int,
    *,
    block: int = 100,
    resolution: int = 10,
    width: int = 1,
    max_failures: int = 3,
) -> RegisterScan:
    """The address ranges of `table` in [start, end) that answer.

    A read answers only if every address in it exists, so an answering block is a whole range
    at once and the edges of a range are found by halving. Between ranges, one read of `width`
    values every `resolution` addresses looks for the next one: a range shorter than that may
    be missed (said in `aguante probe scan --help`). Stops at the first exception 1 (no such
    table) and after `max_failures` reads in a row with no answer."""
    scan = RegisterScan(table)
    before = prober.requests
    failures = 0
    limit = min(block, MAX_READ[table])

    async def answers(address: int, count: int) -> bool | None:
        nonlocal failures
        answer = await prober.read(unit, table, address, count)
        if answer.ok:
            failures = 0
            return True
        if answer.timeout:
            failures += 1
            if failures >= max_failures:
                scan.stopped = f"{failures} reads in a row with no answer at {table} {address}"
                return None
            return False
        failures = 0
        if answer.exception == ILLEGAL_FUNCTION:
            scan.stopped = f"the device has no {table} table (exception 1)"
            return None
        return False

    async def last_answering(first: int, low: int, high: int) -> int | None:
        # The largest n in [low, high] such that first..first+n-1 answers, knowing `low` does.
        while low < high:
            middle = (low + high + 1) // 2
            ok = await answers(first, middle)
            if ok is None:
                return None
            if ok:
                low = middle
            else:
                high = middle - 1
        return low

    address = start
    while address < end:
        count = min(limit, end - address)
        ok = await answers(address, count)
        if ok is None:
            break
        if ok:
            scan.add(address, address + count - 1)
            address += count
            continue
        # Part of this block answers, from its start or later: how much from its start?
        head = await answers(address, min(width, count))
        if head is None:
            break
        if head:
            n = await last_answering(address, min(width, count), count - 1)
            if n is None:
                break
            scan.add(address, address + n - 1)
            address += n
            continue
        # A gap: look for the next answering address, one read every `resolution`.
        probe = address + resolution
        found = None
        while probe < min(address + count + resolution, end):
            got = await answers(probe, min(width, end - probe))
            if got is None:
                break
            if got:
                found = probe
                break
            probe += resolution
        if scan.stopped:
            break
        if found is None:  # on from the address after the last one read
            address = probe - resolution + 1
            continue
        # The range's first address lies after the last silent probe: halve towards it, each
        # read running up to `found` (it answers when it starts inside the range).
        low, high = max(address, found - resolution) + 1, found
        while low < high:
            middle = (low + high) // 2
            got = await answers(middle, found - middle + min(width, end - found))
            if got is None:
                break
            if got:
                high = middle
            else:
                low = middle + 1
        if scan.stopped:
            break
        address = low
    scan.requests = prober.requests - before
    return scan


# -- find ----------------------------------------------------------------------------------------


def display_tolerance(text: str) -> float:
    """Half a unit of the display's last digit: "231.4" → 0.05, "1843" → 0.5, "2,5" → 0.05."""
    cleaned = text.strip().replace(",", ".")
    float(cleaned)  # a ValueError for what is not a number
    mantissa, _, exponent = cleaned.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def parse_display(text: str) -> float:
    """A number as a display or a worker writes it; a decimal comma is accepted."""
    return float(text.strip().replace(",", "."))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A reading of the registers that shows the expected number: where, how, and how sure."""

    address: int
    type: SignalType
    order: str
    scale: float
    values: tuple[float, ...]  # what it decoded at each reading
    offset_from: int | None  # the address the user gave, when this one is next to it
    score: float
    twins: tuple[str, ...] = ()  # types that decode the same values (int16 for a uint16 …)
    sign_extended: bool = False  # a wide signed integer whose upper words read 0xFFFF

    @property
    def width(self) -> int:
        return REGISTER_COUNT[self.type]

    def signal(self, name: str, table: Table) -> dict[str, Any]:
        """A ready `signals:` entry for the config."""
        entry: dict[str, Any] = {"name": name, "table": table, "address": self.address}
        entry["type"] = self.type
        if self.order != "ABCD":
            entry["order"] = self.order
        if self.scale != 1.0:
            entry["scale"] = _tidy(self.scale)
        return entry


def _tidy(scale: float) -> float | int:
    return int(scale) if scale >= 1 else float(f"{scale:g}")


@dataclass
class _Reading:
    registers: list[int]
    expect: float
    tolerance: float


class Finder:
    """Candidates for a displayed number over a block of registers, narrowed reading by
    reading: each new reading (registers read while the display shows another number) keeps
    only the candidates that show that one too."""

    def __init__(self, base: int, *, near: int | None = None) -> None:
        self.base = base
        self.near = near  # the address a manual or a worker gave: ±1 is tried, ranked lower
        self.readings: list[_Reading] = []
        self._decoders = {
            (kind, order): compile_decoder(
                Signal(name="probe", table="holding", address=0, type=kind, order=order)
            )
            for kind in FIND_TYPES
            for order in _orders_for(kind)
        }

    def add(self, registers: Sequence[int], expect: float, tolerance: float) -> list[Candidate]:
        """Add a reading; every candidate that shows all readings, best first."""
        if self.readings and len(registers) != len(self.readings[0].registers):
            raise ValueError("every reading must cover the same registers")
        self.readings.append(_Reading(list(registers), expect, tolerance))
        return self.candidates()

    def candidates(self) -> list[Candidate]:
        if not self.readings:
            return []
        found: dict[tuple[int, int, str, float, tuple[float, ...]], list[Candidate]] = {}
        size = len(self.readings[0].registers)
        addresses = range(size)
        if self.near is not None:
            at = self.near - self.base
            addresses = range(max(0, at - 1), min(size, at + 2))
        for at in addresses:
            for (kind, order), decode in self._decoders.items():
                width = REGISTER_COUNT[kind]
                if at + width > size:
                    continue
                try:  # a NaN float, or a uint64 past what InfluxDB stores: not a reading
                    raws = [float(decode(r.registers, at)) for r in self.readings]
                except (DecodeError, ValueError, OverflowError):
                    continue
                if not all(math.isfinite(raw) for raw in raws):
                    continue
                for scale in SCALES:
                    if kind.startswith("float") and scale != 1.0 and not _plausible_float(raws):
                        continue
                    values = tuple(raw * scale for raw in raws)
                    if all(
                        abs(v - r.expect) <= r.tolerance
                        for v, r in zip(values, self.readings, strict=True)
                    ):
                        candidate = self._candidate(self.base + at, kind, order, scale, values)
                        key = (candidate.address, width, order, scale, values)
                        found.setdefault(key, []).append(candidate)
        merged = [_merge_twins(group) for group in found.values()]
        merged = [c for c in merged if not self._inside_wider(c, merged)]
        return sorted(merged, key=lambda c: (c.score, c.address, FIND_TYPES.index(c.type)))

    def _candidate(
        self, address: int, kind: SignalType, order: str, scale: float, values: tuple[float, ...]
    ) -> Candidate:
        width = REGISTER_COUNT[kind]
        score = _WIDTH_RANK[width] + _ORDER_RANK[order] + abs(math.log10(scale)) * 0.5
        if kind.startswith("float"):
            score += 0.3  # an integer that fits is the simpler reading
        error = max(
            abs(v - r.expect) / r.tolerance if r.tolerance else 0.0
            for v, r in zip(values, self.readings, strict=True)
        )
        score += 0.2 * error
        offset_from = None
        if self.near is not None and address != self.near:
            offset_from = self.near
            score += 0.5
        extended = width > 1 and self._sign_extended(address, kind, order)
        if extended:
            score -= _WIDTH_RANK[width]  # the wider reading explains a negative reading better
        return Candidate(address, kind, order, scale, values, offset_from, score, (), extended)

    def _sign_extended(self, address: int, kind: SignalType, order: str) -> bool:
        # A 32/64-bit signed integer whose upper words read 0xFFFF at a negative reading: the
        # 16-bit reading of its lower word shows the same number, but only the wide one would
        # have put 0xFFFF next to it.
        if not kind.startswith("int"):
            return False
        width = REGISTER_COUNT[kind]
        at = address - self.base
        for reading in self.readings:
            words = reading.registers[at : at + width]
            if order in ("BADC", "DCBA"):
                words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
            upper = words[1:] if order in ("CDAB", "DCBA") else words[:-1]
            if reading.expect < 0 and upper and all(w == 0xFFFF for w in upper):
                return True
        return False

    def _inside_wider(self, candidate: Candidate, every: list[Candidate]) -> bool:
        # A 16-bit reading of the low word of a wide signed integer that a negative reading
        # proved wide (its upper words read 0xFFFF): the narrow one would break past ±32767.
        if candidate.width != 1:
            return False
        for other in every:
            same = other.values == candidate.values and other.scale == candidate.scale
            if other.width > 1 and other.sign_extended and same:
                low = other.address + (0 if other.order in ("CDAB", "DCBA") else other.width - 1)
                if low == candidate.address:
                    return True
        return False


def _orders_for(kind: SignalType) -> tuple[str, ...]:
    return ("ABCD", "BADC") if REGISTER_COUNT[kind] == 1 else ("ABCD", "CDAB", "BADC", "DCBA")


def _plausible_float(raws: Sequence[float]) -> bool:
    # A float scaled by a power of ten is rare; keep it only when the raw value is not itself
    # absurd (the garbage of a wrong order reaches any magnitude).
    return all(raw == 0 or 1e-6 < abs(raw) < 1e9 for raw in raws)


def _merge_twins(group: list[Candidate]) -> Candidate:
    # Signed and unsigned readings that agree on every value: one candidate, the signed one
    # first only when a value is negative (then the unsigned cannot be in the group at all).
    best = min(group, key=lambda c: (c.score, FIND_TYPES.index(c.type)))
    twins = tuple(c.type for c in group if c.type != best.type)
    return Candidate(
        best.address,
        best.type,
        best.order,
        best.scale,
        best.values,
        best.offset_from,
        best.score,
        twins,
        best.sign_extended,
    )


# -- watch ---------------------------------------------------------------------------------------


@dataclass
class Watched:
    """One signal under watch: its value now, and what it did since the watch began."""

    name: str
    value: FieldValue | None = None
    first: FieldValue | None = None
    minimum: float | None = None
    maximum: float | None = None
    changes: int = 0
    changed_at: float | None = None  # time.monotonic() of the last change


class Watch:
    """A device's signals read over and over, each with how it moved: start and stop the
    machine and see which value follows it (a running signal flips, a counter climbs)."""

    def __init__(self, device: ModbusDevice) -> None:
        self.device = device
        self.plan = coalesce_reads(device)
        self.signals = {s.name: Watched(s.name) for s in device.signals}
        self.rounds = 0
        self.problems: list[str] = []

    async def poll(self, prober: Prober) -> None:
        """One round of reads; what failed is in `problems` until the next round."""
        values: dict[str, FieldValue] = {}
        self.problems = []
        for request in self.plan:
            answer = await prober.read(
                self.device.unit, request.table, request.address, request.count
            )
            if not answer.ok:
                self.problems.append(
                    _describe_failure(request.table, request.address, request.count, answer)
                )
                continue
            request.decode(answer.values, values)
        now = time.monotonic()
        self.rounds += 1
        for name, watched in self.signals.items():
            value = values.get(name)
            if value is None:
                continue
            if watched.value is None:
                watched.first = value
            elif value != watched.value:
                watched.changes += 1
                watched.changed_at = now
            watched.value = value
            if isinstance(value, int | float):  # a bool too: lowest 0, highest 1 once it moved
                number = float(value)
                watched.minimum = (
                    number if watched.minimum is None else min(watched.minimum, number)
                )
                watched.maximum = (
                    number if watched.maximum is None else max(watched.maximum, number)
                )
