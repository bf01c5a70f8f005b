"""The benchmark's floor: the plainest asyncio loop that polls the devices and stores the points
the collector does — one pymodbus client per device, hand-built line protocol, one POST a cycle.

    plain_loop.py SPEC.json      (written by run.py; SIGTERM or SIGINT stops it)

On stop it prints one JSON line with what it did: cycles, late cycles, points read and stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException


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


@dataclass
class Tally:
    cycles: int = 0
    late_cycles: int = 0
    posts: int = 0
    failed_posts: int = 0
    modbus_errors: int = 0
    points_read: int = 0
    points_stored: int = 0


async def read_device(device: Device) -> str | None:
    """One line of protocol for the device now, or None if it did not answer in full."""
    client = device.client
    assert client is not None
    if not client.connected and not await client.connect():
        return None
    time_ms = time.time_ns() // 1_000_000
    registers: dict[int, int] = {}
    for address, count in device.reads:
        response = await client.read_holding_registers(address, count=count, device_id=device.unit)
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
    tally = Tally()
    params = {"db": spec["database"], "precision": "ms"}
    async with httpx.AsyncClient(base_url=spec["influx_url"], timeout=5.0) as http:
        for device in devices:
            device.client = AsyncModbusTcpClient(
                device.host, port=device.port, timeout=1.0, retries=1, reconnect_delay=0
            )
        try:
            due = time.monotonic()
            while not stop.is_set():
                results = await asyncio.gather(
                    *(read_device(d) for d in devices), return_exceptions=True
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
    tally = asyncio.run(main_async(spec))
    print(json.dumps(tally.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
