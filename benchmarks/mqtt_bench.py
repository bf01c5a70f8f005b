"""The MQTT half of `make bench`: add-on boards publishing to Mosquitto, stored in InfluxDB by the
collector and by the plainest paho subscriber (`plain_mqtt.py`), one after the other.

`benchmarks/run.py` calls `run_mqtt` for the shapes named `mqtt-*` and puts `report_lines` into
RESULTS.md. Each measurement gets a fresh Mosquitto (tests/services.py's), a fresh database and a
fresh client id; the load comes from `mqtt_load.py` in a process of its own, so only the
contender's CPU is counted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
BIN = Path(sys.executable).parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mqtt_load import PLAIN_SIGNALS, tasmota_sources  # noqa: E402
from procstat import cpu_seconds, peak_rss_kib  # noqa: E402

from tests.services import InfluxDB, Mosquitto  # noqa: E402

FACTORY = "bench"
SECTOR = "bench"
PROBE = "probe"  # a machine of its own: its messages tell the runner the contender is listening
CPU_TARGET = 1.0  # aguante's CPU per message, as a multiple of the plain subscriber's
POLL = 0.25  # seconds between InfluxDB counts while the load runs
STALL = 30.0  # after the load, give up waiting for the count when it has not moved this long
_PR_SET_PDEATHSIG = 1

TASMOTA_SIGNALS = (  # (field, path in the SENSOR message); all floats
    ("power", "ENERGY.Power"),
    ("voltage", "ENERGY.Voltage"),
    ("current", "ENERGY.Current"),
    ("energy_kwh", "ENERGY.Total"),
    ("power_factor", "ENERGY.Factor"),
)
PLAIN_KINDS = {"current": "float", "temperature": "float", "pressure": "float", "running": "bool"}


@dataclass(frozen=True)
class MqttShape:
    """`sources` boards (tasmota) or signals (plain) sharing `rate` messages/s for the measured
    seconds — or, with rate 0, a burst of `--burst` messages as fast as the broker takes them."""

    name: str
    title: str
    payload: str  # "tasmota" | "plain"
    sources: int
    rate: float = 0.0

    @property
    def saturation(self) -> bool:
        return self.rate == 0

    @property
    def machines(self) -> list[str]:
        if self.payload == "tasmota":
            return [f"plug-{n:03d}" for n in range(self.sources)]
        return [f"machine-{n:02d}" for n in range(-(-self.sources // len(PLAIN_SIGNALS)))]


MQTT_SHAPES = {
    "mqtt-tasmota": MqttShape(
        "mqtt-tasmota",
        "MQTT: 200 Tasmota energy plugs × 1 SENSOR message/s (tele/<plug>/SENSOR, 5 fields)",
        "tasmota",
        200,
        200.0,
    ),
    "mqtt-tasmota-burst": MqttShape(
        "mqtt-tasmota-burst",
        "MQTT saturation: Tasmota SENSOR messages of 200 plugs, as fast as the broker takes them",
        "tasmota",
        200,
    ),
    "mqtt-plain": MqttShape(
        "mqtt-plain",
        "MQTT: 50 machines × 4 plain values × 1/s (planta/<machine>/valor/<signal>)",
        "plain",
        200,
        200.0,
    ),
    "mqtt-plain-burst": MqttShape(
        "mqtt-plain-burst",
        "MQTT saturation: plain values of 50 machines × 4 signals, as fast as the broker takes",
        "plain",
        200,
    ),
}


@dataclass(frozen=True)
class MqttTarget:
    shape: MqttShape
    broker_port: int
    influx_url: str
    database: str
    workdir: Path
    client_id: str

    @property
    def filter(self) -> str:
        return "tele/+/SENSOR" if self.shape.payload == "tasmota" else "planta/+/valor/+"


class MqttContender(Protocol):
    name: str

    def command(self, target: MqttTarget) -> list[str]: ...

    def own_count(self, target: MqttTarget, stdout: str, influx: InfluxDB) -> int | None: ...


class PlainSubscriber:
    name = "plain subscriber"

    def command(self, target: MqttTarget) -> list[str]:
        spec = {
            "factory": FACTORY,
            "sector": SECTOR,
            "shape": target.shape.payload,
            "host": "127.0.0.1",
            "port": target.broker_port,
            "client_id": target.client_id,
            "filter": target.filter,
            "influx_url": target.influx_url,
            "database": target.database,
            "kinds": PLAIN_KINDS,
        }
        path = target.workdir / f"{target.database}.json"
        path.write_text(json.dumps(spec))
        return [sys.executable, str(BENCH / "plain_mqtt.py"), str(path)]

    def own_count(self, target: MqttTarget, stdout: str, influx: InfluxDB) -> int | None:
        for line in reversed(stdout.splitlines()):
            with contextlib.suppress(ValueError, KeyError):
                return int(json.loads(line)["messages"])
        return None


class AguanteMqtt:
    name = "aguante"

    def command(self, target: MqttTarget) -> list[str]:
        shape = target.shape
        if shape.payload == "tasmota":
            subscription: dict[str, Any] = {
                "topic": "{machine}",
                "format": "tasmota",
                "signals": [{"name": n, "path": p} for n, p in TASMOTA_SIGNALS],
            }
        else:
            subscription = {
                "topic": "planta/{machine}/valor/{signal}",
                "format": "plain",
                "signals": [{"name": n, "type": t} for n, t in PLAIN_KINDS.items()],
            }
        config = {
            "factory": FACTORY,
            "timezone": "UTC",  # the load's Tasmota `Time` is UTC
            "influxdb": {
                "url": target.influx_url,
                "database": target.database,
                "create_database": True,
                "quarantine_file": str(target.workdir / f"{target.database}-quarantine.jsonl"),
            },
            "buffer": {"directory": str(target.workdir / f"{target.database}-buffer")},
            "mqtt": {
                "url": f"mqtt://127.0.0.1:{target.broker_port}",
                "client_id": target.client_id,
                "subscriptions": [subscription],
            },
            "sectors": [{"id": SECTOR}],
            "machines": [{"id": m, "sector": SECTOR} for m in [*shape.machines, PROBE]],
        }
        path = target.workdir / f"{target.database}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [str(BIN / "aguante"), "collect", str(path)]

    def own_count(self, target: MqttTarget, stdout: str, influx: InfluxDB) -> int | None:
        # The source's health point, the last one written on stop: messages it handled.
        rows = influx.query(
            "SELECT LAST(messages) FROM collector WHERE machine = '_mqtt'",
            database=target.database,
        )
        return int(rows[0]["last"]) if rows else None


MQTT_CONTENDERS: list[MqttContender] = [PlainSubscriber(), AguanteMqtt()]


@dataclass
class MqttMeasurement:
    contender: str
    shape: MqttShape
    run: int
    load_average: float = 0.0
    published: int = 0
    acknowledged: int = 0
    stored: int = 0  # load messages in InfluxDB when the count completed (or gave up)
    stored_total: int = 0  # after the contender was stopped
    probes: int = 0
    window_s: float = 0.0  # go → all stored
    publish_s: float = 0.0  # first → last publish
    drain_s: float = 0.0  # last publish → all stored
    cpu_s: float = 0.0
    startup_cpu_s: float = 0.0
    peak_rss_kib: int = 0
    writes: int = 0
    write_bytes: int = 0
    broker_cpu_s: float = 0.0
    influxd_cpu_s: float = 0.0
    load_cpu_s: float = 0.0
    lags: list[float] = field(default_factory=list)
    own_count: int | None = None
    fields: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.stored * 1000 if self.stored else float("nan")

    @property
    def sustained(self) -> float:
        """Messages stored per second, from the first publish to the last message stored."""
        span = self.publish_s + self.drain_s
        return self.stored / span if span > 0 else float("nan")

    @property
    def publish_rate(self) -> float:
        return self.published / self.publish_s if self.publish_s > 0 else float("nan")

    @property
    def complete(self) -> bool:
        return self.published > 0 and self.stored_total == self.published

    def lag(self, quantile: float) -> float:
        if not self.lags:
            return float("nan")
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


# -- processes (as run.py's) ---------------------------------------------------------------------


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _popen(
    command: list[str], cwd: Path, err: Path, *, stdin: int, stdout: Any
) -> subprocess.Popen[Any]:
    with err.open("wb") as stderr:
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop_process(process: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _service_pid(service: InfluxDB | Mosquitto) -> int | None:
    # The harness keeps its process private; read here only for the CPU figure.
    process: subprocess.Popen[bytes] | None = getattr(service, "_process", None)
    return process.pid if process is not None else None


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- InfluxDB ------------------------------------------------------------------------------------


def stored_messages(influx: InfluxDB, target: MqttTarget, machine_is: str) -> int:
    """Messages in InfluxDB: one point of 5 fields per Tasmota message, one value per plain one."""
    where = f"WHERE machine {machine_is} '{PROBE}'"
    if target.shape.payload == "tasmota":
        rows = influx.query(f"SELECT COUNT(power) FROM reading {where}", database=target.database)
        return int(rows[0]["count"]) if rows else 0
    rows = influx.query(f"SELECT COUNT(*) FROM reading {where}", database=target.database)
    return sum(int(v) for row in rows for k, v in row.items() if k.startswith("count_"))


def influx_writes(influx: InfluxDB) -> tuple[int, int]:
    rows = influx.query("SHOW STATS FOR 'httpd'")
    return sum(int(r["writeReq"]) for r in rows), sum(int(r["writeReqBytes"]) for r in rows)


def field_types(influx: InfluxDB, database: str) -> dict[str, str]:
    rows = influx.query("SHOW FIELD KEYS FROM reading", database=database)
    return {str(r["fieldKey"]): str(r["fieldType"]) for r in rows}


# -- the probe: is the contender listening yet? --------------------------------------------------


class Probe:
    """Publishes one message for machine PROBE at a time (QoS 1) until InfluxDB holds one."""

    def __init__(self, shape: MqttShape, port: int) -> None:
        self.shape = shape
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{secrets.token_hex(4)}"
        )
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        self.sent = 0

    def send(self) -> None:
        if self.shape.payload == "tasmota":
            _, payload = tasmota_sources(1)[0]
            self.client.publish(f"tele/{PROBE}/SENSOR", payload(time.time()), qos=1)
        else:
            self.client.publish(f"planta/{PROBE}/valor/current", b"1.5", qos=1)
        self.sent += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_listening(
    probe: Probe, influx: InfluxDB, target: MqttTarget, process: subprocess.Popen[Any]
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the contender exited at start")
        probe.send()
        for _ in range(4):
            time.sleep(0.25)
            if stored_messages(influx, target, "=") > 0:
                return
    raise RuntimeError("the contender stored no probe message within 60 s")


# -- one measurement -----------------------------------------------------------------------------


def measure(
    contender: MqttContender,
    target: MqttTarget,
    influx: InfluxDB,
    broker: Mosquitto,
    *,
    run: int,
    seconds: float,
    burst: int,
) -> MqttMeasurement:
    shape = target.shape
    result = MqttMeasurement(contender.name, shape, run)
    result.load_average = float(Path("/proc/loadavg").read_text().split()[0])
    influx.create_database(target.database)
    work, db = target.workdir, target.database
    out_path, err_path = work / f"{db}.out", work / f"{db}.err"
    timeline_path = work / f"{db}-timeline.json"
    influxd, mosquitto = _service_pid(influx), _service_pid(broker)

    def cpus() -> tuple[float, float]:
        return (
            cpu_seconds(mosquitto) if mosquitto else 0.0,
            cpu_seconds(influxd) if influxd else 0.0,
        )

    with out_path.open("wb") as out:
        process = _popen(
            contender.command(target), work, err_path, stdin=subprocess.DEVNULL, stdout=out
        )
    load: subprocess.Popen[Any] | None = None
    probe: Probe | None = None
    try:
        probe = Probe(shape, target.broker_port)
        try:
            wait_listening(probe, influx, target, process)
        except RuntimeError as exc:
            raise RuntimeError(f"{contender.name}: {exc}:\n{_tail(err_path)}") from None
        result.probes = probe.sent
        probe.close()
        probe = None
        time.sleep(1.0)  # let the first write settle before the window opens
        load_args = [f"--rate={shape.rate}", f"--seconds={seconds}"] if shape.rate else []
        load = _popen(
            [
                sys.executable,
                str(BENCH / "mqtt_load.py"),
                f"--port={target.broker_port}",
                f"--shape={shape.payload}",
                f"--sources={shape.sources}",
                *(load_args or [f"--count={burst}"]),
                f"--timeline={timeline_path}",
            ],
            work,
            work / f"{db}-load.err",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert load.stdout is not None and load.stdin is not None
        if b"connected" not in load.stdout.readline():
            raise RuntimeError(
                f"the load generator did not connect:\n{_tail(work / f'{db}-load.err')}"
            )
        start = time.time()
        cpu_before = cpu_seconds(process.pid)
        writes_before = influx_writes(influx)
        broker_before, influxd_before = cpus()
        load.stdin.write(b"go\n")
        load.stdin.flush()
        samples: list[tuple[float, int]] = []
        summary: dict[str, Any] | None = None
        reader = _LineReader(load)
        moved_at = time.monotonic()
        while True:
            time.sleep(POLL)
            now, count = time.time(), stored_messages(influx, target, "!=")
            if not samples or count != samples[-1][1]:
                moved_at = time.monotonic()
            samples.append((now, count))
            if summary is None and reader.line is not None:
                summary = json.loads(reader.line)
                result.load_cpu_s = float(summary["cpu_s"])
            if process.poll() is not None:
                raise RuntimeError(f"{contender.name} exited while measured:\n{_tail(err_path)}")
            if summary is not None and count >= summary["published"]:
                break
            if summary is not None and time.monotonic() - moved_at > STALL:
                result.problems.append(
                    f"gave up waiting: {count:,} of {summary['published']:,} stored, no progress "
                    f"for {STALL:.0f} s"
                )
                break
            if summary is None and load.poll() is not None and reader.line is None:
                raise RuntimeError(f"the load generator failed:\n{_tail(work / f'{db}-load.err')}")
        end = samples[-1][0]
        result.cpu_s = cpu_seconds(process.pid) - cpu_before
        writes_after = influx_writes(influx)
        broker_after, influxd_after = cpus()
        result.peak_rss_kib = peak_rss_kib(process.pid)
        result.startup_cpu_s = cpu_before
    finally:
        if probe is not None:
            probe.close()
        if load is not None:
            stop_process(load)
            for stream in (load.stdin, load.stdout):
                if stream is not None:
                    stream.close()
        result.exit_code = stop_process(process)
    assert summary is not None  # the loop above ends only with it, or raises
    result.published = int(summary["published"])
    result.acknowledged = int(summary["acknowledged"])
    result.stored = samples[-1][1]
    result.window_s = end - start
    result.publish_s = float(summary["last"]) - float(summary["first"])
    result.drain_s = end - float(summary["last"])
    result.writes = writes_after[0] - writes_before[0]
    result.write_bytes = writes_after[1] - writes_before[1]
    result.broker_cpu_s = broker_after - broker_before
    result.influxd_cpu_s = influxd_after - influxd_before
    times: list[float] = json.loads(timeline_path.read_text())
    # Lag: at each count, the time minus when the newest message it covers was published
    # (publish order is storage order on one connection); until the count was complete.
    for now, count in samples:
        if count > 0 and times:
            result.lags.append(now - times[min(count, len(times)) - 1])
        if count >= len(times):
            break
    result.stored_total = stored_messages(influx, target, "!=")
    result.own_count = contender.own_count(target, out_path.read_text(errors="replace"), influx)
    result.fields = field_types(influx, target.database)
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


class _LineReader:
    """The load generator's summary line (its last), read in a thread so the count loop never
    blocks on it."""

    def __init__(self, process: subprocess.Popen[Any]) -> None:
        self.line: str | None = None
        self._process = process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        raw = self._process.stdout.readline()
        if raw:
            self.line = raw.decode()


# -- all of it -----------------------------------------------------------------------------------


def run_mqtt(
    shapes: list[str],
    *,
    workdir: Path,
    influx: InfluxDB,
    seconds: float,
    burst: int,
    repeat: int,
    progress: Callable[[str], None],
) -> dict[str, list[MqttMeasurement]]:
    """Every contender `repeat` times on each shape, interleaved (plain, aguante, plain, …)."""
    results: dict[str, list[MqttMeasurement]] = {}
    for name in shapes:
        shape = MQTT_SHAPES[name]
        results[name] = []
        load = (
            f"{burst:,} messages" if shape.saturation else f"{shape.rate:g} msg/s × {seconds:g} s"
        )
        progress(f"== {shape.title}: {load}, each contender {repeat}×")
        for run in range(1, repeat + 1):
            for contender in MQTT_CONTENDERS:
                slug = contender.name.replace(" ", "_")
                broker = Mosquitto(workdir / f"mosquitto-{name}-{slug}-{run}")
                target = MqttTarget(
                    shape,
                    broker.port,
                    influx.url,
                    f"{name.replace('-', '_')}_{slug}_{run}",
                    workdir,
                    f"bench-{slug}-{secrets.token_hex(4)}",
                )
                with broker:
                    m = measure(
                        contender, target, influx, broker, run=run, seconds=seconds, burst=burst
                    )
                results[name].append(m)
                progress(
                    f"   {contender.name} #{run}: {m.stored:,}/{m.published:,} stored, "
                    f"{m.cpu_per_1000:.4f} CPU s / 1000 msg, {m.sustained:,.0f} msg/s, "
                    f"drain {m.drain_s:.2f} s, lag p50 {m.lag(0.5):.2f} s, "
                    f"{m.peak_rss_kib / 1024:.0f} MiB"
                    + "".join(f" — {problem}" for problem in m.problems)
                )
    return results


# -- the report ----------------------------------------------------------------------------------


def _f(value: float, digits: int = 2) -> str:
    return "—" if value != value else f"{value:,.{digits}f}"


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _spread(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return _f(values[0], digits)
    return f"{_f(_mean(values), digits)} ({_f(min(values), digits)}–{_f(max(values), digits)})"


def _by(results: list[MqttMeasurement], contender: str) -> list[MqttMeasurement]:
    return [m for m in results if m.contender == contender]


def verdict(results: list[MqttMeasurement]) -> tuple[bool, float, str]:
    plain = [m.cpu_per_1000 for m in _by(results, PlainSubscriber.name)]
    ours = [m.cpu_per_1000 for m in _by(results, AguanteMqtt.name)]
    ratio = _mean(ours) / _mean(plain) if plain and ours else float("nan")
    overlap = bool(plain and ours) and min(ours) <= max(plain)
    note = (
        "the runs' ranges overlap"
        if overlap
        else "every aguante run above every plain run"
        if ratio > 1
        else "every aguante run below every plain run"
    )
    return ratio <= CPU_TARGET, ratio, note


def summary_lines(results: dict[str, list[MqttMeasurement]]) -> list[str]:
    lines = [
        "| shape | plain subscriber CPU s / 1,000 msg | aguante CPU s / 1,000 msg | ratio "
        "| plain msg/s | aguante msg/s | all stored | target |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, measurements in results.items():
        plain, ours = _by(measurements, PlainSubscriber.name), _by(measurements, AguanteMqtt.name)
        passed, ratio, _ = verdict(measurements)
        stored = all(m.complete for m in measurements)
        lines.append(
            f"| {name} | {_spread([m.cpu_per_1000 for m in plain], 4)} "
            f"| {_spread([m.cpu_per_1000 for m in ours], 4)} | {ratio:.2f}× "
            f"| {_spread([m.sustained for m in plain], 0)} "
            f"| {_spread([m.sustained for m in ours], 0)} "
            f"| {'yes' if stored else '**no**'} | {'PASS' if passed else '**FAIL**'} |"
        )
    return [*lines, ""]


def shape_table(shape: MqttShape, results: list[MqttMeasurement]) -> list[str]:
    plain_mean = _mean([m.cpu_per_1000 for m in _by(results, PlainSubscriber.name)])
    rows: list[tuple[str, Callable[[MqttMeasurement], str]]] = [
        ("load average (1 min) at start", lambda m: _f(m.load_average)),
        (
            "messages published (acknowledged by the broker)",
            lambda m: f"{m.published:,} ({m.acknowledged:,})",
        ),
        ("**messages stored** (InfluxDB count)", lambda m: f"**{m.stored_total:,}**"),
        ("CPU from first publish to all stored, s (user+sys)", lambda m: _f(m.cpu_s)),
        ("**CPU s per 1,000 messages**", lambda m: f"**{_f(m.cpu_per_1000, 4)}**"),
        (
            "… relative to the plain subscriber's mean",
            lambda m: f"{m.cpu_per_1000 / plain_mean:.2f}×" if plain_mean else "—",
        ),
        ("publish rate, msg/s", lambda m: _f(m.publish_rate, 0)),
        (
            "**messages/s sustained** (stored ÷ first publish → all stored)",
            lambda m: f"**{_f(m.sustained, 0)}**",
        ),
        ("publishing took, s", lambda m: _f(m.publish_s)),
        ("drain: last publish → all stored, s", lambda m: _f(m.drain_s)),
        ("lag publish → stored, median / max, s", lambda m: f"{_f(m.lag(0.5))} / {_f(m.lag(1.0))}"),
        ("peak RSS (VmHWM), MiB", lambda m: _f(m.peak_rss_kib / 1024, 1)),
        ("CPU before the window, s (start-up, probe)", lambda m: _f(m.startup_cpu_s)),
        ("InfluxDB /write requests in the window", lambda m: f"{m.writes:,}"),
        ("… per second", lambda m: _f(m.writes / m.window_s) if m.window_s else "—"),
        (
            "bytes per /write request",
            lambda m: f"{m.write_bytes / m.writes:,.0f}" if m.writes else "—",
        ),
        (
            "messages handled (own count) / load + probes sent",
            lambda m: (
                f"{'?' if m.own_count is None else f'{m.own_count:,}'} / {m.published + m.probes:,}"
            ),
        ),
        ("Mosquitto's CPU in window, s", lambda m: _f(m.broker_cpu_s)),
        ("influxd's CPU in window, s", lambda m: _f(m.influxd_cpu_s)),
        ("load generator's CPU, s", lambda m: _f(m.load_cpu_s)),
    ]
    header = [f"{m.contender} #{m.run}" for m in results]
    lines = [
        f"### {shape.title}",
        "",
        "| | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(results),
    ]
    lines += [f"| {label} | " + " | ".join(cell(m) for m in results) + " |" for label, cell in rows]
    lines.append("")
    passed, ratio, note = verdict(results)
    ours = _by(results, AguanteMqtt.name)
    plain = _by(results, PlainSubscriber.name)
    lines.append(
        f"- {'PASS' if passed else 'FAIL'}: aguante CPU per message ≤ {CPU_TARGET:.1f}× the plain "
        f"subscriber's: {ratio:.2f}× (means of {len(ours)} and {len(plain)} runs; {note})"
    )
    for m in results:
        lines.append(
            f"- {'PASS' if m.complete else 'FAIL'}: {m.contender} #{m.run}: every message stored: "
            f"{m.stored_total:,} of {m.published:,}"
        )
    reference = plain[0].fields if plain else {}
    for m in ours:
        same = m.fields == reference
        lines.append(
            f"- {'PASS' if same else 'FAIL'}: {m.contender} #{m.run} stores the same fields and "
            f"types as the plain subscriber: "
            + ", ".join(f"{k} {v}" for k, v in sorted(m.fields.items()))
        )
    for m in results:
        lines += [f"- note ({m.contender} #{m.run}): {problem}" for problem in m.problems]
    lines.append("")
    return lines


HOW_TO_READ = """\
A load generator (`benchmarks/mqtt_load.py`, paho-mqtt, its own process) publishes QoS 1 to a
fresh Mosquitto for every measurement: Tasmota energy plugs' `tele/<plug>/SENSOR` messages
(`Time` with milliseconds as Tasmota's `Time 4` prints it, and the full ENERGY object of which 5
values are stored as floats, stamped with the payload's time), or bare values on
`planta/<machine>/valor/<signal>` (3 floats and an ON/OFF, stamped on arrival). The *plain
subscriber* (`benchmarks/plain_mqtt.py`) is the floor: paho with clean session false and QoS 1,
`json.loads` (or `float`) in the callback, line protocol by hand, one POST a second; paho acks
each message when the callback returns. *aguante* is `aguante collect` (on uvloop, its default)
on a generated config (one `mqtt.subscriptions` entry with `{machine}` / `{signal}`), its
manual acks after the buffer and its health points every 10 s included. Each gets a fresh
client id, a fresh database, and is run `--repeat` times, interleaved with the other, so noise
from whatever else runs on the machine shows as the spread: cells are per run, the summary gives
mean (min–max).

The measured window opens when the load starts (after the contender has stored a probe message,
so it is subscribed, plus 1 s) and closes when InfluxDB's count (polled every 0.25 s) reaches the
number published. CPU is user+sys of the contender's process (/proc/PID/stat, all threads) over
that window, divided by the messages stored. The plant rate is a fixed offered load (the
sustained rate can only match it); the burst publishes as fast as Mosquitto acknowledges (at
most 200 in flight), so the broker queues whatever the contender cannot take yet, and messages/s
sustained is what the contender got through from first publish to last store. Lag is sampled at
each count: the time then minus the publish time of the newest message the count covers (in
order on one connection), so it includes up to one second of batching. Everything shares the two
cores — load generator, broker, influxd and contender — so a burst's rates are this machine's,
not the contender's alone; CPU per message is the figure to compare.
"""


def report_lines(results: dict[str, list[MqttMeasurement]], repeat: int) -> list[str]:
    if not results:
        return []
    lines = [
        "## MQTT: add-on boards through Mosquitto",
        "",
        f"paho-mqtt {version('paho-mqtt')}, {_mosquitto_version()}; each contender {repeat}× per "
        "shape, interleaved. Target: aguante's CPU per message ≤ the plain subscriber's. "
        "Summary cells: mean (min–max) over the runs.",
        "",
        *summary_lines(results),
    ]
    for name, measurements in results.items():
        lines += shape_table(MQTT_SHAPES[name], measurements)
    return [*lines, "### How to read the MQTT tables", "", HOW_TO_READ]


def _mosquitto_version() -> str:
    for executable in ("mosquitto", "/usr/sbin/mosquitto"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [executable, "-h"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            return out.splitlines()[0].strip() if out else "mosquitto ?"
    return "mosquitto ?"
