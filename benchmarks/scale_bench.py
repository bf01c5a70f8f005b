"""Scale and memory: one collector process pinned to one core polling 1,000 simulated Modbus TCP
devices × 60 registers every second into InfluxDB (poll rate, poll jitter, read-to-queryable
latency, CPU, RSS, and a py-spy profile of where its CPU goes); and the collector's RSS for the
example factory (examples/metalworks.yaml against `aguante simulate`) and for 100 devices.

Run by `benchmarks/run.py`, or alone:
    .venv/bin/python benchmarks/scale_bench.py [--devices 1000] [--registers 60] [--seconds 60]
        [--warmup 20] [--profile-seconds 20] [--memory-seconds 30] [--memory-devices 100]
        [--skip-scale] [--skip-memory] [--json FILE]     (prints the two markdown sections)

The collector runs on the first core this process may use; the simulated devices (this file run
with --serve, SIM_DEVICES_PER_PROCESS devices a process: see `FastSim`), influxd, the latency
prober and py-spy on the others, so only the collector loads the collector's core. Everything is
measured from outside the collector: its /proc entries, the simulators' request counters, and
what InfluxDB holds.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ctypes
import itertools
import json
import math
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # run.py imports its siblings by their bare names

from procstat import cpu_seconds, peak_rss_kib  # noqa: E402
from pyspy import record_profile  # noqa: E402
from run import (  # noqa: E402
    ROOT,
    Aguante,
    ReadyServer,
    Shape,
    Target,
    free_port_block,
    influxd_pid,
    stop_process,
)

from tests.services import InfluxDB, Mosquitto  # noqa: E402  (run.py put ROOT on sys.path)

SCALE_SHAPE = "scale-1000"
MEMORY_SHAPE = "memory"
INTERVAL = 1.0  # s, every device's poll_interval
JITTER_TARGET = 0.10  # p99 poll jitter as a fraction of the interval
MEMORY_TARGET_MIB = 60.0  # RSS for 100 devices
SIM_DEVICES_PER_PROCESS = 250
PROBE_PERIOD = 0.5  # s between the latency prober's queries
PROFILE_SECONDS = 20.0
EXAMPLE = ROOT / "examples" / "metalworks.yaml"
EXAMPLE_PORT_BASE = 5020  # the example's ports are `aguante simulate`'s defaults from here
PACKAGED_PTY_DIR = "/tmp/aguante-sim"
_PR_SET_PDEATHSIG = 1


# -- what is measured ----------------------------------------------------------------------------


@dataclass
class ScaleMeasurement:
    devices: int
    registers: int
    interval: float = INTERVAL
    sim_processes: int = 0
    collector_cores: list[int] = field(default_factory=list)
    other_cores: list[int] = field(default_factory=list)
    window_s: float = 0.0
    polls: int = 0  # `reading` points stamped within the window
    requests: int = 0  # Modbus requests the simulators answered within the window
    devices_every_interval: int = 0  # devices with no gap over 1.5 intervals in the window
    missed_polls: int = 0  # polls a gap over 1.5 intervals left out
    spacing_jitter_ms: list[float] = field(default_factory=list)  # p50, p99, max of |Δt − I|
    schedule_jitter_ms: list[float] = field(default_factory=list)  # p50, p99, max
    poll_duration_ms: list[float] = field(default_factory=list)  # health `latency_ms` p50/p99/max
    phase_busiest_100ms: float = 0.0  # share of poll starts in the busiest 100 ms of the second
    phase_span_99_ms: float = 0.0  # the shortest part of the second holding 99 % of poll starts
    latency_upper_ms: list[float] = field(default_factory=list)  # p50, p99, max
    latency_lower_ms: list[float] = field(default_factory=list)  # p50, p99, max
    latency_points: int = 0
    probes: int = 0
    probe_query_ms: float = 0.0  # mean time the prober's query took
    cpu_s: float = 0.0  # collector, in the window
    startup_cpu_s: float = 0.0
    rss_mib: float = 0.0  # VmRSS at the end of the window
    peak_rss_mib: float = 0.0  # VmHWM
    sim_cpu_s: float = 0.0
    influxd_cpu_s: float = 0.0
    errors: int = 0  # the collector's own `errors` count (health points), whole run
    profile_samples: int = 0
    profile_top: list[tuple[str, float, float]] = field(default_factory=list)  # fn, self %, total %
    profile_by_area: list[tuple[str, float]] = field(default_factory=list)  # area, self %
    load_avg: float = 0.0  # the machine's 1-minute load average at the end of the window
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def expected_polls(self) -> float:
        return self.devices * self.window_s / self.interval

    @property
    def poll_rate(self) -> float:
        return self.polls / self.window_s if self.window_s else float("nan")

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.window_s if self.window_s else float("nan")

    @property
    def jitter_ok(self) -> bool:
        return bool(self.spacing_jitter_ms) and (
            self.spacing_jitter_ms[1] <= JITTER_TARGET * self.interval * 1000
        )


@dataclass
class MemoryMeasurement:
    example_machines: int = 0
    example_signals: int = 0
    example_rss_mib: float = 0.0
    example_peak_rss_mib: float = 0.0
    example_values: int = 0
    hundred_devices: int = 100
    hundred_registers: int = 60
    hundred_rss_mib: float = 0.0
    hundred_peak_rss_mib: float = 0.0
    hundred_polls_per_device_s: float = 0.0
    imports_rss_mib: float = 0.0  # a Python that only imported what Modbus-only `collect` does
    import_stages: list[tuple[str, float]] = field(default_factory=list)  # label, MiB so far
    config_bytes: int = 0  # the 100-device factory file
    config_load_mib: float = 0.0  # RSS that loading it adds (collector.config.load_config)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# -- processes, cores and file descriptors -------------------------------------------------------


def _cores() -> tuple[set[int], set[int]]:
    """(the collector's core, everyone else's): the first usable core, and the rest."""
    cores = sorted(os.sched_getaffinity(0))
    return {cores[0]}, set(cores[1:]) or {cores[0]}


@contextlib.contextmanager
def _pinned(cores: set[int]) -> Iterator[None]:
    """This thread (and so every child started from it) on `cores` for the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def _open_files(wanted: int) -> Iterator[None]:
    """The soft limit on open files raised to `wanted` (or the hard limit) for the block, so the
    children started in it (simulators, collector) may hold a socket per device."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _child_setup(cores: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        # Stopped with the benchmark even if it is killed outright; on its own core if asked.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if cores is not None:
            os.sched_setaffinity(0, cores)

    return setup


def _start(
    command: list[str], workdir: Path, name: str, cores: set[int] | None = None
) -> subprocess.Popen[bytes]:
    with (workdir / f"{name}.out").open("wb") as out, (workdir / f"{name}.err").open("wb") as err:
        return subprocess.Popen(
            command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_child_setup(cores),
            # The factory file says where everything is, not the shell that started us.
            env={k: v for k, v in os.environ.items() if not k.startswith("AGUANTE_")},
        )


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _alive_for(process: subprocess.Popen[bytes], seconds: float, err: Path, what: str) -> None:
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        return
    raise RuntimeError(f"{what} exited ({process.returncode}):\n{_tail(err)}")


def _warnings(err: Path) -> list[str]:
    text = err.read_text(errors="replace") if err.exists() else ""
    return [
        line
        for line in text.splitlines()
        if " WARNING " in line or " ERROR " in line or "Traceback" in line
    ]


# -- statistics ----------------------------------------------------------------------------------


def percentiles(values: list[float]) -> list[float]:
    """[p50, p99, max] (nearest rank), or [] for no values."""
    if not values:
        return []
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]

    return [rank(0.50), rank(0.99), ordered[-1]]


@dataclass
class PollTimes:
    spacing: list[float]  # |Δt − interval| of consecutive polls, ms
    schedule: list[float]  # |t − the device's best-fitting schedule|, ms
    missed: int
    devices_ok: int


def poll_jitter(times: dict[str, list[int]], interval_ms: float, expected: float) -> PollTimes:
    """Jitter of each device's poll start times (the `reading` time stamps, ms), two ways.

    spacing: how far each gap between consecutive polls is from the interval. schedule: how far
    each poll is from the device's own schedule `phase + k × interval`, the phase being the
    median of its polls' offsets (so a steady offset is no jitter, a drift or a slip is). A gap
    over 1.5 intervals counts its left-out polls as missed and is not a jitter sample (it would
    count the miss once more)."""
    spacing: list[float] = []
    schedule: list[float] = []
    missed = ok = 0
    for stamps in times.values():
        stamps = sorted(stamps)
        gaps_ok = True
        for a, b in itertools.pairwise(stamps):
            gap = b - a
            if gap > 1.5 * interval_ms:
                missed += round(gap / interval_ms) - 1
                gaps_ok = False
            else:
                spacing.append(abs(gap - interval_ms))
        if gaps_ok and len(stamps) >= expected - 1:
            ok += 1
        if stamps:
            first = stamps[0]
            ks = [round((t - first) / interval_ms) for t in stamps]
            offsets = [t - first - k * interval_ms for t, k in zip(stamps, ks, strict=True)]
            phase = statistics.median(offsets)
            schedule += [abs(o - phase) for o in offsets]
    return PollTimes(spacing, schedule, missed, ok)


def phase_spread(times: dict[str, list[int]], interval_ms: int) -> tuple[float, float]:
    """Where in the interval the polls start, all devices together: (share of poll starts in the
    busiest tenth of the interval, the shortest part of it in ms holding 99 % of them). Spread
    evenly, 10 % and 99 % of the interval; all at one instant, 100 % and a few ms."""
    bins = [0] * interval_ms
    for stamps in times.values():
        for t in stamps:
            bins[t % interval_ms] += 1
    total = sum(bins)
    if not total:
        return 0.0, 0.0
    doubled = bins + bins  # the interval is a circle: windows may wrap around
    sums = [0]
    for count in doubled:
        sums.append(sums[-1] + count)
    tenth = max(1, interval_ms // 10)
    busiest = max(sums[i + tenth] - sums[i] for i in range(interval_ms))
    need = 0.99 * total
    span = next(
        (
            w
            for w in range(1, interval_ms + 1)
            if max(sums[i + w] - sums[i] for i in range(interval_ms)) >= need
        ),
        interval_ms,
    )
    return busiest / total, float(span)


# -- the latency prober --------------------------------------------------------------------------


class Prober:
    """Asks InfluxDB every PROBE_PERIOD for each machine's newest `reading` time stamp.

    A point (machine m, time t) first counts as queryable at the first probe whose answer holds
    a newest time ≥ t for m (a device's points are written in the order they are read), and not
    before the probe before it was sent: latency is between (previous probe's send time − t)
    and (this probe's answer time − t); both bounds are reported."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self.probes: list[tuple[float, float, dict[str, int]]] = []  # sent, answered, newest
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        q = "SELECT LAST(r0) FROM reading WHERE time > now() - 60s GROUP BY machine"
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                sent = time.time()
                try:
                    response = client.get(
                        f"{self.url}/query", params={"q": q, "db": self.database, "epoch": "ms"}
                    )
                    answered = time.time()
                    newest = {
                        series["tags"]["machine"]: int(series["values"][0][0])
                        for result in response.json().get("results", [])
                        for series in result.get("series", [])
                    }
                    self.probes.append((sent, answered, newest))
                except (httpx.HTTPError, ValueError, KeyError):
                    self.failures += 1
                self._stop.wait(max(0.0, PROBE_PERIOD - (time.time() - sent)))

    def latencies(
        self, times: dict[str, list[int]]
    ) -> tuple[list[float], list[float]]:  # (lower, upper) bounds, ms
        lower: list[float] = []
        upper: list[float] = []
        for machine, stamps in times.items():
            seen = [probe[2].get(machine, -1) for probe in self.probes]
            # The newest time a probe saw never goes down (points are never deleted): bisect.
            running, monotone = -1, []
            for s in seen:
                running = max(running, s)
                monotone.append(running)
            for t in stamps:
                j = bisect.bisect_left(monotone, t)
                if j == 0 or j >= len(self.probes):
                    continue  # queryable before probing began, or never seen while probing
                upper.append(self.probes[j][1] * 1000 - t)
                lower.append(max(0.0, self.probes[j - 1][0] * 1000 - t))
        return lower, upper


# -- the profile ---------------------------------------------------------------------------------


def _profile(pid: int, seconds: float, workdir: Path, m: ScaleMeasurement) -> None:
    profile = record_profile(pid, seconds, workdir / "profile.txt")
    if isinstance(profile, str):
        m.problems.append(profile)
        return
    m.profile_samples, m.profile_top, m.profile_by_area = (
        profile.samples,
        profile.top,
        profile.by_area,
    )


# -- scale ---------------------------------------------------------------------------------------


class FastSim(ReadyServer):
    """`devices` Modbus TCP devices of `registers` holding (and input) registers in a process of
    its own (this file run with --serve): a bare asyncio responder to function codes 3 and 4, an
    exception answer to anything else or out of range. benchmarks/sim_server.py (the full
    simulator, on pymodbus) spends about a millisecond of CPU per request, so 1,000 requests a
    second would take more than the one core left for the simulators and influxd, and the
    devices, not the collector, would be measured. The collector sees the same protocol."""

    def __init__(self, devices: int, registers: int, workdir: Path, name: str) -> None:
        self.devices, self.registers = devices, registers
        self.control_port = free_port_block(devices)
        self.ports = [self.control_port + 1 + n for n in range(devices)]
        self.err_path = workdir / f"{name}.err"
        self.name = name

    def __enter__(self) -> FastSim:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            f"--devices={self.devices}",
            f"--registers={self.registers}",
            f"--control-port={self.control_port}",
        ]
        self._start(command, "the simulated devices", self.err_path, _child_setup(None))
        return self

    def requests(self) -> int:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=30) as sock:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        return int(json.loads(data)["requests"])


async def _serve_devices(devices: int, registers: int, control_port: int) -> None:
    """The --serve child: Modbus TCP on control_port + 1 … + devices, counts on control_port."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    table = bytearray(struct.pack(f">{registers}H", *(n * 7 % 65536 for n in range(registers))))
    served = [0]

    async def device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                served[0] += 1
                function = pdu[0]
                if function in (3, 4) and len(pdu) == 5:
                    start, count = struct.unpack(">HH", pdu[1:])
                    if 1 <= count <= 125 and start + count <= registers:
                        struct.pack_into(">H", table, 0, served[0] % 65536)  # a changing value
                        body = bytes((function, 2 * count)) + table[2 * start : 2 * (start + count)]
                    else:
                        body = bytes((function | 0x80, 2))
                else:
                    body = bytes((function | 0x80, 1))
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
        writer.close()

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps({"requests": served[0]}).encode())
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(control, "127.0.0.1", control_port)]
    for n in range(devices):
        servers.append(await asyncio.start_server(device, "127.0.0.1", control_port + 1 + n))
    print(json.dumps({"ready": True, "devices": devices}), flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def _sim_sizes(devices: int) -> list[int]:
    processes = max(1, math.ceil(devices / SIM_DEVICES_PER_PROCESS))
    sizes = [devices // processes + (1 if n < devices % processes else 0) for n in range(processes)]
    return [size for size in sizes if size]


def _requests(sim: FastSim, m: ScaleMeasurement) -> int:
    try:
        return sim.requests()
    except (OSError, ValueError, KeyError) as exc:
        m.problems.append(f"simulator {sim.name}: no request count ({exc})")
        return 0


def _reading_times(influx: InfluxDB, database: str, where: str) -> dict[str, list[int]]:
    times: dict[str, list[int]] = {}
    for row in influx.query(f"SELECT r0 FROM reading {where} GROUP BY machine", database=database):
        times.setdefault(row["machine"], []).append(int(row["time"]))
    return times


def run_scale(
    devices: int = 1000,
    registers: int = 60,
    seconds: float = 60.0,
    *,
    warmup: float = 20.0,
    profile_seconds: float = PROFILE_SECONDS,
    probe: bool = True,
    progress: Callable[[str], None] = lambda line: None,
) -> ScaleMeasurement:
    """The collector polling `devices` simulated devices × `registers` holding registers every
    second for `warmup` + `seconds` (measured), then `profile_seconds` under py-spy (0: none)."""
    m = ScaleMeasurement(devices, registers)
    collector_cores, other_cores = _cores()
    m.collector_cores, m.other_cores = sorted(collector_cores), sorted(other_cores)
    shape = Shape(SCALE_SHAPE, f"{devices} devices", devices, tuple(range(registers)))
    database = "scale"
    with contextlib.ExitStack() as stack:
        stack.enter_context(_pinned(other_cores))
        stack.enter_context(_open_files(4 * devices + 1024))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aguante-scale-")))
        influx = stack.enter_context(InfluxDB(workdir / "influxdb"))
        sims = [
            stack.enter_context(FastSim(size, registers, workdir, f"devices-{n}"))
            for n, size in enumerate(_sim_sizes(devices))
        ]
        m.sim_processes = len(sims)
        progress(f"   {devices} simulated devices in {len(sims)} process(es), influxd up")
        ports = [port for sim in sims for port in sim.ports]
        influx.create_database(database)
        target = Target(shape, ports, influx.url, database, workdir)
        command = Aguante().command(target)
        influxd = influxd_pid(influx)

        def snapshot(pid: int) -> tuple[float, float, int, float, float]:
            requests = sum(_requests(sim, m) for sim in sims)
            return (
                time.time(),
                cpu_seconds(pid),
                requests,
                sum(cpu_seconds(sim.pid) for sim in sims),
                cpu_seconds(influxd) if influxd else 0.0,
            )

        prober = Prober(influx.url, database) if probe else None
        process = _start(command, workdir, "collector", collector_cores)
        err = workdir / "collector.err"
        try:
            if prober is not None:
                prober.start()
            _alive_for(process, warmup, err, "the collector")
            before = snapshot(process.pid)
            progress(f"   collector: {warmup:g} s warm-up done, measuring {seconds:g} s")
            _alive_for(process, seconds, err, "the collector")
            after = snapshot(process.pid)
            m.rss_mib = _rss_kib(process.pid) / 1024
            m.load_avg = os.getloadavg()[0]
            if prober is not None:
                prober.stop()
            if profile_seconds > 0:
                progress(f"   profiling the collector for {profile_seconds:g} s (py-spy)")
                _profile(process.pid, profile_seconds, workdir, m)
            m.peak_rss_mib = peak_rss_kib(process.pid) / 1024
        finally:
            try:
                m.exit_code = stop_process(process)
            finally:
                if prober is not None:
                    prober.stop()
        m.window_s = after[0] - before[0]
        m.cpu_s = after[1] - before[1]
        m.startup_cpu_s = before[1]
        m.requests = after[2] - before[2]
        m.sim_cpu_s = after[3] - before[3]
        m.influxd_cpu_s = after[4] - before[4]
        window = f"WHERE time >= {int(before[0] * 1000)}ms AND time < {int(after[0] * 1000)}ms"
        times = _reading_times(influx, database, window)
        m.polls = sum(len(t) for t in times.values())
        jitter = poll_jitter(times, INTERVAL * 1000, m.window_s / INTERVAL)
        m.spacing_jitter_ms = percentiles(jitter.spacing)
        m.schedule_jitter_ms = percentiles(jitter.schedule)
        m.missed_polls = jitter.missed
        m.phase_busiest_100ms, m.phase_span_99_ms = phase_spread(times, int(INTERVAL * 1000))
        m.devices_every_interval = jitter.devices_ok
        durations = influx.query("SELECT latency_ms FROM collector", database=database)
        m.poll_duration_ms = percentiles(
            [float(r["latency_ms"]) for r in durations if r.get("latency_ms") is not None]
        )
        last = influx.query(
            "SELECT LAST(errors) FROM collector GROUP BY machine", database=database
        )
        m.errors = sum(int(r["last"]) for r in last)
        if prober is not None:
            lower, upper = prober.latencies(times)
            m.latency_lower_ms, m.latency_upper_ms = percentiles(lower), percentiles(upper)
            m.latency_points = len(upper)
            m.probes = len(prober.probes)
            if prober.probes:
                m.probe_query_ms = statistics.mean(1000 * (b - a) for a, b, _ in prober.probes)
            if prober.failures:
                m.problems.append(f"{prober.failures} latency probes failed")
        if m.exit_code != 0:
            m.problems.append(f"the collector exited with {m.exit_code} on SIGTERM")
        if warnings := _warnings(err):
            m.problems.append(f"{len(warnings)} warnings/errors logged, first: {warnings[0]}")
    return m


# -- memory --------------------------------------------------------------------------------------


def _example_yaml(workdir: Path, port_base: int, influx_url: str, mqtt_url: str) -> str:
    """examples/metalworks.yaml as it is, moved to this run's ports, pty, InfluxDB and broker."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["influxdb"] |= {
        "url": influx_url,
        "database": "example",
        "quarantine_file": str(workdir / "example-quarantine.jsonl"),
    }
    data["buffer"] = {"directory": str(workdir / "example-buffer")}
    data["state_file"] = str(workdir / "example-state.json")
    data["mqtt"] |= {"url": mqtt_url, "client_id": "aguante-memory-bench"}
    if "maintenance" in data:
        data["maintenance"]["store"] = f"sqlite:///{workdir / 'example-tickets.db'}"
    for machine in data["machines"]:
        device = machine.get("modbus") or {}
        if "port" in device:
            device["port"] = port_base + device["port"] - EXAMPLE_PORT_BASE
        if "serial_port" in device:
            device["serial_port"] = str(workdir / Path(device["serial_port"]).name)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes], err: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"exited ({process.returncode}):\n{_tail(err)}")
        time.sleep(0.1)
    raise RuntimeError(f"no {text!r} within 60 s:\n{_tail(err)}")


