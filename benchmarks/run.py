"""`make bench`: the collector against the plainest Python loop and against Node-RED, polling the
same simulated devices into the same InfluxDB, in one run on this machine; then (mqtt_bench.py)
against the plainest paho subscriber, taking add-on boards' messages from Mosquitto; then
(kpi_bench.py) KPI queries over a year of minute rollups of 50 machines; then
(maintenance_bench.py) maintenance rule cycles of 50 machines × 10 rules and the ticket API under
20 clients; the durable buffer through a long outage (buffer_bench.py); Modbus RTU against the
wire time (serial_bench.py); 1,000 devices on one core and the memory (scale_bench.py); a network
of 300 plants (network_bench.py); rewrites benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run.py [--seconds 30] [--warmup 5] [--repeat 2] [--burst 50000]
        [--shapes plant,scale,mqtt-tasmota,mqtt-tasmota-burst,mqtt-plain,mqtt-plain-burst,kpi-year,
        maintenance]

A contender is a command to start and a process to measure (`Contender`); the simulators and
`influxd` run in processes of their own so that only the contender's CPU is counted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as dt
import json
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
BIN = Path(sys.executable).parent  # the venv's bin, where `aguante` is installed
sys.path.insert(0, str(ROOT))  # for tests.services (the tests' own influxd harness)

import buffer_bench  # noqa: E402  (benchmarks/, the script's own directory)
import kpi_bench  # noqa: E402
import maintenance_bench  # noqa: E402
import mqtt_bench  # noqa: E402
import network_bench  # noqa: E402
import nodered  # noqa: E402
import pyspy  # noqa: E402
import serial_bench  # noqa: E402
from machine import machine_description  # noqa: E402
from procstat import cpu_seconds, peak_rss_kib  # noqa: E402

from tests.services import InfluxDB  # noqa: E402

GAP_FILL = 10  # the collector's default: unused registers read through to save a request
MAX_REGISTERS = 125  # per read request, the protocol's limit (function code 3)
FACTORY = "bench"
SECTOR = "bench"
CPU_TARGET = 1.0  # aguante's CPU per value stored, as a multiple of the plain loop's
NODE_RED_FACTOR = 10.0  # … and at least this many times less than Node-RED's
PROFILED = ("plain loop", "aguante", "bare client")  # py-spy reads Python processes only
# Samples a second: the plant's contenders are busy about 1 % of the time, so py-spy's usual
# 100 would give a handful of samples.
PROFILE_RATE = 2000
_PR_SET_PDEATHSIG = 1
KPI_SHAPE = "kpi-year"  # a year of minute rollups for 50 machines, then KPI queries
MAINTENANCE_SHAPE = maintenance_bench.MAINTENANCE_SHAPE  # rule cycles and the ticket API
BUFFER_SHAPE = buffer_bench.BUFFER_SHAPE  # a long outage through the durable buffer
SERIAL_SHAPE = serial_bench.SERIAL_SHAPE  # Modbus RTU against the wire time of its baud rate
# scale_bench.py imports this module: its shapes are named here, it is imported when run.
SCALE_SHAPE = "scale-1000"  # 1,000 devices × 60 registers on one core
MEMORY_SHAPE = "memory"  # the collector's RSS: the example plant, 100 devices
# Window edges cut polls in flight: the collector polls up to 100 devices due at one instant,
# so an edge inside such a burst moves up to 100 × 5 of the 200 × 5 × 30 requests of the scatter
# shape's window (1.7 %) across it. A wrong read plan is off by a whole request a poll (20 %).
REQUEST_TOLERANCE = 0.03


# -- what is measured ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A plant to poll: `devices` TCP devices, each read at the same holding `addresses`."""

    name: str
    title: str
    devices: int
    addresses: tuple[int, ...]
    interval: float = 1.0

    @property
    def values_per_poll(self) -> int:
        return len(self.addresses)

    @property
    def minimum_reads(self) -> list[tuple[int, int]]:
        return minimum_reads(self.addresses, GAP_FILL, MAX_REGISTERS)


def minimum_reads(addresses: Sequence[int], gap_fill: int, limit: int) -> list[tuple[int, int]]:
    """The fewest (address, count) reads covering one-register `addresses`, reading through at
    most `gap_fill` unused registers and at most `limit` registers a request. Worked out here,
    not taken from the collector's planner, so that a planner bug shows up as a miss.

    Greedy is optimal: a request covers a run of consecutive sorted addresses, and stretching
    each run as far as both limits allow never leaves more addresses for later requests."""
    reads: list[tuple[int, int]] = []
    for address in sorted(set(addresses)):
        if reads:
            start, count = reads[-1]
            if address - (start + count) <= gap_fill and address + 1 - start <= limit:
                reads[-1] = (start, address + 1 - start)
                continue
        reads.append((address, 1))
    return reads


