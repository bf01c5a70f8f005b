"""Modbus RTU on a serial line: the collector's time per transaction against the wire time the
baud rate implies, at 9,600 and 115,200 baud, reading 10 and 100 holding registers.

Run by `benchmarks/run.py` (shape `serial`), or alone:
    .venv/bin/python benchmarks/serial_bench.py [--seconds 20] [--warmup 2]

A pseudo-terminal ignores the baud rate (bytes cross it in microseconds), so the line is made
real here: a pacing relay sits between the simulator's pty and a second pty that the collector
opens as its serial port. Each byte takes 11 bit times on the relay's wire; a request reaches the
device only after the 3.5 characters of silence that end an RTU frame; no frame may start before
3.5 characters of silence after the last one; answer bytes reach the collector as a UART hands
them over (each at its time, in chunks of at most 1 ms, the last byte of a frame on time).

Three processes per case: the line (simulator and relay), the collector (`Collector` with its
Modbus source, disk buffer and health task, writing to a sink that accepts at once), and this
one. The relay measures its own lateness and the simulated device's answer time; both are taken
off the collector's time, so that what is left is the collector's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

SERIAL_SHAPE = "serial"
ROOT = Path(__file__).resolve().parent.parent
BAUDS = (9600, 115_200)
REGISTER_COUNTS = (10, 100)
# Start, 8 data, 2 stop: the RTU character without parity (8N2). 8E1, the spec's default, is as
# long, but a Linux pty refuses parity (tcsetattr: EINVAL), so the collector is set to 8N2.
BITS_PER_CHAR = 11
SILENCE_CHARS = 3.5  # the silence that ends an RTU frame
REQUEST_BYTES = 8  # read holding registers: unit, function, address, count, CRC
TARGET = 0.05  # the collector's overhead, as a share of the wire time
CHUNK_S = 0.001  # a UART hands received bytes over at least this often (a 16550's FIFO)
POLL_INTERVAL = 0.0001  # seconds between polls: shorter than any transaction, so back to back
_PR_SET_PDEATHSIG = 1
_PR_SET_TIMERSLACK = 29


def response_bytes(registers: int) -> int:
    """An RTU answer to a read of `registers` holding registers: unit, function, byte count,
    two bytes a register, CRC."""
    return 5 + 2 * registers


def wire_time(request: int, response: int, baud: int) -> float:
    """Seconds one transaction holds the line: its bytes at 11 bits each and the 3.5-character
    silence after each of its two frames."""
    char = BITS_PER_CHAR / baud
    return (request + response) * char + 2 * SILENCE_CHARS * char


@dataclass(frozen=True)
class SerialCase:
    baud: int
    registers: int
    request_bytes: int
    response_bytes: int
    transactions: int  # requests the collector sent in the window, by its own frame trace
    span_s: float  # from the first of them to the last
    requests: int  # the collector's `requests` counter over the window (a cross-check)
    device_s: float  # per transaction: the simulated device's answer time, as the line saw it
    relay_s: float  # per transaction: the relay's lateness (request to device, last answer byte)
    latency_ms_p50: float  # the collector's own latency_ms (request sent to answer decoded)
    cpu_s: float  # the collector process's CPU per transaction (user + system)
    errors: int  # timeouts and bad answers in the window (0 on a sound run)
    line_bytes_ok: bool  # the relay saw exactly the bytes the formula counts

    @property
    def wire_s(self) -> float:
        return wire_time(self.request_bytes, self.response_bytes, self.baud)

    @property
    def measured_s(self) -> float:
        """The collector's time per transaction: from one request it sends to the next."""
        return self.span_s / (self.transactions - 1) if self.transactions > 1 else float("nan")

    @property
    def line_s(self) -> float:
        return self.device_s + self.relay_s

    @property
    def sound(self) -> bool:
        """No errors, the bytes the formula counts, and every request of the window traced."""
        return (
            self.errors == 0 and self.line_bytes_ok and abs(self.requests - self.transactions) <= 1
        )

    @property
    def overhead_s(self) -> float:
        return self.measured_s - self.line_s - self.wire_s

    @property
    def overhead(self) -> float:
        return self.overhead_s / self.wire_s

    @property
    def met(self) -> bool:
        return self.sound and self.overhead <= TARGET


@dataclass(frozen=True)
class SerialMeasurement:
    seconds: float
    cases: tuple[SerialCase, ...]


# -- the line: the simulator behind a pacing relay ------------------------------------------------


