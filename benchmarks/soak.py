"""`make soak`: the collector for a long while under faults, all real processes, then an account
of every reading it took: were they all stored in InfluxDB, once?

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--poll 0.5] [--rate 20] [--keep]
        [--output benchmarks/RESULTS.md]

Started here, each in its own process group and stopped on exit or Ctrl-C: InfluxDB and Mosquitto
(tests.services, Mosquitto with persistence), `aguante simulate metalworks --mqtt` (Modbus devices
and MQTT boards) and `aguante collect` on examples/metalworks.yaml moved to those ports, with its
disk buffer in a temporary folder. A publisher of this script sends numbered QoS 1 messages
(`soak/seq`, 20/s) that the config maps to machine `soak-seq`, signal `seq`: a message the broker
acknowledged is taken, and must be in InfluxDB at the end.

Faults follow a schedule scaled to the duration (for 30 minutes: InfluxDB down 10 minutes; the
collector SIGKILLed and restarted six times, three of them during the outage, one while Mosquitto
restarts, and `--kills` more times (24) spread evenly over the run; Mosquitto restarted twice;
Modbus devices dropped, slow, answering garbage or timing out for a while). Before every SIGKILL,
every 20 s and at the end the buffer's waiting lines are read (read-only, as `aguante buffer`
does); every one of them must be in InfluxDB after the drain.

Writes a "## Soak" section into benchmarks/RESULTS.md (one subsection per duration run).
Exit status 1 when a reading was lost or the collector exited on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import functools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin, where `aguante` is installed
AGUANTE = str(BIN / "aguante")
sys.path.insert(0, str(ROOT))  # for tests.services (the tests' own influxd and mosquitto)

from machine import machine_line  # noqa: E402  (benchmarks/, the script's own directory)

from collector.buffer import buffered_lines, inspect_buffer  # noqa: E402
from collector.config import InfluxDBConfig  # noqa: E402
from collector.lineprotocol import decode_line  # noqa: E402
from collector.sinks.influxdb import rollup_policies  # noqa: E402
from tests.services import InfluxDB, Mosquitto  # noqa: E402
from tests.simulation import free_port_base  # noqa: E402

EXAMPLE = ROOT / "examples" / "metalworks.yaml"
SCENARIO = ROOT / "simulators" / "scenarios" / "metalworks.yaml"
DEFAULT_PORT_BASE = 5020
DATABASE = "soak"
CLIENT_ID = "aguante-soak"
SEQ_TOPIC = "soak/seq"
SEQ_MACHINE = "soak-seq"
SEQ_SIGNAL = "seq"
FULL_MINUTES = 30.0  # the schedule below is written for this duration and scaled to others
SNAPSHOT_EVERY = 20.0  # seconds between reads of the buffer's waiting lines
KILL_DOWN_S = 3.0  # a killed collector is started again this long after
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def log(message: str, started: float | None = None) -> None:
    at = f"{time.monotonic() - started:7.1f}s " if started is not None else ""
    print(f"[soak] {at}{message}", flush=True)


# -- the publisher of numbered messages -----------------------------------------------------------


class Sequencer:
    """Publishes 0, 1, 2, … as plain payloads at `rate` per second, QoS 1, from its own thread;
    a number whose PUBACK came back is `taken`. paho keeps unacknowledged messages across a
    broker restart and sends them again (persistent session)."""

    def __init__(self, host: str, port: int, rate: float) -> None:
        self.rate = rate
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id="soak-sequencer",
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async(host, port, keepalive=10)
        self.published = 0
        self.taken: set[int] = set()
        self._pending: dict[int, int] = {}  # message id → number, until its PUBACK
        self._acked: deque[int] = deque()  # message ids acknowledged, from paho's thread
        self.client.on_publish = self._on_publish
        self._stop = threading.Event()
        self._publishing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sequencer", daemon=True)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        self._acked.append(mid)  # resolved in our own thread: no lock shared with paho's

    def start(self) -> None:
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError("the sequence publisher could not connect to Mosquitto")
            time.sleep(0.05)
        self._publishing.set()
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self._publishing.is_set():
                # Queued by paho while the broker is away, sent when it is back.
                info = self.client.publish(SEQ_TOPIC, str(self.published), qos=1)
                self._pending[info.mid] = self.published
                self.published += 1
            self._sweep()
            next_at += 1.0 / self.rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _sweep(self) -> None:
        while self._acked:
            number = self._pending.pop(self._acked.popleft(), None)
            if number is not None:
                self.taken.add(number)

    def finish(self, timeout: float = 60.0) -> int:
        """Stop publishing, wait for the acknowledgements of what was sent; the unacknowledged."""
        self._publishing.clear()
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.2)
            if not self._thread.is_alive():
                self._sweep()
        return len(self._pending)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sweep()
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def open_collector_session(host: str, port: int) -> None:
    """Make the broker keep a persistent session for the collector's client id, subscribed to
    the sequence topic, before the collector first connects: no number is published to nobody."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=CLIENT_ID,
        clean_session=False,
        protocol=paho.MQTTv311,
    )
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe(SEQ_TOPIC, qos=1)
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("could not subscribe the collector's session to the sequence")
    finally:
        client.disconnect()
        client.loop_stop()


