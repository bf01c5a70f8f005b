"""Poll Modbus devices (TCP, RTU over a serial port, RTU over TCP) and yield readings.

One `ModbusConnection` is one link — a TCP endpoint, a serial gateway or an RS-485 bus — with
every device (unit id) reached through it, polled in turn from one task, so several units on one
bus share one queue and a dead link never delays another.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from collector.config import Config, Machine, ModbusDevice
from collector.plan import ReadRequest, coalesce_reads
from collector.schema import FieldValue
from collector.sources import Consume, DeviceHealth, HealthRecord, Reading, Unavailable

__all__ = [
    "ModbusClient",
    "ModbusConnection",
    "ModbusResponse",
    "make_client",
    "modbus_sources",
    "reads_by_table",
]

log = logging.getLogger(__name__)

RAW_FRAMES_KEPT = 16
# A device's first poll after a connect comes at most this far into its interval (a slow
# device polled every 10 min is not kept waiting minutes for its first value).
PHASE_SPREAD_MAX = 1.0
# Devices polled at the same instant, at most about: polls due together are handled in one turn
# of the event loop (cheaper than one wake-up each: 20 devices spread one by one cost 1.6× the
# CPU), while a thousand due together waited up to 0.2 s behind one another.
DEVICES_PER_PHASE = 100
TIMER_GRAIN = 0.001  # seconds: uvloop's timers are whole milliseconds


class ModbusResponse(Protocol):
    registers: list[int]
    bits: list[bool]
    exception_code: int

    def isError(self) -> bool: ...


class ModbusClient(Protocol):
    """The part of a pymodbus async client the source uses; tests pass an in-memory device."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> bool: ...

    def close(self) -> None: ...

    def read_coils(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[Any]: ...

    def read_discrete_inputs(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[Any]: ...

    def read_holding_registers(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[Any]: ...

    def read_input_registers(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[Any]: ...


ClientFactory = Callable[[ModbusDevice, Callable[[bool, bytes], bytes]], ModbusClient]


def make_client(device: ModbusDevice, trace: Callable[[bool, bytes], bytes]) -> ModbusClient:
    """A pymodbus client for the device's link; reconnection is ours (reconnect_delay=0)."""
    common: dict[str, Any] = {
        "timeout": device.timeout,
        "retries": device.retries,
        "reconnect_delay": 0,
        "trace_packet": trace,
    }
    if device.transport == "rtu":
        assert device.serial_port is not None
        return AsyncModbusSerialClient(
            device.serial_port,
            framer=FramerType.RTU,
            baudrate=device.baudrate,
            parity=device.parity,
            stopbits=device.stopbits,
            bytesize=device.bytesize,
            **common,
        )
    assert device.host is not None and device.port is not None
    framer = FramerType.SOCKET if device.transport == "tcp" else FramerType.RTU
    return AsyncModbusTcpClient(device.host, port=device.port, framer=framer, **common)


def reads_by_table(client: ModbusClient) -> dict[str, Callable[..., Awaitable[Any]]]:
    """The client's read for each table (coil, discrete, holding, input)."""
    return {
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
    }


@dataclass
class _Polled:
    machine: Machine
    device: ModbusDevice
    plan: list[ReadRequest]
    health: DeviceHealth
    due: float = 0.0
    down_since_ms: int | None = None


class ModbusConnection:
    """One Modbus link and the devices behind it: `async with conn: async for reading in conn`."""

    kind = "modbus"

    def __init__(
        self,
        machines: list[Machine],
        *,
        client_factory: ClientFactory = make_client,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        phases: int = 1,
    ) -> None:
        if not machines or any(m.modbus is None for m in machines):
            raise ValueError("a Modbus connection needs machines that each have a modbus block")
        devices = [m.modbus for m in machines if m.modbus is not None]
        keys = {d.connection_key for d in devices}
        if len(keys) != 1:
            raise ValueError(f"machines on one connection must share its link, got {sorted(keys)}")
        # The link's timeout and retries are the most patient any device on it asks for.
        link = max(devices, key=lambda d: (d.timeout, d.retries))
        self.name = devices[0].connection_key
        self.raw_frames: deque[tuple[float, bool, bytes]] = deque(maxlen=RAW_FRAMES_KEPT)
        self._client = client = client_factory(link, self._trace)
        # Each table's read, looked up once: a poll calls it for every request.
        self._reads = reads_by_table(client)
        self._pause_after_connect = max(d.pause_after_connect for d in devices)
        self._polled = [
            _Polled(m, d, coalesce_reads(d), DeviceHealth(m.id))
            for m, d in zip(machines, devices, strict=True)
        ]
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._phases = max(1, phases)
        self._backoff = reconnect_initial
        self._last_request_end = 0.0
        self._link_up: bool | None = None
        self._quiet_after_timeout = link.timeout if link.transport != "tcp" else 0.0

    def _trace(self, sending: bool, data: bytes) -> bytes:
        self.raw_frames.append((time.time(), sending, data))
        return data

    def health(self) -> list[DeviceHealth]:
        return [p.health for p in self._polled]

    def health_records(self) -> list[HealthRecord]:
        return [p.health.record() for p in self._polled]

    def unavailable(self) -> list[Unavailable]:
        return [
            Unavailable(p.machine.id, frozenset(s.name for s in p.device.signals), p.down_since_ms)
            for p in self._polled
            if p.down_since_ms is not None
        ]

    def last_frames(self) -> list[str]:
        """The last raw frames on this link, oldest first, for a bug report."""
        return [
            f"{stamp:.3f} {'->' if sent else '<-'} {data.hex(' ')}"
            for stamp, sent, data in self.raw_frames
        ]

    async def __aenter__(self) -> ModbusConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.close()
        # The transport closes its socket on the next loop iteration: give it that iteration,
        # or a loop that ends right after us leaks the socket.
        await asyncio.sleep(0)

    def __aiter__(self) -> AsyncIterator[Reading]:
        return self._poll_forever()

    async def run(self, consume: Consume) -> None:
        """Poll until cancelled, handing each poll's reading to `consume` as it is taken."""
        async for reading in self._poll_forever():
            consume((reading,))

    async def _poll_forever(self) -> AsyncIterator[Reading]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # A cancellation swallowed inside pymodbus (see Collector) still counts here.
                raise asyncio.CancelledError
            if not self._client.connected:
                if not await self._connect():
                    await self._back_off()
                    continue
                now = loop.time()
                for polled in self._polled:
                    polled.due = _first_due(
                        now, polled.machine.id, polled.device.poll_interval, self._phases
                    )
            polled = min(self._polled, key=lambda p: p.due)
            wait = polled.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            interval = polled.device.poll_interval
            # A poll that falls behind is not made up in a burst: the next is one interval on.
            polled.due = max(polled.due + interval, loop.time())
            try:
                reading = await self._poll(polled)
            except ConnectionException as exc:
                # A link that accepts connections and then drops them backs off too, or it would
                # reconnect as fast as the loop spins.
                self._link_lost(str(exc))
                await self._back_off()
                continue
            if reading is not None:
                yield reading

    async def _connect(self) -> bool:
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as exc:
            ok = False
            reason = str(exc)
        else:
            reason = "no answer to connect"
        if not ok:
            self._link_lost(reason)
            return False
        if self._pause_after_connect:
            await asyncio.sleep(self._pause_after_connect)
        return True

    async def _back_off(self) -> None:
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self._reconnect_max)

    def _link_answered(self) -> None:
        # The link counts as back, and the backoff starts over, only once a device answered:
        # a gateway that accepts the connection with nothing behind it is still down.
        if self._link_up is False:
            log.info("%s: link back up", self.name)
        self._link_up = True
        self._backoff = self._reconnect_initial

    def _link_lost(self, reason: str) -> None:
        if self._link_up is not False:
            log.warning("%s: link down (%s); retrying with backoff", self.name, reason)
        self._link_up = False
        for polled in self._polled:
            polled.health.link_errors += 1
            self._mark(polled, up=False, reason=reason)
        self._client.close()

    def _mark(self, polled: _Polled, *, up: bool, reason: str = "") -> None:
        health = polled.health
        if up and health.up is False:
            log.info("%s: device back (unit %d)", polled.machine.id, polled.device.unit)
        elif not up and health.up is not False:
            log.warning(
                "%s: device down (unit %d): %s", polled.machine.id, polled.device.unit, reason
            )
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: last frames:\n  %s", self.name, "\n  ".join(self.last_frames()))
        health.up = up
        if up:
            polled.down_since_ms = None
        elif polled.down_since_ms is None:
            polled.down_since_ms = time.time_ns() // 1_000_000

    async def _poll(self, polled: _Polled) -> Reading | None:
        health = polled.health
        device = polled.device
        health.polls += 1
        time_ms = time.time_ns() // 1_000_000
        started = time.perf_counter()
        values: dict[str, FieldValue] = {}
        answered = False
        problem = ""
        for request in polled.plan:
            if device.pause_between_requests:
                # Measured from the link's last request, whichever unit it was for: slow devices
                # on a shared RS-485 bus need the quiet time between any two frames.
                # Never shorter: uvloop's timers count whole milliseconds, and fire up to one
                # early (time.monotonic, not the loop's clock, which is as coarse).
                quiet = self._last_request_end + device.pause_between_requests - time.monotonic()
                if quiet > 0:
                    await asyncio.sleep(quiet + TIMER_GRAIN)
            health.requests += 1
            try:
                response = await self._reads[request.table](
                    request.address, count=request.count, device_id=device.unit
                )
            except ModbusIOException as exc:
                self._last_request_end = time.monotonic()
                # No answer: the device is silent, so the rest of its requests would only
                # hold up the other units on this link.
                health.timeouts += 1
                problem = f"no answer ({exc})"
                if self._quiet_after_timeout:
                    # RTU frames carry no transaction id: an answer arriving late would be
                    # taken for the answer to the next request. Let it land on no request.
                    await asyncio.sleep(self._quiet_after_timeout)
                break
            self._last_request_end = time.monotonic()
            if response.isError():
                code = response.exception_code
                health.exceptions[code] = health.exceptions.get(code, 0) + 1
                problem = f"exception code {code}"
                answered = True
                continue
            answered = True
            bit_table = request.table in ("coil", "discrete")
            got = len(response.bits if bit_table else response.registers)
            if got < request.count or (not bit_table and got != request.count):
                health.bad_answers += 1
                problem = f"answer with {got} values to a read of {request.count}"
                continue
            self._decode(polled, request, response, values)
        health.last_latency_ms = (time.perf_counter() - started) * 1000
        if answered:
            self._link_answered()
        if values:
            health.good_polls += 1
        self._mark(polled, up=answered, reason=problem)
        if not values:
            return None
        return Reading(polled.machine.id, time_ms, values)

    def _decode(
        self,
        polled: _Polled,
        request: ReadRequest,
        response: ModbusResponse,
        values: dict[str, FieldValue],
    ) -> None:
        data: list[Any] = (
            response.bits if request.table in ("coil", "discrete") else response.registers
        )
        polled.health.decode_errors += request.decode(data, values)


def _first_due(now: float, machine_id: str, interval: float, phases: int) -> float:
    """A device's first poll after a connect: its phase on a grid of the event loop's clock that
    every connection shares, so that devices of one phase, each on its own connection, are due at
    the same instant and polled in one turn of the loop, not woken one by one as they happened to
    connect."""
    step = min(interval, PHASE_SPREAD_MAX)
    return math.ceil(now / step) * step + _phase(machine_id, interval, phases)


def _phase(machine_id: str, interval: float, phases: int) -> float:
    """Where in its interval a device is polled: one of `phases` instants spread over it, fixed
    by its machine id. A thousand devices connected at once would otherwise all be due at the
    same instant every interval, each waiting behind the others by a varying amount (the
    scale benchmark's jitter)."""
    slot = zlib.crc32(machine_id.encode()) * phases // 2**32
    return slot / phases * min(interval, PHASE_SPREAD_MAX)


def modbus_sources(
    config: Config, *, client_factory: ClientFactory = make_client, **options: float
) -> list[ModbusConnection]:
    """One connection per link, in config order, each with the machines reached through it."""
    links: dict[str, list[Machine]] = {}
    for machine in config.machines:
        if machine.modbus is not None:
            links.setdefault(machine.modbus.connection_key, []).append(machine)
    devices = sum(len(machines) for machines in links.values())
    phases = -(-devices // DEVICES_PER_PHASE)
    return [
        ModbusConnection(machines, client_factory=client_factory, phases=phases, **options)
        for machines in links.values()
    ]
