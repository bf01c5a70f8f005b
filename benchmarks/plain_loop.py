"""The benchmark's floor: the plainest asyncio loop that polls the devices and stores the points
the collector does — one pymodbus client per device, hand-built line protocol, one POST a cycle.

    plain_loop.py SPEC.json      (written by run.py; SIGTERM or SIGINT stops it)

With `"client": "bare"` in the spec it is the floor below that floor: no Modbus library at all,
function 3 over TCP written by hand as an asyncio protocol, on uvloop — what the Node-RED target
would ask of any Python collector. `"client": "bare-pipelined"` also sends all of a poll's
requests at once instead of one at a time, which Modbus TCP allows but many devices do not
serve; no collector could do that by default.

On stop it prints one JSON line with what it did: cycles, late cycles, points read and stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import uvloop
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException


class _Link(asyncio.Protocol):
    """One TCP connection's bytes; `wanted` bytes in hand wake the waiting poll."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.wanted = 0
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.waiter and not self.waiter.done() and self._enough():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("connection closed"))

    async def exchange(self, request: bytes, wanted: int) -> bytes:
        """Send `request`, wait for `wanted` bytes of answer (or an exception answer's 9: its
        function code has the high bit set), hand them over."""
        if self.transport is None:
            raise ConnectionResetError("connection closed")
        if self.received:  # an answer nobody asked for: the link is out of step
            raise ConnectionError(f"{len(self.received)} bytes no request asked for")
        self.wanted = wanted
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self.waiter
        answer = bytes(self.received[:wanted])
        del self.received[:wanted]
        return answer

    def _enough(self) -> bool:
        if len(self.received) >= self.wanted:
            return True
        # An exception answer (MBAP 7 bytes, function | 0x80, code) is shorter than any read's.
        return len(self.received) >= 9 and self.received[7] & 0x80 != 0


class BareClient:
    """Modbus TCP "read holding registers" (function 3) by hand: the MBAP header, the PDU, the
    answer's words with struct. Any error drops the connection; the next poll opens a new one."""

    def __init__(self, host: str, port: int, unit: int, timeout: float = 1.0) -> None:
        self.host, self.port, self.unit, self.timeout = host, port, unit, timeout
        self.link: _Link | None = None
        self.transaction = 0

    def close(self) -> None:
        if self.link is not None and self.link.transport is not None:
            self.link.transport.close()
        self.link = None

    async def read(self, reads: list[tuple[int, int]], pipelined: bool) -> dict[int, int] | None:
        """The words at each (address, count), or None if the device did not answer in full."""
        registers: dict[int, int] = {}
        batches = [reads] if pipelined else [[read] for read in reads]
        try:
            if self.link is None or self.link.transport is None:  # never opened, or closed
                loop = asyncio.get_running_loop()
                async with asyncio.timeout(self.timeout):
                    _, self.link = await loop.create_connection(_Link, self.host, self.port)
            for batch in batches:
                frames, expected = [], []
                for address, count in batch:
                    self.transaction = tid = (self.transaction + 1) & 0xFFFF
                    frames.append(struct.pack(">HHHBBHH", tid, 0, 6, self.unit, 3, address, count))
                    # transaction, protocol, length, unit, function, byte count
                    expected.append((tid, 0, 3 + 2 * count, self.unit, 3, 2 * count))
                wanted = sum(9 + 2 * count for _, count in batch)
                async with asyncio.timeout(self.timeout):
                    answer = await self.link.exchange(b"".join(frames), wanted)
                at = 0
                for (address, count), header in zip(batch, expected, strict=True):
                    # Answers in the order asked, each the header the request implies.
                    got = struct.unpack_from(">HHHBBB", answer, at)
                    if got != header:
                        raise ConnectionError(f"unexpected answer {got}, not {header}")
                    words = struct.unpack_from(f">{count}H", answer, at + 9)
                    for offset, word in enumerate(words):
                        registers[address + offset] = word
                    at += 9 + 2 * count
        except (OSError, TimeoutError, struct.error):
            self.close()
            return None
        return registers