# -- processes ------------------------------------------------------------------------------------


class Child:
    """A command of ours in its own process group, output to a log file; restartable."""

    def __init__(self, name: str, argv: list[str], cwd: Path, log_path: Path) -> None:
        self.name, self.argv, self.cwd, self.log_path = name, argv, cwd, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            out.write(
                f"\n===== soak: start {self.name} at {dt.datetime.now(dt.UTC)} =====\n".encode()
            )
            out.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode


def rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def directory_bytes(directory: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
    return total


# -- the buffer's waiting lines -------------------------------------------------------------------


def waiting_lines(directory: Path) -> list[str]:
    """The lines of a buffer directory after its acknowledged position, read without changing
    it (as `inspect_buffer`); records torn by a writer in the middle of a write are skipped."""
    return list(buffered_lines(directory))


# -- InfluxDB -------------------------------------------------------------------------------------


def influx_query(url: str, q: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Rows of every series of the first statement, with `_name` and the series' tags."""
    response = httpx.get(
        f"{url}/query", params={"q": q, "db": DATABASE, "epoch": "ms"}, timeout=timeout
    )
    response.raise_for_status()
    result = response.json()["results"][0]
    if "error" in result:
        raise RuntimeError(f"{q}: {result['error']}")
    rows = []
    for series in result.get("series", []):
        tags = {k: v for k, v in series.get("tags", {}).items() if v != ""}
        for values in series["values"]:
            row = dict(zip(series["columns"], values, strict=True))
            row["_name"] = series.get("name", "")
            row["_tags"] = tags
            rows.append(row)
    return rows


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def same_value(stored: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool) or isinstance(stored, bool) or isinstance(wanted, str):
        return bool(stored == wanted)
    if isinstance(stored, int | float) and isinstance(wanted, int | float):
        return math.isclose(stored, wanted, rel_tol=1e-9, abs_tol=1e-9)
    return bool(stored == wanted)


@dataclass
class LineAccount:
    lines: int = 0
    stored: int = 0
    missing: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)  # stored, a field with another value


def account_lines(url: str, lines: Iterable[str], policies: dict[str, str]) -> LineAccount:
    """Every line found in the buffer: is its point (series, time) in InfluxDB with its fields?"""
    by_measurement: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    account = LineAccount()
    for line in lines:
        point = decode_line(line)
        by_measurement[point.measurement].append((line, point))
        account.lines += 1
    for measurement, items in sorted(by_measurement.items()):
        times = sorted(p.time_ms for _, p in items)
        source = quote(measurement)
        if measurement in policies:
            source = f"{quote(policies[measurement])}.{source}"
        stored: dict[tuple[frozenset[tuple[str, str]], int], dict[str, Any]] = {}
        window = 600_000
        start = times[0]
        while start <= times[-1]:
            end = start + window
            if any(start <= t < end for t in times):
                rows = influx_query(
                    url,
                    f"SELECT * FROM {source} WHERE time >= {start}ms AND time < {end}ms GROUP BY *",
                )
                for row in rows:
                    key = (frozenset(row["_tags"].items()), int(row["time"]))
                    values = {
                        k: v
                        for k, v in row.items()
                        if k not in ("time", "_name", "_tags") and v is not None
                    }
                    stored.setdefault(key, {}).update(values)
            start = end
        for line, point in items:
            found = stored.get((frozenset(point.tags.items()), point.time_ms))
            if found is None or any(name not in found for name in point.fields):
                account.missing.append(line)
            elif all(same_value(found[n], v) for n, v in point.fields.items()):
                account.stored += 1
            else:
                account.stored += 1
                account.differing.append(line)
    return account


def stored_sequence(url: str) -> list[tuple[int, int]]:
    rows = influx_query(
        url,
        f"SELECT {quote(SEQ_SIGNAL)} FROM reading WHERE machine = '{SEQ_MACHINE}'",
        timeout=120,
    )
    return [(int(r["time"]), int(r[SEQ_SIGNAL])) for r in rows if r.get(SEQ_SIGNAL) is not None]


# -- configs --------------------------------------------------------------------------------------


def write_scenario(work: Path) -> Path:
    """The metalworks scenario with its pty moved into the work folder."""
    data = yaml.safe_load(SCENARIO.read_text(encoding="utf-8"))
    for device in data["devices"]:
        if device.get("path"):
            device["path"] = str(work / Path(device["path"]).name)
    path = work / "metalworks-scenario.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def write_config(
    work: Path, port_base: int, influx_url: str, mqtt_url: str, poll: float
) -> tuple[Path, dict[str, Any]]:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["influxdb"] = {
        "url": influx_url,
        "database": DATABASE,
        "flush_interval": 0.2,
        "quarantine_file": str(work / "quarantine.jsonl"),
    }
    data["buffer"] = {
        "directory": str(work / "buffer"),
        "max_bytes": 1024**3,
        "segment_bytes": 1024**2,  # small: segments fill, roll and are deleted during the soak
        "fsync_interval": 1.0,
    }
    data["stats_interval"] = 1.0
    data["state_file"] = str(work / "aguante-state.json")
    if "maintenance" in data:
        data["maintenance"]["store"] = f"sqlite:///{work / 'aguante-tickets.db'}"
    data["mqtt"]["url"] = mqtt_url
    data["mqtt"]["client_id"] = CLIENT_ID
    for machine in data["machines"]:
        device = machine.get("modbus")
        if device is None:
            continue
        device["poll_interval"] = poll
        device["timeout"] = 1.0
        device["retries"] = 0
        if "port" in device:
            device["port"] = port_base + device["port"] - DEFAULT_PORT_BASE
        if "serial_port" in device:
            device["serial_port"] = str(work / Path(device["serial_port"]).name)
    data["machines"].append(
        {
            "id": SEQ_MACHINE,
            "name": "Soak sequence",
            "sector": data["sectors"][0]["id"],
            "mqtt": [
                {
                    "topic": SEQ_TOPIC,
                    "format": "plain",
                    "signals": [{"name": SEQ_SIGNAL, "type": "int"}],
                }
            ],
        }
    )
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, data