SHAPES = {
    "plant": Shape(
        "plant", "20 devices × 100 contiguous holding registers, 1 s", 20, tuple(range(100))
    ),
    # Pairs 11 apart (10 unused between: merged at gap_fill 10), pairs 40 apart (split).
    "scale": Shape(
        "scale",
        "200 devices × 10 scattered holding registers, 1 s",
        200,
        tuple(a for base in range(0, 200, 40) for a in (base, base + 11)),
    ),
}
ALL_SHAPES = [
    *SHAPES,
    *mqtt_bench.MQTT_SHAPES,
    KPI_SHAPE,
    MAINTENANCE_SHAPE,
    BUFFER_SHAPE,
    SERIAL_SHAPE,
    SCALE_SHAPE,
    MEMORY_SHAPE,
    network_bench.NETWORK_SHAPE,
]


@dataclass(frozen=True)
class Target:
    """What every contender is pointed at for one shape."""

    shape: Shape
    ports: list[int]
    influx_url: str
    database: str
    workdir: Path


class Contender(Protocol):
    """A command to start against a target; `points_read` is what it says it read, if it says."""

    name: str

    def command(self, target: Target) -> list[str]: ...

    def points_read(self, target: Target, stdout: str, influx: InfluxDB) -> int | None: ...


class PlainLoop:
    name = "plain loop"
    client = "pymodbus"  # or "bare", "bare-pipelined": see plain_loop.py

    def command(self, target: Target) -> list[str]:
        shape = target.shape
        spec = {
            "factory": FACTORY,
            "sector": SECTOR,
            "influx_url": target.influx_url,
            "database": target.database,
            "interval": shape.interval,
            "client": self.client,
            "devices": [
                {
                    "machine": f"machine-{n}",
                    "host": "127.0.0.1",
                    "port": port,
                    "unit": 1,
                    "reads": shape.minimum_reads,
                    "fields": [(f"r{a}", a) for a in shape.addresses],
                }
                for n, port in enumerate(target.ports)
            ],
        }
        path = target.workdir / f"{target.database}.json"
        path.write_text(json.dumps(spec))
        return [sys.executable, str(BENCH / "plain_loop.py"), str(path)]

    def points_read(self, target: Target, stdout: str, influx: InfluxDB) -> int | None:
        for line in reversed(stdout.splitlines()):
            with contextlib.suppress(ValueError):
                return int(json.loads(line)["points_read"])
        return None


class BareClient(PlainLoop):
    """The plain loop with no Modbus library: the floor below the floor."""

    name = "bare client"
    client = "bare"


class BarePipelined(PlainLoop):
    name = "bare pipelined"
    client = "bare-pipelined"


class Aguante:
    name = "aguante"

    def command(self, target: Target) -> list[str]:
        shape = target.shape
        config = {
            "factory": FACTORY,
            "timezone": "UTC",
            "influxdb": {
                "url": target.influx_url,
                "database": target.database,
                "create_database": True,
                "quarantine_file": str(target.workdir / f"{target.database}-quarantine.jsonl"),
            },
            "buffer": {"directory": str(target.workdir / f"{target.database}-buffer")},
            "sectors": [{"id": SECTOR}],
            "machines": [
                {
                    "id": f"machine-{n}",
                    "sector": SECTOR,
                    "modbus": {
                        "transport": "tcp",
                        "host": "127.0.0.1",
                        "port": port,
                        "unit": 1,
                        "poll_interval": shape.interval,
                        "signals": [
                            {"name": f"r{a}", "table": "holding", "address": a, "type": "uint16"}
                            for a in shape.addresses
                        ],
                    },
                }
                for n, port in enumerate(target.ports)
            ],
        }
        path = target.workdir / f"{target.database}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [str(BIN / "aguante"), "collect", str(path)]

    def points_read(self, target: Target, stdout: str, influx: InfluxDB) -> int | None:
        # The collector's own health points, the last one written on stop: polls that gave values.
        rows = influx.query(
            "SELECT LAST(good_polls) FROM collector GROUP BY machine", database=target.database
        )
        return sum(int(row["last"]) for row in rows) if rows else None


CONTENDERS: list[Contender] = [
    PlainLoop(),
    Aguante(),
    nodered.NodeRed(FACTORY, SECTOR),
    BareClient(),
    BarePipelined(),
]


@dataclass
class Snapshot:
    time: float
    cpu_s: float
    requests: int
    writes: int
    write_bytes: int
    sim_cpu_s: float
    influxd_cpu_s: float