def _watch_rss(process: subprocess.Popen[bytes], seconds: float, err: Path) -> float:
    """Samples VmRSS once a second for `seconds`; the last sample, MiB."""
    rss = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        _alive_for(process, min(1.0, left), err, "the collector")
        rss = _rss_kib(process.pid)
    return rss / 1024


IMPORT_STAGES = (
    ("the interpreter", ""),
    ("+ asyncio and the standard library it brings", "import asyncio"),
    ("+ PyYAML, pydantic", "import yaml, pydantic"),
    # `collector` first, as every aguante module: it keeps httpx's own command line (click,
    # rich, pygments, where installed) out.
    ("+ httpx (without its command line, as aguante imports it)", "import collector, httpx"),
    ("+ pymodbus, pyserial", "import pymodbus.client"),
    ("+ collector.config (the factory file's models)", "import collector.config"),
    (
        "+ collector.cli and the parser of `aguante collect` (no other command's package)",
        "import collector.cli as c; c.build_parser(plugins=False)",
    ),
    ("+ uvloop, the event loop `collect` runs on", "import uvloop"),
    (
        "+ the collector's app, sink and Modbus source",
        "import collector.app, collector.sinks.influxdb, collector.sources.modbus",
    ),
    (
        "+ paho-mqtt, protobuf and the MQTT source (only for a file with boards)",
        "import collector.sources.mqtt",
    ),
)