# -- the schedule ---------------------------------------------------------------------------------


@dataclass(order=True)
class Event:
    at: float  # seconds from the start
    what: str = field(compare=False)
    action: Callable[[], None] = field(compare=False)


def schedule(minutes: float) -> list[tuple[float, str, str | None]]:
    """(minute at the full 30-minute scale, action, argument); scaled by the caller."""
    return [
        (1.5, "fault", "press-plc=drop"),
        (2.5, "kill", None),
        (3.5, "clear", "press-plc"),
        (4.0, "fault", "moulder-plc=slow:1.5"),
        (4.0, "fault", "welder-plc=garbage"),
        (5.0, "mosquitto", None),
        (5.5, "clear", "moulder-plc"),
        (5.5, "clear", "welder-plc"),
        (7.0, "influx-down", None),
        (9.0, "kill", None),
        (11.0, "kill-with-mosquitto", None),
        (13.0, "fault", "gateway-1=timeout"),
        (14.0, "clear", "gateway-1"),
        (15.0, "kill", None),
        (17.0, "influx-up", None),
        (21.0, "kill", None),
        (22.0, "fault", "press-plc=garbage"),
        (23.0, "clear", "press-plc"),
        (24.0, "fault", "welder-plc=drop"),
        (25.0, "kill", None),
        (26.0, "clear", "welder-plc"),
    ]


