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
from typing import Any, cast

from pymodbus.exceptions import ModbusException

from collector.config import REGISTER_COUNT, ModbusDevice, Signal, SignalType, Table
from collector.decode import DecodeError, compile_decoder
from collector.plan import coalesce_reads
from collector.schema import FieldValue
from collector.sources.modbus import ModbusClient, reads_by_table

__all__ = [
    "Answer",
    "Candidate",
    "Finder",
    "Pacer",
    "ProbeError",
    "Prober",
    "Problem",
    "RegisterScan",
    "UnitAnswer",
    "Watch",
    "Watched",
    "display_tolerance",
    "failure",
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
        method = reads_by_table(self.client)[table]
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

    async def read_range(
        self, unit: int, table: Table, start: int, count: int, *, limit: int = 125
    ) -> list[int | None]:
        """`count` values from `start`, at most `limit` a request. A part the device refuses
        as a whole (no such address) is read one register at a time, so a missing neighbour
        costs only itself (None); raises ProbeError when the device does not answer."""
        values: list[int | None] = []
        limit = min(limit, MAX_READ[table])
        address = start
        while address < start + count:
            n = min(limit, start + count - address)
            answer = await self.read(unit, table, address, n)
            if answer.ok:
                values.extend(answer.values)
            elif answer.exception in NO_SUCH_ADDRESS and n > 1:
                for one in range(address, address + n):
                    single = await self.read(unit, table, one, 1)
                    if not single.ok and single.exception not in NO_SUCH_ADDRESS:
                        raise ProbeError(failure(table, one, 1, single))
                    values.append(single.values[0] if single.ok else None)
            else:
                raise ProbeError(failure(table, address, n, answer))
            address += n
        if all(v is None for v in values):
            raise ProbeError(Problem("probe.why_no_address", table=table, first=start,
                                     last=start + count - 1, code=2))  # fmt: skip
        return values


@dataclass(frozen=True, slots=True)
class Problem:
    """What went wrong, as a message key and its values: the command line says it in the
    user's language."""

    key: str
    values: dict[str, Any] = field(default_factory=dict)

    def __init__(self, key: str, **values: Any) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "values", values)