def import_stages() -> list[tuple[str, float]]:
    """RSS (MiB) of a Python that imports what `aguante collect` imports, stage by stage, and
    polls nothing: the floor under any number of devices."""
    code = [
        "import pathlib",
        "def rss():",
        "    for l in pathlib.Path('/proc/self/status').read_text().splitlines():",
        "        if l.startswith('VmRSS:'):",
        "            return l.split()[1]",
    ]
    for _, statement in IMPORT_STAGES:
        if statement:
            code.append(statement)
        code.append("print(rss())")
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    kib = [int(line) for line in result.stdout.split()]
    return [(label, n / 1024) for (label, _), n in zip(IMPORT_STAGES, kib, strict=True)]


def config_load_rss(devices: int, registers: int, workdir: Path) -> tuple[int, float]:
    """(bytes, RSS MiB added) of `load_config` of the factory file the scale run generates for
    `devices` × `registers`, in a fresh Python that had imported the collector first."""
    ports = list(range(20_000, 20_000 + devices))  # never connected to: only parsed
    shape = Shape(MEMORY_SHAPE, "memory", devices, tuple(range(registers)))
    command = Aguante().command(Target(shape, ports, "http://127.0.0.1:9", "memory", workdir))
    code = (
        "import gc, pathlib, sys\n"
        "import collector.cli, collector.app, collector.sources.modbus\n"
        "from collector.config import load_config\n"
        "def rss():\n"
        "    for l in pathlib.Path('/proc/self/status').read_text().splitlines():\n"
        "        if l.startswith('VmRSS:'):\n"
        "            return int(l.split()[1])\n"
        "gc.collect(); before = rss(); config = load_config(sys.argv[1]); gc.collect()\n"
        "print(rss() - before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, command[-1]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return Path(command[-1]).stat().st_size, int(result.stdout.split()[-1]) / 1024


def run_example_memory(seconds: float, workdir: Path, m: MemoryMeasurement) -> None:
    """The example factory: `aguante simulate` of the packaged metalworks (pty moved to
    `workdir`) with its boards on a private Mosquitto, and the collector on the example file."""
    import simulators

    packaged = Path(simulators.__file__).parent / "scenarios" / "metalworks.yaml"
    scenario = workdir / "metalworks.yaml"
    scenario.write_text(packaged.read_text().replace(PACKAGED_PTY_DIR, str(workdir)))
    aguante = str(Path(sys.executable).parent / "aguante")
    with contextlib.ExitStack() as stack:
        influx = stack.enter_context(InfluxDB(workdir / "influxdb-example"))
        mosquitto = stack.enter_context(Mosquitto(workdir / "mosquitto"))
        control = free_port_block(10)
        sim = _start(
            [
                aguante,
                "simulate",
                str(scenario),
                f"--port-base={control + 1}",
                f"--control-port={control}",
                f"--mqtt={mosquitto.url}",
                "--seed=1",
            ],
            workdir,
            "simulate",
        )
        stack.callback(stop_process, sim)
        _wait_for_text(workdir / "simulate.out", "serving;", sim, workdir / "simulate.err")
        config = workdir / "example.yaml"
        config.write_text(_example_yaml(workdir, control + 1, influx.url, mosquitto.url))
        data = yaml.safe_load(config.read_text())
        m.example_machines = len(data["machines"])
        m.example_signals = sum(
            len((machine.get("modbus") or {}).get("signals", []))
            + sum(len(board.get("signals", [])) for board in machine.get("mqtt", []) or [])
            for machine in data["machines"]
        )
        process = _start([aguante, "collect", str(config)], workdir, "example")
        try:
            m.example_rss_mib = _watch_rss(process, seconds, workdir / "example.err")
            m.example_peak_rss_mib = peak_rss_kib(process.pid) / 1024
        finally:
            code = stop_process(process)
        rows = influx.query("SELECT COUNT(*) FROM reading", database="example")
        m.example_values = sum(int(v) for r in rows for k, v in r.items() if k.startswith("count_"))
        if warnings := _warnings(workdir / "example.err"):
            m.problems.append(f"example: {len(warnings)} warnings/errors, first: {warnings[0]}")
        if code != 0:
            m.problems.append(f"example: the collector exited with {code} on SIGTERM")


def run_memory(
    seconds: float = 30.0,
    devices: int = 100,
    registers: int = 60,
    *,
    progress: Callable[[str], None] = lambda line: None,
) -> MemoryMeasurement:
    """The collector's RSS after `seconds` on the example factory, and on `devices` simulated
    Modbus TCP devices × `registers` (the scale run's plant, smaller)."""
    m = MemoryMeasurement(hundred_devices=devices, hundred_registers=registers, seconds=seconds)
    with tempfile.TemporaryDirectory(prefix="aguante-memory-") as work:
        workdir = Path(work)
        m.import_stages = import_stages()
        m.imports_rss_mib = m.import_stages[-2][1]  # the last stage is MQTT's
        m.config_bytes, m.config_load_mib = config_load_rss(devices, registers, workdir)
        progress(f"   the example factory for {seconds:g} s")
        run_example_memory(seconds, workdir, m)
    progress(f"   {devices} devices × {registers} registers for {seconds:g} s")
    scale = run_scale(
        devices, registers, seconds, warmup=min(10.0, seconds), profile_seconds=0, probe=False
    )
    m.hundred_rss_mib = scale.rss_mib
    m.hundred_peak_rss_mib = scale.peak_rss_mib
    m.hundred_polls_per_device_s = scale.poll_rate / devices
    m.problems += [f"{devices} devices: {p}" for p in scale.problems]
    return m


# -- the report ----------------------------------------------------------------------------------


def _ms(values: list[float], n: int) -> str:
    return f"{values[n]:,.0f}" if values else "—"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def scale_lines(m: ScaleMeasurement) -> list[str]:
    rows = [
        ("measured window, s", f"{m.window_s:.1f}"),
        (
            "polls stored in window / scheduled",
            f"{m.polls:,} / {m.expected_polls:,.0f} ({m.polls / m.expected_polls:.1%})"
            if m.expected_polls
            else "—",
        ),
        ("**achieved poll rate, polls/s**", f"**{m.poll_rate:,.1f}**"),
        (
            "devices polled every interval (no gap > 1.5 intervals)",
            f"{m.devices_every_interval:,} of {m.devices:,}",
        ),
        ("polls missed (gaps over 1.5 intervals)", f"{m.missed_polls:,}"),
        (
            "**poll jitter \\|Δt − 1 s\\|, ms: p50 / p99 / max**",
            f"**{_ms(m.spacing_jitter_ms, 0)} / {_ms(m.spacing_jitter_ms, 1)}** / "
            f"{_ms(m.spacing_jitter_ms, 2)}",
        ),
        (
            "off the device's own schedule, ms: p50 / p99 / max",
            f"{_ms(m.schedule_jitter_ms, 0)} / {_ms(m.schedule_jitter_ms, 1)} / "
            f"{_ms(m.schedule_jitter_ms, 2)}",
        ),
        (
            "poll starts in the busiest 100 ms of each second (evenly spread: 10 %)",
            f"{m.phase_busiest_100ms:.1%}",
        ),
        (
            "shortest part of the second holding 99 % of poll starts, ms",
            f"{m.phase_span_99_ms:.0f}",
        ),
        (
            "poll duration (health `latency_ms`), ms: p50 / p99 / max",
            f"{_ms(m.poll_duration_ms, 0)} / {_ms(m.poll_duration_ms, 1)} / "
            f"{_ms(m.poll_duration_ms, 2)}",
        ),
        (
            "**read → queryable in InfluxDB, ms: p50 / p99 / max** (at most)",
            f"**{_ms(m.latency_upper_ms, 0)} / {_ms(m.latency_upper_ms, 1)}** / "
            f"{_ms(m.latency_upper_ms, 2)}",
        ),
        (
            "… at least",
            f"{_ms(m.latency_lower_ms, 0)} / {_ms(m.latency_lower_ms, 1)} / "
            f"{_ms(m.latency_lower_ms, 2)}",
        ),
        (
            "latency: points placed / probes / mean probe query, ms",
            f"{m.latency_points:,} / {m.probes:,} / {m.probe_query_ms:.0f}",
        ),
        (
            "**collector CPU, share of its one core**",
            f"**{m.cpu_share:.1%}** ({m.cpu_s:.1f} s in {m.window_s:.0f} s)",
        ),
        ("collector CPU before the window (start-up + warm-up), s", f"{m.startup_cpu_s:.1f}"),
        (
            "**collector RSS at the end / peak (VmHWM), MiB**",
            f"**{m.rss_mib:.1f}** / {m.peak_rss_mib:.1f}",
        ),
        (
            "Modbus requests at the simulators per poll stored",
            f"{m.requests / m.polls:.3f}" if m.polls else "—",
        ),
        ("collector's own error count (timeouts, link errors …), whole run", f"{m.errors:,}"),
        (f"simulators' CPU in window ({m.sim_processes} processes), s", f"{m.sim_cpu_s:.1f}"),
        ("influxd's CPU in window, s", f"{m.influxd_cpu_s:.1f}"),
        (
            f"load average at the end ({len(m.collector_cores + m.other_cores)} cores)",
            f"{m.load_avg:.2f}",
        ),
    ]
    lines = [
        "## Scale: 1,000 Modbus devices on one core",
        "",
        f"One `aguante collect` pinned to core {m.collector_cores} polling {m.devices:,} "
        f"simulated Modbus TCP devices × {m.registers} holding registers (uint16, one read each) "
        f"every {m.interval:g} s into InfluxDB, default settings otherwise; the devices served by "
        f"{m.sim_processes} processes of a bare asyncio Modbus TCP responder "
        "(`scale_bench.py --serve`; "
        "pymodbus-based `sim_server.py` cannot serve 1,000 requests a second on one core), they, "
        "influxd, the prober and py-spy on "
        f"core(s) {m.other_cores}.",
        "",
        "| | |",
        "|---|---:|",
    ]
    lines += [f"| {label} | {value} |" for label, value in rows]
    target = JITTER_TARGET * m.interval * 1000
    every = m.devices_every_interval == m.devices and m.missed_polls == 0
    lines += [
        "",
        f"- {_verdict(every)}: every device polled every second: {m.devices_every_interval:,} "
        f"of {m.devices:,} devices, {m.missed_polls:,} polls missed, "
        f"{m.poll_rate / m.devices:.3f} polls per device per second",
        f"- {_verdict(m.jitter_ok)}: p99 poll jitter ≤ {target:.0f} ms (10 % of the interval): "
        f"{_ms(m.spacing_jitter_ms, 1)} ms",
    ]
    lines += [f"- note: {problem}" for problem in m.problems]
    if m.profile_top:
        lines += [
            "",
            f"Profile (py-spy, {m.profile_samples:,} samples at 100 Hz of the collector while "
            "busy, idle waits left out), by library, share of busy samples: "
            + ", ".join(f"{area} {share:.0f} %" for area, share in m.profile_by_area)
            + ". Functions by own time:",
            "",
            "| function (file) | own % | with callees % |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| `{fn.replace('|', '/')}` | {own:.1f} | {total:.1f} |"
            for fn, own, total in m.profile_top
        ]
    lines += [
        "",
        "How to read: *poll jitter* is, for each device and each two consecutive polls in the "
        "window, how far the gap between their start times is from the 1 s interval; the start "
        "times are the `reading` points' time stamps, which the collector takes just before "
        "sending a poll's first request (ms precision). *Off the schedule* measures each poll "
        "from the device's own best-fitting `phase + k × 1 s` instead, so a slow drift shows "
        "there and not in the gaps. A gap over 1.5 s counts as missed polls, not as jitter. "
        "*Read → queryable*: a thread asks InfluxDB every "
        f"{PROBE_PERIOD * 1000:.0f} ms for each machine's newest point; a point became "
        "queryable after the last probe that did not show it was sent and before the first that "
        "did answered, so both bounds are given (most of it is the collector's 1 s "
        "`flush_interval` batching). CPU is user+sys of the collector's process "
        "(/proc/PID/stat) over the window, as a share of the one core it may use; 100 % would "
        "mean it cannot keep up. The profile is taken after the window, so py-spy's sampling "
        "does not touch the measured figures.",
        "",
    ]
    return lines


def memory_lines(m: MemoryMeasurement) -> list[str]:
    ok = m.hundred_rss_mib <= MEMORY_TARGET_MIB and m.hundred_peak_rss_mib <= MEMORY_TARGET_MIB
    lines = [
        "## Memory",
        "",
        "| collector | RSS at the end, MiB | peak (VmHWM), MiB |",
        "|---|---:|---:|",
        f"| example factory (`examples/metalworks.yaml`: {m.example_machines} machines, "
        f"{m.example_signals} signals, Modbus TCP, RTU-over-TCP, RTU on a pty and MQTT boards) "
        f"| {m.example_rss_mib:.1f} | {m.example_peak_rss_mib:.1f} |",
        f"| {m.hundred_devices} Modbus TCP devices × {m.hundred_registers} registers, 1 s "
        f"| {m.hundred_rss_mib:.1f} | {m.hundred_peak_rss_mib:.1f} |",
        f"| for scale: a Python that only imported the modules a Modbus-only `collect` does | "
        f"{m.imports_rss_mib:.1f} | |",
        f"| for scale: what loading the {m.hundred_devices}-device factory file "
        f"({m.config_bytes / 1024:,.0f} KiB of YAML) adds to that | +{m.config_load_mib:.1f} | |",
        "",
        f"- {_verdict(ok)}: ≤ {MEMORY_TARGET_MIB:.0f} MB for {m.hundred_devices} devices: "
        f"{m.hundred_rss_mib:.1f} MiB at the end, {m.hundred_peak_rss_mib:.1f} MiB peak",
    ]
    lines += [f"- note: {problem}" for problem in m.problems]
    if m.import_stages:
        lines += [
            "",
            "Where the import-only floor comes from (RSS after each stage, MiB, cumulative):",
            "",
            "| stage | RSS, MiB | added |",
            "|---|---:|---:|",
        ]
        previous = 0.0
        for label, mib in m.import_stages:
            lines.append(f"| {label} | {mib:.1f} | {mib - previous:+.1f} |")
            previous = mib
    lines += [
        "",
        f"How to read: each collector ran {m.seconds:g} s as `aguante collect` in a process of "
        "its own, with the durable buffer and health points on; RSS is VmRSS of "
        "/proc/PID/status at the end, the peak its VmHWM (start-up included). The example "
        "factory runs against `aguante simulate` of the packaged metalworks scenario (its boards "
        f"publishing to a private Mosquitto), having stored {m.example_values:,} values; the 100 "
        f"devices are the scale plant, smaller ({m.hundred_polls_per_device_s:.2f} polls per "
        "device per second). The import-only line is the floor the interpreter and the "
        "libraries set before any device is polled.",
        "",
    ]
    return lines


def report_lines(
    scale: ScaleMeasurement | None = None, memory: MemoryMeasurement | None = None
) -> list[str]:
    lines: list[str] = []
    if scale is not None:
        lines += scale_lines(scale)
    if memory is not None:
        lines += memory_lines(memory)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--registers", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured (60)")
    parser.add_argument("--warmup", type=float, default=20.0, help="before the window (20)")
    parser.add_argument("--profile-seconds", type=float, default=PROFILE_SECONDS)
    parser.add_argument("--memory-seconds", type=float, default=30.0)
    parser.add_argument("--memory-devices", type=int, default=100)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--control-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve_devices(args.devices, args.registers, args.control_port))
        return 0

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through every `finally`, stopping the children

    signal.signal(signal.SIGTERM, terminated)
    scale = memory = None
    try:
        if not args.skip_scale:
            say(f"== scale: {args.devices} devices × {args.registers} registers")
            scale = run_scale(
                args.devices,
                args.registers,
                args.seconds,
                warmup=args.warmup,
                profile_seconds=args.profile_seconds,
                progress=say,
            )
        if not args.skip_memory:
            say("== memory")
            memory = run_memory(
                args.memory_seconds, args.memory_devices, args.registers, progress=say
            )
    except KeyboardInterrupt:
        say("interrupted; every process started was stopped")
        return 130
    if args.json:
        args.json.write_text(
            json.dumps({"scale": scale and scale.__dict__, "memory": memory and memory.__dict__})
        )
    print("\n".join(report_lines(scale, memory)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