def _timer_slack(nanoseconds: int) -> None:
    # The kernel lets a sleep run up to 50 µs late to batch wake-ups; the relay's clock is its
    # point, so its thread asks for none.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, nanoseconds, 0, 0, 0)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class PacedLine:
    """A half-duplex RTU line at `baud` between the collector's pty (`path`) and a device's.

    `records` holds one entry a transaction: [request seen, request bytes, answer bytes, line
    delay], the delay being what the relay and the device added beyond the wire time: the relay's
    lateness handing over the request and the answer's last byte, and the device's answer time.
    """

    def __init__(self, path: Path, device_path: str, baud: int) -> None:
        self.path = path
        self.char = BITS_PER_CHAR / baud
        self.silence = SILENCE_CHARS * self.char
        self.chunk = max(self.char, CHUNK_S)
        self.records: list[list[float]] = []
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        device = os.open(device_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(device)
        self._fds = (master, slave, device)
        if path.is_symlink():
            path.unlink()
        os.symlink(os.ttyname(slave), path)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="paced line", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (*self._fds, self._stop_r, self._stop_w):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _run(self) -> None:
        _timer_slack(1)
        master, _, device = self._fds
        char, silence = self.char, self.silence
        line_free = 0.0  # when the line has been silent long enough for a new frame
        request = b""  # on its way to the device
        request_end = 0.0  # when its last byte is off the wire
        device_at: float | None = None  # when the device sees the request's end (silence after)
        delivered = 0.0  # when the device got the request
        answered = True  # the device's answer to the current request has begun
        out = bytearray()  # answer bytes on their way to the collector
        dues: list[float] = []
        sent = 0  # of `out`, handed to the collector
        pushed = 0.0  # when bytes were last handed over
        record: list[float] | None = None
        while True:
            deadlines = []
            if device_at is not None:
                deadlines.append(device_at)
            if sent < len(out):
                deadlines.append(min(dues[-1], max(dues[sent], pushed + self.chunk)))
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            readable, _, _ = select.select([master, device, self._stop_r], [], [], timeout)
            if self._stop_r in readable:
                return
            now = time.monotonic()
            if master in readable:
                with contextlib.suppress(BlockingIOError):
                    data = os.read(master, 4096)
                    if request and device_at is not None:  # more of the same frame
                        start = request_end
                    else:
                        start = max(now, line_free)
                        record = [time.time(), 0, 0, 0.0, 0.0, 0.0]  # the collector's clock
                        self.records.append(record)
                        answered = False
                    request += data
                    request_end = start + len(data) * char
                    device_at = line_free = request_end + silence
                    if record is not None:
                        record[1] += len(data)
            if device in readable:
                with contextlib.suppress(BlockingIOError):
                    data = os.read(device, 4096)
                    if record is not None and not answered:
                        record[4] += now - delivered  # the device's answer time
                        answered = True
                    start = max(now, line_free, dues[-1] if sent < len(out) else 0.0)
                    if sent == len(out):
                        out.clear()
                        dues.clear()
                        sent = 0
                    out += data
                    dues.extend(start + (i + 1) * char for i in range(len(data)))
                    line_free = dues[-1] + silence
                    if record is not None:
                        record[2] += len(data)
            now = time.monotonic()
            if device_at is not None and now >= device_at:
                os.write(device, request)
                delivered = now
                if record is not None:
                    record[3] += now - device_at
                request, device_at = b"", None
            if sent < len(out) and now >= dues[sent]:
                upto = sent
                while upto < len(out) and dues[upto] <= now:
                    upto += 1
                with contextlib.suppress(OSError):  # nobody on the other side
                    os.write(master, bytes(out[sent:upto]))
                sent, pushed = upto, now
                if sent == len(out):
                    # A last byte handed over late ends the frame late: the silence after it
                    # runs from then, or the lateness would hide in it and be counted twice.
                    line_free = max(line_free, now + silence)
                    if record is not None:
                        record[5] += now - dues[-1]


async def serve_line(baud: int, registers: int, directory: Path) -> list[list[float]]:
    """The simulator's RTU device behind a paced line until SIGTERM; the line's records."""
    from simulators import generate_scenario, run_scenario

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    scenario = generate_scenario(1, registers, transport="rtu", pty_dir=str(directory))
    async with run_scenario(scenario, seed=1) as sim:
        device_path = str(sim.endpoints["dev-0"].port)
        with PacedLine(directory / "line", device_path, baud) as line:
            print(json.dumps({"ready": True, "port": str(line.path)}), flush=True)
            await stop.wait()
        return line.records


# -- the collector, on its side of the line ------------------------------------------------------


class NullSink:
    """An InfluxDB that accepts every write at once: only the collector's own work is timed."""

    async def write(self, points: Sequence[Any]) -> None:
        pass

    async def write_lines(self, lines: Sequence[str]) -> None:
        pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass


def collector_config(port: str, baud: int, registers: int, directory: Path) -> dict[str, Any]:
    return {
        "factory": "bench",
        "timezone": "UTC",
        "influxdb": {"quarantine_file": str(directory / "quarantine.jsonl")},
        "buffer": {"directory": str(directory / "buffer")},
        "state_file": str(directory / "state.json"),
        "sectors": [{"id": "bench"}],
        "machines": [
            {
                "id": "machine-0",
                "sector": "bench",
                "modbus": {
                    "transport": "rtu",
                    "serial_port": port,
                    "baudrate": baud,
                    "parity": "N",
                    "stopbits": 2,
                    "unit": 1,
                    "poll_interval": POLL_INTERVAL,
                    "timeout": 1.0,
                    "retries": 0,
                    "signals": [
                        {"name": f"r{a}", "table": "holding", "address": a, "type": "uint16"}
                        for a in range(registers)
                    ],
                },
            }
        ],
    }


class _SentStamps(deque[tuple[float, bool, bytes]]):
    """The Modbus source's trace of raw frames (its last 16, kept for bug reports), that also
    notes when each request went out: the collector's own clock on its transactions."""

    def __init__(self, frames: deque[tuple[float, bool, bytes]]) -> None:
        super().__init__(frames, maxlen=frames.maxlen)
        self.stamps: list[float] = []

    def append(self, frame: tuple[float, bool, bytes]) -> None:
        super().append(frame)
        if frame[1]:
            self.stamps.append(frame[0])


async def collect(
    port: str, baud: int, registers: int, seconds: float, warmup: float, directory: Path
) -> dict[str, Any]:
    """The real collector polling the line back to back; its counters over the window."""
    from collector.app import Collector
    from collector.config import Config

    config = Config.model_validate(collector_config(port, baud, registers, directory))
    collector = Collector(config, sink=NullSink())
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop), name="collector")
    try:
        await asyncio.sleep(warmup)
        source = collector.sources[0]
        health = source.health()[0]  # type: ignore[attr-defined]
        sent = _SentStamps(source.raw_frames)  # type: ignore[attr-defined]
        source.raw_frames = sent  # type: ignore[attr-defined]
        start, requests, errors = time.monotonic(), health.requests, health.errors
        wall, cpu = time.time(), time.process_time()
        latencies: list[float] = []
        while (now := time.monotonic()) - start < seconds:
            await asyncio.sleep(min(0.05, start + seconds - now))
            latencies.append(health.last_latency_ms)
        end, cpu = time.monotonic(), time.process_time() - cpu
        stamps = [stamp for stamp in sent.stamps if stamp >= wall]
        result = {
            "start": start,
            "end": end,
            "requests": health.requests - requests,
            "cpu_s": cpu,
            "errors": health.errors - errors,
            "sent": len(stamps),
            "first_sent": stamps[0] if stamps else 0.0,
            "last_sent": stamps[-1] if stamps else 0.0,
            "latency_ms_p50": statistics.median(latencies) if latencies else float("nan"),
        }
    finally:
        stop.set()
        await task
    return result