@dataclass
class Measurement:
    contender: str
    shape: Shape
    window_s: float = 0.0
    cpu_s: float = 0.0
    startup_cpu_s: float = 0.0
    peak_rss_kib: int = 0
    requests: int = 0
    writes: int = 0
    write_bytes: int = 0
    sim_cpu_s: float = 0.0
    influxd_cpu_s: float = 0.0
    points_window: int = 0
    values_window: int = 0
    points_total: int = 0
    values_total: int = 0
    points_read: int | None = None
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)
    # CPU s per 1,000 values of every round of this contender, when it ran several (this is
    # the round with the median)
    rounds: list[float] = field(default_factory=list)
    # py-spy on this contender after the measured window of its last round (Python ones only)
    profile: pyspy.Profile | None = None

    @property
    def cpu_per_1000_values(self) -> float:
        return self.cpu_s / self.values_window * 1000 if self.values_window else float("nan")

    @property
    def requests_per_poll(self) -> float:
        return self.requests / self.points_window if self.points_window else float("nan")

    @property
    def polls_per_device_s(self) -> float:
        return self.points_window / self.shape.devices / self.window_s

    @property
    def expected_values(self) -> float:
        return self.shape.devices * self.shape.values_per_poll * self.window_s / self.shape.interval


# -- processes -----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Runs in each child before exec: if the runner is killed outright (SIGKILL), the kernel
    # still stops its children, so no simulator or contender outlives a benchmark.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def free_port_block(count: int) -> int:
    """A first port such that it and the `count` after it are free on 127.0.0.1."""
    for _ in range(50):
        base = random.randrange(20000, 60000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count + 1):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no block of {count + 1} free loopback ports found")