# -- the soak -------------------------------------------------------------------------------------


@dataclass
class Soak:
    args: argparse.Namespace
    work: Path
    influx: InfluxDB
    mosquitto: Mosquitto
    simulator: Child
    collector: Child
    control: str
    buffer_dir: Path
    started: float = 0.0
    kills: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    snapshot: set[str] = field(default_factory=set)
    snapshots: int = 0
    peak_rss_kib: int = 0
    peak_buffer_bytes: int = 0
    peak_depth: int = 0
    depth_timeline: list[tuple[float, int]] = field(default_factory=list)
    influx_down_at: float | None = None
    influx_up_at: float | None = None
    depth_at_down: int = 0
    depth_at_up: int = 0
    drained_at: float | None = None
    depth_at_drained: int = 0
    faults: list[str] = field(default_factory=list)
    mosquitto_restarts: int = 0

    def t(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        log(message, self.started)

    # actions
    def take_snapshot(self) -> None:
        lines = waiting_lines(self.buffer_dir)
        self.snapshot.update(lines)
        self.snapshots += 1

    def kill_collector(self) -> None:
        self.take_snapshot()
        self.collector.kill()
        self.kills += 1
        self.say(f"SIGKILL collector (#{self.kills})")

    def start_collector(self) -> None:
        self.collector.start()
        self.say(f"collector started (pid {self.collector.pid})")

    def kill_and_restart(self) -> None:
        self.kill_collector()
        time.sleep(KILL_DOWN_S)
        self.start_collector()

    def restart_mosquitto(self) -> None:
        self.mosquitto.stop()
        self.say("Mosquitto stopped")
        time.sleep(KILL_DOWN_S)
        self.mosquitto.start()
        self.mosquitto_restarts += 1
        self.say("Mosquitto started again")

    def kill_with_mosquitto(self) -> None:
        self.kill_collector()
        self.restart_mosquitto()
        self.start_collector()

    def fault(self, spec: str) -> None:
        device, kind = spec.split("=")
        body: dict[str, Any] = {"device": device, "kind": kind.split(":")[0]}
        if ":" in kind:
            body["arg"] = float(kind.split(":")[1])
        response = httpx.post(f"{self.control}/faults", json=body, timeout=5)
        response.raise_for_status()
        self.faults.append(spec)
        self.say(f"fault {spec}")

    def clear(self, device: str) -> None:
        httpx.delete(f"{self.control}/faults/{device}", timeout=5).raise_for_status()
        self.say(f"fault cleared on {device}")

    def influx_down(self) -> None:
        self.depth_at_down = inspect_buffer(self.buffer_dir).lines
        self.influx.stop()
        self.influx_down_at = self.t()
        self.say(f"InfluxDB stopped (buffer {self.depth_at_down} lines)")

    def influx_up(self) -> None:
        self.take_snapshot()  # the whole backlog of the outage
        self.depth_at_up = inspect_buffer(self.buffer_dir).lines
        self.influx.start()
        self.influx_up_at = self.t()
        self.say(f"InfluxDB started again (buffer {self.depth_at_up} lines)")

    def sample(self) -> None:
        if self.collector.alive():
            self.peak_rss_kib = max(self.peak_rss_kib, rss_kib(self.collector.pid))
        elif self.collector.process is not None:
            code = self.collector.process.returncode
            tail = "\n".join(self.collector.log_path.read_text(errors="replace").splitlines()[-20:])
            self.unexpected_exits.append(f"exit {code} at {self.t():.0f}s:\n{tail}")
            self.say(f"collector exited on its own with {code}; starting it again")
            self.start_collector()
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, directory_bytes(self.buffer_dir))

    def sample_depth(self) -> int:
        depth = inspect_buffer(self.buffer_dir).lines
        self.peak_depth = max(self.peak_depth, depth)
        self.depth_timeline.append((self.t(), depth))
        if (
            self.influx_up_at is not None
            and self.drained_at is None
            and depth <= self.drained_threshold()
        ):
            self.drained_at = self.t()
            self.depth_at_drained = depth
            self.say(
                f"buffer drained to {depth} lines, {self.drained_at - self.influx_up_at:.1f}"
                " s after InfluxDB came back"
            )
        return depth

    def live_rate(self) -> float:
        if self.influx_down_at is None or self.influx_up_at is None:
            return 0.0
        return (self.depth_at_up - self.depth_at_down) / (self.influx_up_at - self.influx_down_at)

    def drained_threshold(self) -> int:
        # Healthy, the buffer holds what arrived since the last flush (0.2 s) and a batch in
        # flight: a few seconds of readings at most.
        return max(100, int(3 * self.live_rate()))