# -- one case, all cases -------------------------------------------------------------------------


def _child(args: list[str], **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        **options,
    )


def run_case(baud: int, registers: int, seconds: float, warmup: float) -> SerialCase:
    with tempfile.TemporaryDirectory(prefix="aguante-serial-bench-") as work:
        common = ["--baud", str(baud), "--registers", str(registers), "--dir", work]
        line = _child(["--line", *common])
        try:
            assert line.stdout is not None
            ready = json.loads(line.stdout.readline() or "{}")
            if not ready.get("ready"):
                raise RuntimeError("serial bench: the line did not start")
            timing = ["--seconds", str(seconds), "--warmup", str(warmup)]
            collector = _child(["--collector", "--port", ready["port"], *common, *timing])
            out, _ = collector.communicate(timeout=seconds + warmup + 60)
            if collector.returncode != 0:
                raise RuntimeError(f"serial bench: the collector failed ({collector.returncode})")
            side = json.loads(out.splitlines()[-1])
        finally:
            if line.poll() is None:
                line.send_signal(signal.SIGTERM)
            try:
                records_out, _ = line.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                line.kill()
                line.communicate()
                raise
        records = json.loads(records_out.splitlines()[-1])["records"]
    # The transactions the collector's span covers: from its first request to its last.
    window = [r for r in records if side["first_sent"] <= r[0] < side["last_sent"]]
    request, response = REQUEST_BYTES, response_bytes(registers)
    return SerialCase(
        baud=baud,
        registers=registers,
        request_bytes=request,
        response_bytes=response,
        transactions=side["sent"],
        span_s=side["last_sent"] - side["first_sent"],
        requests=side["requests"],
        device_s=statistics.fmean(r[4] for r in window) if window else float("nan"),
        relay_s=statistics.fmean(r[3] + r[5] for r in window) if window else float("nan"),
        latency_ms_p50=side["latency_ms_p50"],
        cpu_s=side["cpu_s"] / side["requests"] if side["requests"] else float("nan"),
        errors=side["errors"],
        line_bytes_ok=bool(window) and all(r[1:3] == [request, response] for r in window),
    )