def wait_ready(process: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    """Wait for the `{"ready": ...}` line a device server prints once every device listens."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=60):
            raise RuntimeError(f"{what} did not start within 60 s")
    if not process.stdout.readline().startswith(b'{"ready"'):
        raise RuntimeError(f"{what} did not start:\n{_tail(log_path)}")


def stop_ready_process(process: subprocess.Popen[bytes]) -> None:
    stop_process(process)
    if process.stdout is not None:
        process.stdout.close()


class ReadyServer:
    """A device server in a process and session of its own that says on stdout when it serves
    (`wait_ready`), stopped by `stop_ready_process`: run.py's and scale_bench.py's simulators."""

    process: subprocess.Popen[bytes] | None = None

    def _start(
        self,
        command: list[str],
        what: str,
        log_path: Path,
        preexec_fn: Callable[[], None],
    ) -> None:
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the runner only, which stops it in order
                preexec_fn=preexec_fn,
            )
        try:
            wait_ready(self.process, what, log_path)
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_ready_process(process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class SimServer(ReadyServer):
    """benchmarks/sim_server.py serving a shape, in its own process and session."""

    def __init__(self, shape: Shape, workdir: Path) -> None:
        self.shape = shape
        self.control_port = free_port_block(shape.devices)
        self.port_base = self.control_port + 1
        self.ports = [self.port_base + n for n in range(shape.devices)]
        self.log_path = workdir / f"sim-{shape.name}.log"

    def __enter__(self) -> SimServer:
        registers = max(self.shape.addresses) + 1
        command = [
            sys.executable,
            str(BENCH / "sim_server.py"),
            f"--devices={self.shape.devices}",
            f"--registers={registers}",
            f"--port-base={self.port_base}",
            f"--control-port={self.control_port}",
        ]
        self._start(command, "the simulators", self.log_path, _die_with_parent)
        return self

    def requests(self) -> int:
        """Modbus requests every device has received so far."""
        response = httpx.get(f"http://127.0.0.1:{self.control_port}/devices", timeout=10.0)
        response.raise_for_status()
        return sum(int(device["requests"]) for device in response.json())


def influx_writes(influx: InfluxDB) -> tuple[int, int]:
    """(write requests, bytes written) that influxd has served since it started."""
    rows = influx.query("SHOW STATS FOR 'httpd'")
    return sum(int(r["writeReq"]) for r in rows), sum(int(r["writeReqBytes"]) for r in rows)


def influxd_pid(influx: InfluxDB) -> int | None:
    # The test harness keeps its process private; reading it here is only for the CPU figure.
    process: subprocess.Popen[bytes] | None = getattr(influx, "_process", None)
    return process.pid if process is not None else None


def count_reading(influx: InfluxDB, database: str, where: str = "") -> tuple[int, int]:
    """(points, values) of the `reading` measurement, optionally within a WHERE clause."""
    values_rows = influx.query(f"SELECT COUNT(*) FROM reading {where}", database=database)
    values = sum(int(v) for row in values_rows for k, v in row.items() if k.startswith("count_"))
    # Every contender stores field r0 in every point (address 0 is in every shape).
    point_rows = influx.query(f"SELECT COUNT(r0) FROM reading {where}", database=database)
    return (int(point_rows[0]["count"]) if point_rows else 0), values


# -- one contender on one shape ------------------------------------------------------------------


def measure(
    contender: Contender,
    target: Target,
    sim: SimServer,
    influx: InfluxDB,
    *,
    seconds: float,
    warmup: float,
    profile_seconds: float = 0.0,
) -> Measurement:
    """One run of `contender`; with `profile_seconds`, py-spy on it after the measured window
    (its sampling touches none of the measured figures)."""
    result = Measurement(contender.name, target.shape)
    command = contender.command(target)
    influx.create_database(target.database)  # fresh for each; aguante's own CREATE is a no-op
    out_path = target.workdir / f"{target.database}.out"
    err_path = target.workdir / f"{target.database}.err"
    influxd = influxd_pid(influx)

    def snapshot(pid: int) -> Snapshot:
        requests = sim.requests()
        now = time.time()
        cpu = cpu_seconds(pid)
        writes, write_bytes = influx_writes(influx)
        return Snapshot(
            now,
            cpu,
            requests,
            writes,
            write_bytes,
            cpu_seconds(sim.pid),
            cpu_seconds(influxd) if influxd else 0.0,
        )

    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=target.workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        # Some take longer to start polling (Node-RED deploys its flows first): their own extra.
        if _exited_within(process, warmup + getattr(contender, "extra_warmup_s", 0.0)):
            raise RuntimeError(f"{contender.name} exited at start:\n{_tail(err_path)}")
        before = snapshot(process.pid)
        if _exited_within(process, seconds):
            raise RuntimeError(f"{contender.name} exited while measured:\n{_tail(err_path)}")
        after = snapshot(process.pid)
        result.peak_rss_kib = peak_rss_kib(process.pid)
        if profile_seconds > 0:
            print(f"   profiling {contender.name} for {profile_seconds:g} s (py-spy)", flush=True)
            output = target.workdir / f"{target.database}.profile"
            profile = pyspy.record_profile(
                process.pid, profile_seconds, output, top=10, rate=PROFILE_RATE
            )
            if isinstance(profile, str):
                result.problems.append(profile)
            else:
                result.profile = profile
    finally:
        result.exit_code = stop_process(process)
    result.window_s = after.time - before.time
    result.cpu_s = after.cpu_s - before.cpu_s
    result.startup_cpu_s = before.cpu_s
    result.requests = after.requests - before.requests
    result.writes = after.writes - before.writes
    result.write_bytes = after.write_bytes - before.write_bytes
    result.sim_cpu_s = after.sim_cpu_s - before.sim_cpu_s
    result.influxd_cpu_s = after.influxd_cpu_s - before.influxd_cpu_s
    window = f"WHERE time >= {int(before.time * 1000)}ms AND time < {int(after.time * 1000)}ms"
    result.points_window, result.values_window = count_reading(influx, target.database, window)
    result.points_total, result.values_total = count_reading(influx, target.database)
    result.points_read = contender.points_read(target, out_path.read_text(errors="replace"), influx)
    if result.exit_code != 0:
        result.problems.append(f"exited with {result.exit_code} on SIGTERM")
    warnings = [
        line
        for line in err_path.read_text(errors="replace").splitlines()
        if " WARNING " in line or " ERROR " in line or "Traceback" in line
    ]
    if warnings:
        result.problems.append(f"{len(warnings)} warnings/errors logged, first: {warnings[0]}")
    return result


def median_round(rounds: Sequence[Measurement]) -> Measurement:
    """The round with the median CPU per value (the lower of the two middle ones for an even
    count), carrying every round's figure; problems of any round are kept."""
    ordered = sorted(rounds, key=lambda m: m.cpu_per_1000_values)
    chosen = dataclasses.replace(ordered[(len(ordered) - 1) // 2])
    chosen.rounds = [m.cpu_per_1000_values for m in rounds]
    chosen.problems = [
        f"round {n}: {problem}" if len(rounds) > 1 else problem
        for n, m in enumerate(rounds, 1)
        for problem in m.problems
    ]
    return chosen


def _exited_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- the report ----------------------------------------------------------------------------------


def _f(value: float, digits: int = 2) -> str:
    return "—" if value != value else f"{value:,.{digits}f}"  # NaN: nothing measured


@dataclass
class Verdict:
    label: str
    passed: bool


def verdicts(results: Sequence[Measurement]) -> list[Verdict]:
    plain = _named(results, PlainLoop.name)
    aguante = _named(results, Aguante.name)
    node_red = _named(results, nodered.NodeRed.name)
    out: list[Verdict] = []
    if node_red is not None and aguante is not None and aguante.cpu_per_1000_values > 0:
        times = node_red.cpu_per_1000_values / aguante.cpu_per_1000_values
        out.append(
            Verdict(
                f"aguante CPU per value ≥ {NODE_RED_FACTOR:.0f}× less than Node-RED's: "
                f"{times:.1f}× less",
                times >= NODE_RED_FACTOR,
            )
        )
    if plain is not None and aguante is not None and plain.cpu_per_1000_values > 0:
        ratio = aguante.cpu_per_1000_values / plain.cpu_per_1000_values
        out.append(
            Verdict(
                f"aguante CPU per value ≤ {CPU_TARGET:.1f}× the plain loop's: {ratio:.2f}×",
                ratio <= CPU_TARGET,
            )
        )
    for m in results:
        minimum = len(m.shape.minimum_reads)
        ok = abs(m.requests_per_poll - minimum) <= REQUEST_TOLERANCE * minimum
        out.append(
            Verdict(
                f"{m.contender}: Modbus requests per poll = minimum {minimum}: "
                f"{_f(m.requests_per_poll)}",
                ok,
            )
        )
        lost = (m.points_read - m.points_total) if m.points_read is not None else None
        out.append(
            Verdict(
                f"{m.contender}: every point read is stored: {m.points_total:,} stored of "
                f"{'?' if m.points_read is None else f'{m.points_read:,}'} read",
                lost == 0,
            )
        )
    return out


def shape_table(shape: Shape, results: list[Measurement]) -> list[str]:
    reads = shape.minimum_reads
    through = minimum_reads(shape.addresses, MAX_REGISTERS, MAX_REGISTERS)
    base = _named(results, PlainLoop.name)
    rows: list[tuple[str, list[str]]] = [
        ("measured window, s", [_f(m.window_s, 1) for m in results]),
        ("CPU in window, s (user+sys)", [_f(m.cpu_s) for m in results]),
        (
            "**CPU s per 1,000 values stored**",
            [f"**{_f(m.cpu_per_1000_values, 4)}**" for m in results],
        ),
        (
            "… relative to the plain loop",
            [
                f"{m.cpu_per_1000_values / base.cpu_per_1000_values:.2f}×"
                if base and base.cpu_per_1000_values > 0
                else "—"
                for m in results
            ],
        ),
        (
            "CPU s per 1,000 values of each round (the median round is this column)",
            [" / ".join(_f(c, 4) for c in m.rounds) if m.rounds else "—" for m in results],
        ),
        ("CPU before the window, s (start-up + warm-up)", [_f(m.startup_cpu_s) for m in results]),
        ("peak RSS (VmHWM), MiB", [_f(m.peak_rss_kib / 1024, 1) for m in results]),
        (
            f"Modbus requests per poll, at the simulator (minimum {len(reads)})",
            [_f(m.requests_per_poll) for m in results],
        ),
        ("polls per device per second", [_f(m.polls_per_device_s, 3) for m in results]),
        (
            "values stored in window / scheduled",
            [
                f"{m.values_window:,} / {m.expected_values:,.0f} "
                f"({m.values_window / m.expected_values:.1%})"
                for m in results
            ],
        ),
        ("InfluxDB /write requests per second", [_f(m.writes / m.window_s) for m in results]),
        (
            "bytes per /write request",
            [f"{m.write_bytes / m.writes:,.0f}" if m.writes else "—" for m in results],
        ),
        (
            "points read (own count) / stored, whole run",
            [
                f"{'?' if m.points_read is None else f'{m.points_read:,}'} / {m.points_total:,}"
                for m in results
            ],
        ),
        ("values stored, whole run", [f"{m.values_total:,}" for m in results]),
        ("simulators' CPU in window, s", [_f(m.sim_cpu_s) for m in results]),
        ("influxd's CPU in window, s", [_f(m.influxd_cpu_s) for m in results]),
    ]
    lines = [
        f"### {shape.title}",
        "",
        f"Each device: holding registers {_address_summary(shape.addresses)} as uint16; "
        f"protocol minimum with gap_fill {GAP_FILL}: {len(reads)} read(s) "
        f"{', '.join(f'{a}+{c}' for a, c in reads)} "
        f"({len(reads) * shape.devices} a cycle for {shape.devices} devices); "
        f"reading through every gap would take {len(through)}.",
        "",
        "| | " + " | ".join(m.contender for m in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    lines.append("")
    lines += [f"- {'PASS' if v.passed else 'FAIL'}: {v.label}" for v in verdicts(results)]
    for m in results:
        lines += [f"- note ({m.contender}): {problem}" for problem in m.problems]
    lines.append("")
    target = node_red_target(results)
    if target:
        lines += [target, ""]
    lines += profile_lines(results)
    return lines


def profile_lines(results: Sequence[Measurement]) -> list[str]:
    """Where the Python contenders' CPU went (py-spy after their last round): with
    `node_red_target`, what explains a miss."""
    profiled = [m for m in results if m.profile is not None and m.profile.samples]
    if not profiled:
        return []
    profile_s = max(m.profile.seconds for m in profiled if m.profile is not None)
    lines = [
        f"Profiles (py-spy, {PROFILE_RATE} samples a second for {profile_s:g} s after each "
        "one's last round; idle waits left out), own time by library, share of busy samples: "
        + "; ".join(
            f"{m.contender} ({m.profile.samples:,} samples): {pyspy.area_summary(m.profile)}"
            for m in profiled
            if m.profile is not None
        )
        + "."
    ]
    aguante = _named(profiled, Aguante.name)
    if aguante is not None:
        lines[-1] += (
            " aguante and the bare client run on uvloop, whose event loop is C: its time, "
            "system calls included, shows under `Runner.run`."
        )
    if aguante is not None and aguante.profile is not None:
        lines += [
            "",
            "| aguante: function (file) | own % | with callees % |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| `{fn.replace('|', '/')}` | {own:.1f} | {total:.1f} |"
            for fn, own, total in aguante.profile.top
        ]
    lines.append("")
    return lines


def _named(results: Sequence[Measurement], name: str) -> Measurement | None:
    return next((m for m in results if m.contender == name), None)


def node_red_target(results: Sequence[Measurement]) -> str:
    """What 10× less than Node-RED asks, against the plain loop, and how near each Python
    contender came — the bare clients show how much of it any Python collector could reach."""
    plain = _named(results, PlainLoop.name)
    node_red = _named(results, nodered.NodeRed.name)
    if plain is None or node_red is None or not plain.cpu_per_1000_values > 0:
        return ""
    floor = node_red.cpu_per_1000_values / plain.cpu_per_1000_values
    reached = [
        f"{m.contender} {m.cpu_per_1000_values / plain.cpu_per_1000_values:.2f}×, "
        f"{node_red.cpu_per_1000_values / m.cpu_per_1000_values:.1f}× less than Node-RED"
        for m in results
        if m not in (plain, node_red) and m.cpu_per_1000_values > 0
    ]
    return (
        f"Node-RED spent {floor:.1f}× the plain loop's CPU per value here, so "
        f"{NODE_RED_FACTOR:.0f}× less than Node-RED means "
        f"{floor / NODE_RED_FACTOR:.2f}× the plain loop's"
        + (f" ({'; '.join(reached)})." if reached else ".")
    )


def _address_summary(addresses: Sequence[int]) -> str:
    if list(addresses) == list(range(addresses[0], addresses[-1] + 1)):
        return f"{addresses[0]}–{addresses[-1]}"
    return ", ".join(str(a) for a in addresses)


HOW_TO_READ = """\
The contenders poll the same simulated Modbus TCP devices (`benchmarks/sim_server.py`, a process
of its own) every second and store the same points — measurement `reading`, tags
factory/sector/machine, one field per register, ms time stamps — in a fresh database of one
private `influxd`. The *plain loop* (`benchmarks/plain_loop.py`) is the floor of what Python
does for that job: one pymodbus client per device, the fewest reads, line protocol built by hand,
one POST a cycle; no config validation, no buffer, no retries, no health points. *aguante* is the
real `aguante collect` on a generated config (on uvloop, its default event loop; the plain loop
runs on asyncio's own, as a plain program would), its health points every 10 s included.
*Node-RED* is the do-it-yourself stack plants use today (`benchmarks/nodered.py`: Node-RED 4.1 with
node-red-contrib-modbus and node-red-contrib-influxdb, installed from npm by the benchmark into
`benchmarks/nodered/`): per device a Modbus client, one read node per request of the same plan, a
function node joining the registers into one point, and an InfluxDB node writing each point as it
comes — the way such flows are built (its fields are floats: the node writes JS numbers so).
The *bare client* is the plain loop with no Modbus library at all: function 3 over TCP written by
hand as an asyncio protocol, on uvloop — the least any Python collector could spend, so how much
of the 10×-less-than-Node-RED target is within reach at all. *bare pipelined* also sends all of a
poll's requests in one write without waiting for each answer: Modbus TCP allows it, but many
devices and gateways answer only one request at a time, so no collector can do it by default.

Only the window after the warm-up counts. CPU is user+sys time of the contender's process
(/proc/PID/stat) over the window, divided by the values whose time stamps fall in it, counted in
InfluxDB afterwards — a value read but not stored does not count. Modbus requests are counted by
the simulators over the same window and divided by the points stored in it; the window's edges may
cut polls in flight either way (hence a 3 % tolerance: the collector polls up to 100 devices due at
one instant, and an edge inside that burst moves up to 1.7 % of a window's requests across it; a
wrong read plan is off by a whole request a poll, 20 % or more here).
/write requests and bytes are influxd's own `SHOW STATS` counters. "Points read / stored" compares
what the contender says it read (the plain loop's tally; aguante's last `collector` health point,
`good_polls`) with what InfluxDB holds after the contender was stopped with SIGTERM. The
contender, the simulators and influxd share a few cores, so expect some per cent of noise from run
to run (and the CPU clock ticks at 10 ms); rerun before reading much into small differences.
"""


def write_report(
    path: Path,
    results: dict[str, list[Measurement]],
    args: argparse.Namespace,
    started: float,
    mqtt_results: dict[str, list[mqtt_bench.MqttMeasurement]] | None = None,
    kpi_result: kpi_bench.KpiMeasurement | None = None,
    maintenance_result: maintenance_bench.MaintenanceMeasurement | None = None,
    buffer_result: buffer_bench.BufferMeasurement | None = None,
    serial_result: serial_bench.SerialMeasurement | None = None,
    scale_result: Any = None,
    memory_result: Any = None,
    network_result: network_bench.NetworkMeasurement | None = None,
) -> None:
    info = machine_description()
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (`benchmarks/run.py`), the Soak section by `make soak` "
        "(`benchmarks/soak.py`); do not edit by hand.",
        "",
        f"- date: {dt.datetime.fromtimestamp(started, dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{time.time() - started:.0f} s in all",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM, {info['kernel']}",
        f"- versions: Python {info['python']}, pymodbus {info['pymodbus']}, httpx {info['httpx']}, "
        f"aguante {info['aguante']}, {info['influxd']}",
        f"- command: `{' '.join(['benchmarks/run.py', *sys.argv[1:]])}` "
        f"({args.seconds:g} s measured per contender per shape after {args.warmup:g} s warm-up; "
        "Modbus: contenders one after the other, plain loop first, Node-RED with 10 s more "
        f"warm-up, in {args.rounds} interleaved round(s), the median round reported; "
        "MQTT: the plant rates for as long, "
        f"bursts of {args.burst:,} messages, each contender {args.repeat}×)",
        "",
    ]
    if results:
        lines += ["## Modbus: polled devices", ""]
    for measurements in results.values():
        if measurements:
            lines += shape_table(measurements[0].shape, measurements)
    if results:
        lines += [
            "### How to read the Modbus tables",
            "",
            HOW_TO_READ,
        ]
    lines += mqtt_bench.report_lines(mqtt_results or {}, args.repeat)
    if kpi_result is not None:
        lines += kpi_bench.report_lines(kpi_result)
    if maintenance_result is not None:
        lines += maintenance_bench.report_lines(maintenance_result)
    if buffer_result is not None:
        lines += buffer_bench.report_lines(buffer_result)
    if serial_result is not None:
        lines += serial_bench.report_lines(serial_result)
    if scale_result is not None or memory_result is not None:
        import scale_bench

        lines += scale_bench.report_lines(scale_result, memory_result)
    if network_result is not None:
        lines += network_bench.report_lines(network_result)
    lines += _soak_section(path)
    path.write_text("\n".join(lines))


def _soak_section(path: Path) -> list[str]:
    """The section `make soak` (benchmarks/soak.py) writes: kept as it is, not measured here."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    start = text.find("\n## Soak")
    return ["", text[start + 1 :].rstrip("\n"), ""] if start >= 0 else []


# -- main ----------------------------------------------------------------------------------------


def run(
    args: argparse.Namespace,
) -> tuple[
    dict[str, list[Measurement]],
    dict[str, list[mqtt_bench.MqttMeasurement]],
    kpi_bench.KpiMeasurement | None,
    maintenance_bench.MaintenanceMeasurement | None,
]:
    results: dict[str, list[Measurement]] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aguante-bench-")))
        influx = stack.enter_context(InfluxDB(workdir / "influxdb"))
        for shape_name in (s for s in args.shapes if s in SHAPES):
            shape = SHAPES[shape_name]
            if args.devices is not None:  # a smoke run: the same shape, fewer devices
                shape = dataclasses.replace(shape, devices=min(args.devices, shape.devices))
            print(f"== {shape.title}: starting {shape.devices} simulated devices", flush=True)
            with SimServer(shape, workdir) as sim:
                runs: dict[str, list[Measurement]] = {}
                # Rounds interleave the contenders, so a slow minute of the machine falls on
                # each of them alike; each one's median round is reported.
                for round_ in range(args.rounds):
                    for contender in (c for c in CONTENDERS if c.name in args.contenders):
                        slug = contender.name.replace(" ", "_")
                        database = f"{shape.name}_{slug}_{round_ + 1}"
                        target = Target(shape, sim.ports, influx.url, database, workdir)
                        print(
                            f"   {contender.name} (round {round_ + 1} of {args.rounds}): "
                            f"{args.warmup:g} s warm-up, {args.seconds:g} s measured",
                            flush=True,
                        )
                        profiled = round_ + 1 == args.rounds and contender.name in PROFILED
                        m = measure(
                            contender,
                            target,
                            sim,
                            influx,
                            seconds=args.seconds,
                            warmup=args.warmup,
                            profile_seconds=args.profile_seconds if profiled else 0.0,
                        )
                        runs.setdefault(contender.name, []).append(m)
                        print(
                            f"   {contender.name}: {m.cpu_per_1000_values:.4f} CPU s / 1000 "
                            f"values, {m.requests_per_poll:.2f} requests/poll, "
                            f"{m.writes / m.window_s:.2f} writes/s, "
                            f"{m.peak_rss_kib / 1024:.0f} MiB peak",
                            flush=True,
                        )
                results[shape_name] = [median_round(ms) for ms in runs.values()]
                for median, ms in zip(results[shape_name], runs.values(), strict=True):
                    median.profile = next((m.profile for m in ms if m.profile), None)
        mqtt_results = mqtt_bench.run_mqtt(
            [s for s in args.shapes if s in mqtt_bench.MQTT_SHAPES],
            workdir=workdir,
            influx=influx,
            seconds=args.seconds,
            burst=args.burst,
            repeat=args.repeat,
            progress=lambda line: print(line, flush=True),
        )
        kpi_result = None
        if KPI_SHAPE in args.shapes:
            kpi_result = kpi_bench.run_kpi(
                influx.url, progress=lambda line: print(line, flush=True)
            )
        maintenance_result = None
        if MAINTENANCE_SHAPE in args.shapes:
            maintenance_result = maintenance_bench.run_maintenance(
                influx.url, progress=lambda line: print(line, flush=True)
            )
    return results, mqtt_results, kpi_result, maintenance_result


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="measured per contender per shape (30)"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="before the measured window (5)")
    parser.add_argument(
        "--shapes",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=ALL_SHAPES,
        help=f"comma-separated, of: {', '.join(ALL_SHAPES)} (all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each contender per Modbus shape, interleaved; the median is reported (3)",
    )
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=20.0,
        help="py-spy on the Python contenders after their last Modbus round (20; 0: none)",
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs of each contender per MQTT shape (2)"
    )
    parser.add_argument(
        "--burst", type=int, default=50_000, help="messages of an MQTT saturation run (50000)"
    )
    parser.add_argument(
        "--output", type=Path, default=BENCH / "RESULTS.md", help="report (benchmarks/RESULTS.md)"
    )
    parser.add_argument(
        "--devices", type=int, help="at most this many devices per Modbus shape (a smoke run)"
    )
    names = [c.name for c in CONTENDERS]
    parser.add_argument(
        "--contenders",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=names,
        help=f"comma-separated, of: {', '.join(names)} (all)",
    )
    args = parser.parse_args(argv)
    if set(args.contenders) - set(names):
        parser.error(f"unknown contender(s); known: {', '.join(names)}")
    if args.devices is not None and args.devices < 1:
        parser.error("--devices must be at least 1")
    known = ALL_SHAPES
    unknown = [s for s in args.shapes if s not in known]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.seconds <= 0 or args.warmup < 1:
        parser.error("--seconds must be more than 0 and --warmup at least 1")
    if args.repeat < 1 or args.burst < 1 or args.rounds < 1:
        parser.error("--repeat, --rounds and --burst must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through every `finally`, stopping the children

    signal.signal(signal.SIGTERM, terminated)
    started = time.time()
    try:
        results, mqtt_results, kpi_result, maintenance_result = run(args)
        buffer_result = None
        if BUFFER_SHAPE in args.shapes:
            print("== durable buffer through a long outage", flush=True)
            buffer_result = buffer_bench.run_buffer()
        serial_result = None
        if SERIAL_SHAPE in args.shapes:
            print("== Modbus RTU against the wire time of its baud rate", flush=True)
            serial_result = serial_bench.run_serial()
        scale_result = memory_result = None
        if SCALE_SHAPE in args.shapes or MEMORY_SHAPE in args.shapes:
            import scale_bench

            assert (scale_bench.SCALE_SHAPE, scale_bench.MEMORY_SHAPE) == (
                SCALE_SHAPE,
                MEMORY_SHAPE,
            )
        if SCALE_SHAPE in args.shapes:
            print("== 1,000 Modbus devices on one core", flush=True)
            scale_result = scale_bench.run_scale(progress=lambda line: print(line, flush=True))
        if MEMORY_SHAPE in args.shapes:
            print("== the collector's memory", flush=True)
            memory_result = scale_bench.run_memory(progress=lambda line: print(line, flush=True))
        network_result = None
        if network_bench.NETWORK_SHAPE in args.shapes:
            network_result = network_bench.run_network(
                plants=args.devices or 300, progress=lambda line: print(line, flush=True)
            )
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    write_report(
        args.output,
        results,
        args,
        started,
        mqtt_results,
        kpi_result,
        maintenance_result,
        buffer_result=buffer_result,
        serial_result=serial_result,
        scale_result=scale_result,
        memory_result=memory_result,
        network_result=network_result,
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