class ProbeError(RuntimeError):
    """A read the probe needed did not answer; `problem` says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.key)
        self.problem = problem


def failure(table: str, address: int, count: int, answer: Answer) -> Problem:
    """Why a read of `count` values from `address` did not give them."""
    where = {"table": table, "first": address, "last": address + count - 1}
    if answer.timeout:
        return Problem("probe.why_silent", **where)
    if answer.exception == ILLEGAL_FUNCTION:
        return Problem("probe.why_no_table", **where)
    if answer.exception in GATEWAY_NO_DEVICE:
        return Problem("probe.why_no_device", **where, code=answer.exception)
    if answer.exception in NO_SUCH_ADDRESS:
        return Problem("probe.why_no_address", **where, code=answer.exception)
    return Problem("probe.why_exception", **where, code=answer.exception)


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
    on_answer: Callable[[UnitAnswer], None] | None = None,
) -> list[UnitAnswer]:
    """Which unit ids answer a one-register read: any answer (an exception code too) means a
    device is there; silence or a gateway's 10/11 means none. `on_answer` hears each unit as
    it is tried (a scan of a slow bus is long: what it found shows as it goes)."""
    found = []
    for unit in units:
        answer = await prober.read(unit, table, address, 1)
        present = not answer.timeout and answer.exception not in GATEWAY_NO_DEVICE
        result = UnitAnswer(unit, present, answer.exception if present else None)
        found.append(result)
        if on_answer is not None:
            on_answer(result)
    return found


@dataclass
class RegisterScan:
    """What answered in one table: ranges (first, last) of addresses, both included."""

    table: Table
    ranges: list[tuple[int, int]] = field(default_factory=list)
    stopped: Problem | None = None  # why the scan ended early, if it did
    device_silent: bool = False  # it stopped because the device stopped answering at all
    requests: int = 0

    def add(self, first: int, last: int) -> None:
        if self.ranges and self.ranges[-1][1] + 1 >= first:
            self.ranges[-1] = (self.ranges[-1][0], max(self.ranges[-1][1], last))
        else:
            self.ranges.append((first, last))


class _Stop(Exception):
    """The scan of a table ends here (its reason is in the RegisterScan)."""


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

    The table is walked in cells of `width` addresses from `start` (2 for meters that answer
    only whole 32-bit values, which want even addresses and counts): every read starts on a
    cell and covers whole cells. A read answers only if every address in it exists, so an
    answering block is a whole range at once and the edges of a range are found by halving.
    Between ranges, one cell every `resolution` addresses is read to find the next one: a range
    shorter than that may be missed (`aguante probe scan --help` says so). Only an exception 2
    or 3 means "no such address": a read with no answer is asked again, and `max_failures` in
    a row end the scan, as do exception 1 (no such table) and 10/11 (no device at this unit);
    other exceptions (4 device failure, 6 busy) count as failures too."""
    scan = RegisterScan(table)
    before = prober.requests
    cells = (end - start) // width
    cell_block = max(1, min(block, MAX_READ[table]) // width)
    step = max(1, -(-resolution // width))
    failures = 0

    async def answers(cell: int, count: int) -> bool:
        # Whether cells cell..cell+count-1 all exist; _Stop when the scan must end.
        nonlocal failures
        address = start + cell * width
        while True:
            answer = await prober.read(unit, table, address, count * width)
            if answer.ok:
                failures = 0
                return True
            if answer.exception in NO_SUCH_ADDRESS or answer.exception == -1:
                failures = 0
                return False
            if answer.exception == ILLEGAL_FUNCTION or answer.exception in GATEWAY_NO_DEVICE:
                scan.stopped = failure(table, address, count * width, answer)
                scan.device_silent = answer.exception in GATEWAY_NO_DEVICE
                raise _Stop
            failures += 1  # silence, or a device too busy or failing to say: ask again
            if failures >= max_failures:
                scan.stopped = Problem(
                    "probe.why_gave_up", table=table, first=address, count=failures
                )
                scan.device_silent = answer.timeout
                raise _Stop

    async def extent(first: int, low: int, high: int) -> int:
        # The largest n in [low, high] such that cells first..first+n-1 exist, knowing low do.
        while low < high:
            middle = (low + high + 1) // 2
            if await answers(first, middle):
                low = middle
            else:
                high = middle - 1
        return low

    def add(first_cell: int, count: int) -> None:
        scan.add(start + first_cell * width, start + (first_cell + count) * width - 1)

    cell = 0
    try:
        while cell < cells:
            count = min(cell_block, cells - cell)
            if await answers(cell, count):
                add(cell, count)
                cell += count
                continue
            if await answers(cell, 1):  # the block starts inside a range: how far does it go?
                n = await extent(cell, 1, count - 1)
                add(cell, n)
                cell += n
                continue
            # A gap: look for the next existing cell, one read every `step` cells.
            probe, found = cell + step, None
            while probe < min(cell + count + step, cells):
                if await answers(probe, 1):
                    found = probe
                    break
                probe += step
            if found is None:
                # On from the cell after the last one read (the end, when none fitted).
                cell = probe - step + 1 if probe > cell + step else cells
                continue
            # The range starts after the last silent probe: halve towards it, each read running
            # up to `found` (it answers when it starts inside the range).
            low, high = max(cell, found - step) + 1, found
            while low < high:
                middle = (low + high) // 2
                if await answers(middle, found - middle + 1):
                    high = middle
                else:
                    low = middle + 1
            cell = low
    except _Stop:
        pass
    scan.requests = prober.requests - before
    return scan


# -- find ----------------------------------------------------------------------------------------


def display_tolerance(text: str) -> float:
    """Half a unit of the display's last digit: "231.4" → 0.05, "1843" → 0.5, "2,5" → 0.05."""
    parse_display(text)  # a ValueError for what is not a number a display shows
    mantissa, _, exponent = text.strip().replace(",", ".").lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    try:
        return 0.5 * 10.0 ** (int(exponent or 0) - decimals)
    except OverflowError:
        raise ValueError(f"{text!r} is beyond what a register holds") from None


def parse_display(text: str) -> float:
    """A number as a display or a worker writes it; a decimal comma is accepted. ValueError
    for text, nan, inf and numbers beyond any register (±1e300)."""
    value = float(text.strip().replace(",", "."))
    if not math.isfinite(value) or abs(value) > 1e300:
        raise ValueError(f"{text!r} is not a number a display shows")
    return value


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
    registers: list[int | None]
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

    def add(
        self, registers: Sequence[int | None], expect: float, tolerance: float
    ) -> list[Candidate]:
        """Add a reading (None for a register the device does not have); every candidate that
        shows all readings, best first."""
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
        missing = {i for r in self.readings for i, v in enumerate(r.registers) if v is None}
        for at in addresses:
            for (kind, order), decode in self._decoders.items():
                width = REGISTER_COUNT[kind]
                if at + width > size or missing.intersection(range(at, at + width)):
                    continue
                try:  # a NaN float, or a uint64 past what InfluxDB stores: not a reading
                    raws = [float(decode(cast(list[int], r.registers), at)) for r in self.readings]
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
        # A 16-bit reading of the low word of a wide signed integer its upper words proved
        # wide: the narrow one would break past ±32767.
        wide = {
            (c.address + (0 if c.order in ("CDAB", "DCBA") else c.width - 1), c.scale, c.values)
            for c in merged
            if c.sign_extended
        }
        merged = [c for c in merged if c.width > 1 or (c.address, c.scale, c.values) not in wide]
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
        # A 32/64-bit signed integer whose upper words follow the sign — 0x0000 at a reading of
        # 0 or more, 0xFFFF at a negative one, both seen: the 16-bit reading of its lower word
        # shows the same numbers, but only the wide one explains the words next to it. One
        # negative reading alone proves nothing: unused registers often read 0xFFFF.
        if not kind.startswith("int"):
            return False
        width = REGISTER_COUNT[kind]
        at = address - self.base
        signs = set()
        for reading in self.readings:
            words = [w or 0 for w in reading.registers[at : at + width]]
            if order in ("BADC", "DCBA"):
                words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
            upper = words[1:] if order in ("CDAB", "DCBA") else words[:-1]
            negative = reading.expect < 0
            if not all(w == (0xFFFF if negative else 0) for w in upper):
                return False
            signs.add(negative)
        return signs == {True, False}


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
        self.problems: list[Problem] = []

    async def poll(self, prober: Prober) -> None:
        """One round of reads; what failed is in `problems` until the next round."""
        values: dict[str, FieldValue] = {}
        self.problems = []
        for request in self.plan:
            answer = await prober.read(
                self.device.unit, request.table, request.address, request.count
            )
            if not answer.ok:
                self.problems.append(failure(request.table, request.address, request.count, answer))
                continue
            request.decode(answer.values, values)
            for signal in request.signals:
                if signal.name not in values:  # a NaN, a value InfluxDB cannot hold
                    self.problems.append(Problem("probe.why_undecodable", signal=signal.name))
                    self.signals[signal.name].value = None
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