@dataclass
class Device:
    """One device: where it is, its reads (address, count) and which field each address feeds."""

    prefix: str  # "reading,factory=..,machine=..,sector=.. ": tags sorted, as InfluxDB keeps them
    host: str
    port: int
    unit: int
    reads: list[tuple[int, int]]
    fields: list[tuple[str, int]]  # (field name, address)
    client: AsyncModbusTcpClient | None = None
    bare: BareClient | None = None


@dataclass
class Tally:
    cycles: int = 0
    late_cycles: int = 0
    posts: int = 0
    failed_posts: int = 0
    modbus_errors: int = 0
    points_read: int = 0
    points_stored: int = 0


async def read_device(device: Device, pipelined: bool = False) -> str | None:
    """One line of protocol for the device now, or None if it did not answer in full."""
    if device.bare is not None:
        time_ms = time.time_ns() // 1_000_000
        bare = await device.bare.read(device.reads, pipelined)
        if bare is None:
            return None
        registers = bare
    else:
        client = device.client
        assert client is not None
        if not client.connected and not await client.connect():
            return None
        time_ms = time.time_ns() // 1_000_000
        registers = {}
        for address, count in device.reads:
            response = await client.read_holding_registers(
                address, count=count, device_id=device.unit
            )
            if response.isError():
                return None
            for offset, word in enumerate(response.registers):
                registers[address + offset] = word
    fields = ",".join(f"{name}={registers[address]}i" for name, address in device.fields)
    return f"{device.prefix}{fields} {time_ms}"


async def run(spec: dict[str, Any], stop: asyncio.Event) -> Tally:
    devices = [
        Device(
            prefix=f"reading,factory={spec['factory']},machine={d['machine']},"
            f"sector={spec['sector']} ",
            host=d["host"],
            port=d["port"],
            unit=d["unit"],
            reads=[(a, c) for a, c in d["reads"]],
            fields=[(n, a) for n, a in d["fields"]],
        )
        for d in spec["devices"]
    ]
    interval = float(spec["interval"])
    kind = spec.get("client", "pymodbus")
    pipelined = kind == "bare-pipelined"
    tally = Tally()
    params = {"db": spec["database"], "precision": "ms"}
    async with httpx.AsyncClient(base_url=spec["influx_url"], timeout=5.0) as http:
        for device in devices:
            if kind == "pymodbus":
                device.client = AsyncModbusTcpClient(
                    device.host, port=device.port, timeout=1.0, retries=1, reconnect_delay=0
                )
            else:
                device.bare = BareClient(device.host, device.port, device.unit)
        try:
            due = time.monotonic()
            while not stop.is_set():
                results = await asyncio.gather(
                    *(read_device(d, pipelined) for d in devices), return_exceptions=True
                )
                lines = []
                for result in results:
                    if isinstance(result, str):
                        lines.append(result)
                    elif isinstance(result, ModbusException | OSError | type(None)):
                        tally.modbus_errors += 1
                    elif isinstance(result, BaseException):
                        raise result
                tally.cycles += 1
                tally.points_read += len(lines)
                if lines:
                    tally.posts += 1
                    body = ("\n".join(lines) + "\n").encode()
                    try:
                        response = await http.post("/write", params=params, content=body)
                        if response.status_code == 204:
                            tally.points_stored += len(lines)
                        else:
                            tally.failed_posts += 1
                    except httpx.HTTPError:
                        tally.failed_posts += 1
                due += interval
                now = time.monotonic()
                if now > due:  # a late cycle is skipped, not made up in a burst
                    tally.late_cycles += 1
                    due = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), due - now)
        finally:
            for device in devices:
                if device.client is not None:
                    device.client.close()
                if device.bare is not None:
                    device.bare.close()
    return tally


async def main_async(spec: dict[str, Any]) -> Tally:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await run(spec, stop)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: plain_loop.py SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(sys.argv[1]).read_text())
    # The bare client runs on uvloop, the fastest loop Python has; the pymodbus loop on asyncio's
    # own, as a plain program would.
    runner = asyncio.run if spec.get("client", "pymodbus") == "pymodbus" else uvloop.run
    tally = runner(main_async(spec))
    print(json.dumps(tally.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