def run_serial(
    seconds: float = 20.0,
    warmup: float = 2.0,
    bauds: Sequence[int] = BAUDS,
    register_counts: Sequence[int] = REGISTER_COUNTS,
) -> SerialMeasurement:
    cases = tuple(
        run_case(baud, registers, seconds, warmup)
        for baud in bauds
        for registers in register_counts
    )
    return SerialMeasurement(seconds, cases)


# -- the report ----------------------------------------------------------------------------------


def report_lines(m: SerialMeasurement) -> list[str]:
    lines = [
        "## Serial: Modbus RTU against wire time",
        "",
        f"The collector polls one RTU device (unit 1) back to back for {m.seconds:.0f} s a case, "
        "one read of holding registers a poll, through a paced virtual line: a relay between "
        "two pseudo-terminals holds each byte 11 bit times (8N2), hands a request to the device "
        "only after the 3.5-character silence that ends it, starts no frame before 3.5 "
        "characters of silence, and passes answer bytes on as a UART does (at least every 1 ms, "
        "the last one on time). The collector is the real one (`Collector`, its Modbus source, "
        "disk buffer and health task, pymodbus's serial client) writing to a sink that accepts "
        "at once.",
        "",
        "| baud | registers | bytes (request + answer) | transactions | wire, ms | measured, ms "
        "| device, ms | relay, ms | overhead, ms | overhead | latency_ms p50 | CPU, ms "
        "| target ≤ 5 % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in m.cases:
        verdict = "met" if c.met else "**missed**"
        if not c.sound:
            verdict += (
                f" ({c.errors} errors, {c.requests} requests counted"
                f"{'' if c.line_bytes_ok else ', bytes differ'})"
            )
        lines.append(
            f"| {c.baud:,} | {c.registers} | {c.request_bytes} + {c.response_bytes} "
            f"| {c.transactions:,} | {c.wire_s * 1000:.2f} | {c.measured_s * 1000:.2f} "
            f"| {c.device_s * 1000:.3f} | {c.relay_s * 1000:.3f} | {c.overhead_s * 1000:.3f} "
            f"| {c.overhead * 100:.1f} % | {c.latency_ms_p50:.2f} | {c.cpu_s * 1000:.2f} "
            f"| {verdict} |"
        )
    lines += [
        "",
        "How to read: *wire* is what the baud rate allows at best, (request + answer bytes) × 11 "
        "bits + two 3.5-character silences, one after each frame. *Measured* is the collector's "
        "own time per transaction: from the first request it sent in the window to the last, "
        "by its own trace of raw frames, over the transactions between (its `requests` "
        "counter checks that none was missed). *Line side* (device + relay) is what the "
        "virtual line added beyond the "
        "wire, as the relay measured it: its own lateness and the simulated device's answer "
        "time; it is taken off, as a real device's answer time would not be the collector's. "
        "*Overhead* is what is left, measured − line side − wire, as a share of the wire time; "
        "the collector's work between an answer's last byte and its next request is free as "
        "long as it fits in the 3.5-character silence. *latency_ms* is the collector's own "
        "figure per poll (request sent to answer decoded); *CPU* the collector process's CPU "
        "time per transaction. Where the overhead is above zero it is that CPU, spent between an "
        "answer's last byte and the next request (pymodbus decoding and encoding, the reading "
        "into the disk buffer, a few turns of the event loop), beyond what the silence hides. "
        "Above 19,200 baud the Modbus spec "
        "fixes the silence at 1.75 ms instead of 3.5 characters; with it the wire time would be "
        "longer and the overhead share smaller: the table holds the stricter formula.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--line", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", help=argparse.SUPPRESS)
    parser.add_argument("--baud", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--registers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.line or args.collector:
        sys.path.insert(0, str(ROOT))
        _die_with_parent()
    if args.line:
        sys.setswitchinterval(0.0001)  # the relay's thread waits less for the simulator's
        records = asyncio.run(serve_line(args.baud, args.registers, args.dir))
        print(json.dumps({"records": records}), flush=True)
        return 0
    if args.collector:
        from collector.cli import event_loop_factory

        # On the event loop `aguante collect` runs on.
        with asyncio.Runner(loop_factory=event_loop_factory("uvloop")) as runner:
            side = runner.run(
                collect(args.port, args.baud, args.registers, args.seconds, args.warmup, args.dir)
            )
        print(json.dumps(side), flush=True)
        return 0
    print("\n".join(report_lines(run_serial(args.seconds, args.warmup))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