def build_events(soak: Soak, minutes: float, kills: int = 0) -> list[Event]:
    """The schedule scaled to `minutes`, plus `kills` more SIGKILLs spread evenly over it."""
    scale = minutes / FULL_MINUTES
    events = [
        Event((i + 0.5) * minutes * 60 / kills, "SIGKILL", soak.kill_and_restart)
        for i in range(kills)
    ]
    for minute, action, arg in schedule(minutes):
        at = minute * 60 * scale
        if action == "fault":
            assert arg is not None
            spec = arg
            events.append(Event(at, f"fault {spec}", functools.partial(soak.fault, spec)))
        elif action == "clear":
            assert arg is not None
            device = arg
            events.append(Event(at, f"clear {device}", functools.partial(soak.clear, device)))
        elif action == "kill":
            events.append(Event(at, "SIGKILL", soak.kill_and_restart))
        elif action == "kill-with-mosquitto":
            events.append(Event(at, "SIGKILL + Mosquitto restart", soak.kill_with_mosquitto))
        elif action == "mosquitto":
            events.append(Event(at, "Mosquitto restart", soak.restart_mosquitto))
        elif action == "influx-down":
            events.append(Event(at, "InfluxDB down", soak.influx_down))
        elif action == "influx-up":
            events.append(Event(at, "InfluxDB up", soak.influx_up))
    return sorted(events)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    influx = InfluxDB(work / "influxdb")
    mosquitto = Mosquitto(work / "mosquitto")
    assert mosquitto.persistence  # QoS 1 messages queued for the collector survive a restart
    port_base = free_port_base(5)
    control_port = port_base - 1
    scenario = write_scenario(work)
    sequencer: Sequencer | None = None
    simulator = Child(
        "simulator",
        [AGUANTE, "simulate", str(scenario), "--port-base", str(port_base), "--seed", "1",
         "--control-port", str(control_port), "--mqtt", mosquitto.url],
        work,
        work / "simulator.log",
    )  # fmt: skip
    config, data = write_config(work, port_base, influx.url, mosquitto.url, args.poll)
    collector = Child("collector", [AGUANTE, "collect", str(config)], work, work / "collector.log")
    try:
        influx.start()
        mosquitto.start()
        check = subprocess.run(
            [AGUANTE, "check", str(config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"aguante check failed:\n{check.stdout}{check.stderr}")
        soak = Soak(
            args,
            work,
            influx,
            mosquitto,
            simulator,
            collector,
            f"http://127.0.0.1:{control_port}",
            Path(data["buffer"]["directory"]),
        )
        policies = rollup_policies(InfluxDBConfig.model_validate(data["influxdb"]))
        simulator.start()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{soak.control}/devices", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or not simulator.alive():
                raise RuntimeError(f"the simulator did not start; see {simulator.log_path}")
            time.sleep(0.2)
        open_collector_session("127.0.0.1", mosquitto.port)
        soak.started = time.monotonic()
        collector.start()
        soak.say(f"collector started (pid {collector.pid}); work folder {work}")
        sequencer = Sequencer("127.0.0.1", mosquitto.port, args.rate)
        sequencer.start()

        duration = args.minutes * 60
        events = build_events(soak, args.minutes, args.kills)
        next_snapshot = SNAPSHOT_EVERY
        next_depth = 0.0
        while soak.t() < duration:
            while events and events[0].at <= soak.t():
                event = events.pop(0)
                event.action()
            soak.sample()
            if soak.t() >= next_depth:
                soak.sample_depth()
                next_depth = soak.t() + 1.0
            if soak.t() >= next_snapshot:
                soak.take_snapshot()
                next_snapshot = soak.t() + SNAPSHOT_EVERY
            time.sleep(0.5)

        # The end: everything healthy, no new numbers, the buffer drained, the collector stopped.
        soak.say("end of schedule: clearing faults, checking every service is up")
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(f"{soak.control}/faults/all", timeout=5)
        influx.start()
        mosquitto.start()
        if not collector.alive():
            soak.start_collector()
        unacked = sequencer.finish()
        soak.say(f"sequence: {sequencer.published} published, {unacked} never acknowledged")
        last_taken = max(sequencer.taken, default=-1)
        deadline = time.monotonic() + max(120.0, duration / 4)
        while time.monotonic() < deadline:
            soak.sample()
            depth = soak.sample_depth()
            stored = influx_query(
                influx.url,
                f"SELECT max({quote(SEQ_SIGNAL)}) FROM reading WHERE machine = '{SEQ_MACHINE}'",
            )
            top = stored[0]["max"] if stored else None
            if depth <= soak.drained_threshold() and top is not None and top >= last_taken:
                break
            time.sleep(1.0)
        soak.take_snapshot()
        soak.say("SIGTERM collector")
        code = collector.stop(timeout=60)
        left = inspect_buffer(soak.buffer_dir)
        soak.say(f"collector exited with {code}; {left.lines} lines left in the buffer")
        sequencer.close()
        taken, published = set(sequencer.taken), sequencer.published
        sequencer = None
        simulator.stop()

        soak.say(f"accounting for {len(soak.snapshot)} buffer lines ...")
        lines = account_lines(influx.url, soak.snapshot, policies)
        rows = stored_sequence(influx.url)
        times_of: dict[int, set[int]] = defaultdict(set)
        for stamp, number in rows:
            times_of[number].add(stamp)
        stored_numbers = set(times_of)
        lost_numbers = sorted(taken - stored_numbers)
        duplicates = {n: sorted(ts) for n, ts in times_of.items() if len(ts) > 1}
        log_text = collector.log_path.read_text(errors="replace")
        levels = Counter(
            level
            for line in log_text.splitlines()
            for level in ("ERROR", "Traceback")
            if level in line
        )
        drain_s = (
            soak.drained_at - soak.influx_up_at
            if soak.drained_at is not None and soak.influx_up_at is not None
            else None
        )
        live = soak.live_rate()
        drain_rate = (
            (soak.depth_at_up - soak.depth_at_drained + live * drain_s) / drain_s
            if drain_s
            else None
        )
        health = influx_query(
            influx.url,
            "SELECT last(dropped), last(corrupt), last(quarantined), max(buffer_bytes), "
            "max(buffer_depth) FROM collector WHERE machine = '_buffer'",
        )
        return {
            "minutes": args.minutes,
            "poll": args.poll,
            "rate": args.rate,
            "work": str(work),
            "published": published,
            "taken": len(taken),
            "seq_stored": len(stored_numbers & taken),
            "seq_stored_unacked": len(stored_numbers - taken),
            "seq_lost": lost_numbers,
            "seq_duplicates": duplicates,
            "seq_rows": len(rows),
            "buffer_lines": lines.lines,
            "buffer_stored": lines.stored,
            "buffer_missing": lines.missing,
            "buffer_differing": lines.differing,
            "snapshots": soak.snapshots,
            "kills": soak.kills,
            "mosquitto_restarts": soak.mosquitto_restarts,
            "faults": soak.faults,
            "unexpected_exits": soak.unexpected_exits,
            "collector_starts": collector.starts,
            "final_exit": code,
            "left_in_buffer": left.lines,
            "peak_rss_mib": soak.peak_rss_kib / 1024,
            "peak_buffer_bytes": soak.peak_buffer_bytes,
            "peak_depth": soak.peak_depth,
            "outage_s": (soak.influx_up_at or 0) - (soak.influx_down_at or 0),
            "depth_at_down": soak.depth_at_down,
            "depth_at_up": soak.depth_at_up,
            "drain_s": drain_s,
            "drain_rate": drain_rate,
            "live_rate": live,
            "log_errors": levels.get("ERROR", 0),
            "log_tracebacks": levels.get("Traceback", 0),
            "health": health[0] if health else {},
        }
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sequencer is not None:
            sequencer.close()
        collector.stop(timeout=30)
        simulator.stop(timeout=20)
        mosquitto.stop()
        influx.stop()


# -- the report -----------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> list[str]:
    def n(value: float) -> str:
        return f"{value:,.0f}"

    lost_seq = len(result["seq_lost"])
    lost_lines = len(result["buffer_missing"])
    drain_s, drain_rate = result["drain_s"], result["drain_rate"]
    health = result["health"]
    rows = [
        ("MQTT sequence: published / acknowledged by the broker (taken)",
         f"{n(result['published'])} / {n(result['taken'])}"),
        ("MQTT sequence: taken and stored", n(result["seq_stored"])),
        ("**MQTT sequence: taken, lost**", f"**{lost_seq}**"),
        ("MQTT sequence: duplicates (one number at two time stamps)",
         n(len(result["seq_duplicates"]))),
        ("MQTT sequence: stored though never acknowledged (in flight at a restart)",
         n(result["seq_stored_unacked"])),
        (f"buffer lines seen waiting ({result['snapshots']} snapshots, before every SIGKILL)",
         n(result["buffer_lines"])),
        ("buffer lines: stored", n(result["buffer_stored"])),
        ("**buffer lines: lost**", f"**{lost_lines}**"),
        ("buffer lines: stored with another field value (rewritten since)",
         n(len(result["buffer_differing"]))),
        ("SIGKILLs of the collector / unexpected exits",
         f"{result['kills']} / {len(result['unexpected_exits'])}"),
        ("Mosquitto restarts", str(result["mosquitto_restarts"])),
        ("InfluxDB outage, s", f"{result['outage_s']:.0f}"),
        ("peak RSS of the collector (VmRSS, 1 s samples), MiB", f"{result['peak_rss_mib']:.1f}"),
        ("peak buffer on disk, MiB / lines",
         f"{result['peak_buffer_bytes'] / 1024**2:.2f} / {n(result['peak_depth'])}"),
        ("buffer when InfluxDB came back, lines", n(result["depth_at_up"])),
        ("drain time after InfluxDB came back, s",
         f"{drain_s:.1f}" if drain_s is not None else "not drained"),
        ("drain rate, lines/s (backlog + arrivals over the drain time)",
         n(drain_rate) if drain_rate is not None else "–"),
        ("live rate, lines/s (buffer growth during the outage)", f"{result['live_rate']:.1f}"),
        ("drain rate / live rate",
         f"{drain_rate / result['live_rate']:.0f}×"
         if drain_rate is not None and result["live_rate"] else "–"),
        ("buffer dropped / corrupt / quarantined (collector's last health point)",
         f"{health.get('last', '–')} / {health.get('last_1', '–')} / {health.get('last_2', '–')}"),
        ("left in the buffer after SIGTERM, lines / collector exit status",
         f"{result['left_in_buffer']} / {result['final_exit']}"),
        ("collector log: ERROR lines / tracebacks",
         f"{result['log_errors']} / {result['log_tracebacks']}"),
    ]  # fmt: skip
    out = ["| | |", "|---|---:|"]
    out += [f"| {name} | {value} |" for name, value in rows]
    return out


def section(result: dict[str, Any], started: dt.datetime) -> list[str]:
    minutes = result["minutes"]
    verdict = (
        "PASS"
        if not result["seq_lost"]
        and not result["buffer_missing"]
        and not result["unexpected_exits"]
        else "FAIL"
    )
    lines = [
        f"### {minutes:g} minutes",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine_line()}",
        f"- command: `benchmarks/soak.py --minutes {minutes:g} --poll {result['poll']:g} "
        f"--rate {result['rate']:g}`",
        f"- faults: {', '.join(result['faults'])}",
        "",
        *table(result),
        "",
        f"- {verdict}: every taken reading stored "
        f"({len(result['seq_lost'])} sequence numbers and {len(result['buffer_missing'])} buffer "
        f"lines lost, {len(result['unexpected_exits'])} unexpected collector exits)",
    ]
    if result["seq_lost"]:
        lines.append(f"- lost sequence numbers (first 20): {result['seq_lost'][:20]}")
    return lines


SOAK_INTRO = """\
## Soak

Generated by `make soak` (`benchmarks/soak.py`; `SOAK_ARGS="--minutes 5"` for a short one): all
real processes (InfluxDB, Mosquitto with persistence, `aguante simulate metalworks --mqtt`,
`aguante collect` on examples/metalworks.yaml with its disk buffer) under a fault schedule scaled
to the duration: InfluxDB down for a third of it, the collector SIGKILLed and restarted six
times (three during the outage, one while Mosquitto restarts) plus `--kills` times spread evenly
(24 by default; runs before it had none), Mosquitto restarted twice, Modbus
devices dropped, slow, answering garbage or timing out for a while. A publisher sends numbered
QoS 1 messages (machine `soak-seq`, signal `seq`): taken = acknowledged by the broker. Buffer
lines: every line waiting in the disk buffer before a SIGKILL, every 20 s and at the end, read
read-only. Lost = taken but not in InfluxDB after the drain (target 0). A duplicate is a number
stored at two time stamps (delivered again after a collector kill or a broker restart, before
its acknowledgement reached the broker: at least once, by design). "Stored with another field
value": open `stop` points, rewritten at the same time stamp as the stop goes on (by design).
Drain time: from InfluxDB's restart until the buffer is back to a few seconds of readings.
"""


def write_section(path: Path, result: dict[str, Any], started: dt.datetime) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    before, marker, after = text.partition("\n## Soak\n")
    sub: dict[str, list[str]] = {}
    tail = ""
    if marker:
        # After the soak section: any later "## " section is kept as it is.
        body, later, rest = after.partition("\n## ")
        tail = later + rest if later else ""
        current: str | None = None
        for line in body.splitlines():
            if line.startswith("### "):
                current = line
                sub[current] = []
            if current is not None:
                sub[current].append(line)
    new = section(result, started)
    sub[new[0]] = new

    def minutes_of(heading: str) -> float:
        with contextlib.suppress(ValueError, IndexError):
            return float(heading.split()[1])
        return math.inf

    parts = [before.rstrip("\n"), "", SOAK_INTRO]
    for heading in sorted(sub, key=minutes_of):
        parts.append("\n".join(sub[heading]).rstrip("\n"))
        parts.append("")
    output = "\n".join(parts).rstrip("\n") + "\n"
    if tail:
        output += "\n" + tail.lstrip("\n")
    path.write_text(output, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=FULL_MINUTES, help="duration (30)")
    parser.add_argument("--poll", type=float, default=0.5, help="Modbus poll interval, s (0.5)")
    parser.add_argument("--rate", type=float, default=20.0, help="sequence messages/s (20)")
    parser.add_argument(
        "--kills",
        type=int,
        default=24,
        help="SIGKILLs spread over the run besides the six of the schedule (24)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args(argv)
    if args.minutes < 2:
        parser.error("--minutes: at least 2 (the schedule needs room for its faults)")
    if args.kills < 0:
        parser.error("--kills: 0 or more")

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGINT too: a shell starts a background job with it ignored, which Python keeps.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="aguante-soak-"))
    keep = args.keep
    try:
        result = run(args, work)
    except KeyboardInterrupt:
        log(f"interrupted; children stopped; work folder kept: {work}")
        return 130
    except BaseException:
        keep = True
        log(f"failed; work folder kept: {work}")
        raise
    lines = section(result, started)
    print("\n".join(lines))
    failed = bool(result["seq_lost"] or result["buffer_missing"] or result["unexpected_exits"])
    if result["seq_duplicates"]:
        sample = dict(list(result["seq_duplicates"].items())[:5])
        print(f"duplicates (number: time stamps), first 5: {sample}")
    for line in result["buffer_missing"][:20]:
        print(f"missing buffer line: {line}")
    for line in result["buffer_differing"][:5]:
        print(f"differing buffer line: {line}")
    for exit_ in result["unexpected_exits"]:
        print(f"unexpected collector exit: {exit_}")
    if failed:
        keep = True
        (work / "result.json").write_text(json.dumps(result, indent=1, default=str))
    if not args.no_write:
        write_section(args.output, result, started)
        print(f"wrote the soak section of {args.output}")
    if keep:
        print(f"work folder kept: {work}")
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
