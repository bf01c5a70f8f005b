"""Maintenance at plant scale: how long one evaluation of 50 machines × 10 rules takes against
14 days of stored minute data in InfluxDB (first cycle with cold drift baselines, then warm ones),
and the ticket API's latency (list, acknowledge) under 20 concurrent clients, served by uvicorn
in a process of its own over a SQLite ticket store of 500 tickets.

    .venv/bin/python benchmarks/maintenance_bench.py [--machines 50] [--days 14] [--cycles 10]
        [--clients 20] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector.config import Config, parse_config  # noqa: E402
from collector.schema import Point  # noqa: E402
from tests.maintenance import seed  # noqa: E402

MAINTENANCE_SHAPE = "maintenance"
MINUTE_MS = seed.MINUTE_MS
HOUR_MS = seed.HOUR_MS
DAY_MS = seed.DAY_MS
NOW_MS = seed.NOW_MS  # the first cycle's "now"; the data runs on through the warm cycles
INTERVAL_S = 60.0  # maintenance.interval's default
CYCLE_TARGET_S = INTERVAL_S * 0.10
API_TARGET_S = 0.300
HEALTH_HOURS = 6  # collector health points every 10 s over the last hours (what error_rate reads)
BATCH_POINTS = 20_000
TOKEN = "token-bench-crew-all-sectors-01"
SECRET = "a-benchmark-secret-key-of-enough-length"
SECTORS = ("s0", "s1", "s2", "s3", "s4")

# What misbehaves, so that rules fire as they would in a plant (index of the machine → trouble).
HOT, SHAKING, LOW_PRESSURE, OVERCURRENT, SILENT, FLAKY = 3, 7, 9, 11, 13, 15


# -- the plant and its data ----------------------------------------------------------------------


def rules(machines: list[str]) -> list[dict[str, Any]]:
    """Ten rules on every machine: four thresholds, a rate, a drift, two meters, offline and
    error rate."""
    every = list(machines)
    return [
        {"id": "hot", "machines": every, "threshold": {"signal": "temperature", "above": 85}},
        {
            "id": "shaking",
            "machines": every,
            "threshold": {"signal": "vibration", "above": 7.1, "for_minutes": 5, "clear_below": 6},
        },
        {"id": "low-pressure", "machines": every, "threshold": {"signal": "pressure", "below": 2}},
        {
            "id": "overcurrent",
            "machines": every,
            "threshold": {"signal": "current", "above": 25, "for_minutes": 3},
        },
        {
            "id": "heating",
            "machines": every,
            "rate": {"signal": "temperature", "rising_per_hour": 30},
        },
        {"id": "temperature-drift", "machines": every, "drift": {"signal": "temperature"}},
        {"id": "oil", "machines": every, "meter": {"run_hours": 500, "days": 180}},
        {"id": "strokes", "machines": every, "meter": {"cycles": 150_000}},
        {"id": "silent", "machines": every, "offline": {"minutes": 10}},
        {"id": "modbus-errors", "machines": every, "error_rate": {}},
    ]


def plant_config(url: str, database: str, machines: int) -> Config:
    """seed.py's plant (press-1…) with a `current` signal more and the ten rules."""
    ids = seed.machine_ids(machines)
    data = yaml.safe_load(seed.config_text(url, database, rules(ids), machines=machines))
    for machine in data["machines"]:
        machine["modbus"]["signals"].append(
            {"name": "current", "table": "holding", "address": 6, "type": "float32", "unit": "A"}
        )
    return parse_config(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), environ={})


def machine_points(index: int, machine: str, days: int, end_ms: int) -> Iterator[Point]:
    """One machine's readings (every minute, all signals in one point, as a poll gives them),
    its utilization minutes with their hourly and daily sums, and its health counters."""
    rng = random.Random(index)
    start = NOW_MS - days * DAY_MS
    trouble = NOW_MS - 10 * MINUTE_MS
    strokes = 0
    for t in range(start, end_ms, MINUTE_MS):
        if index == SILENT and t >= NOW_MS - 30 * MINUTE_MS:
            continue
        hour_of_day = (t // HOUR_MS) % 24
        strokes += 8
        fields: dict[str, Any] = {
            "running": True,
            "strokes": strokes,
            "temperature": 50 + 3 * (hour_of_day >= 8) + rng.uniform(-1, 1),
            "vibration": round(3 + rng.uniform(-0.3, 0.3), 1),
            "pressure": 5 + rng.uniform(-0.2, 0.2),
            "current": 12 + rng.uniform(-1, 1),
        }
        if t >= trouble:
            if index == HOT:
                fields["temperature"] = 92 + rng.uniform(-1, 1)
            elif index == SHAKING:
                fields["vibration"] = 8.4
            elif index == LOW_PRESSURE:
                fields["pressure"] = 1.5
            elif index == OVERCURRENT:
                fields["current"] = 31 + rng.uniform(-1, 1)
        yield seed.reading(machine, t, **fields)
    utilization = seed.minutes(machine, start, end_ms, running_s=50, produced=8)
    yield from utilization
    yield from seed.sums(utilization)
    polls = errors = 0
    share = 0.5 if index == FLAKY else 0.01
    owed = 0.0
    for t in range(end_ms - (HEALTH_HOURS * HOUR_MS), end_ms, 10_000):
        polls += 10
        owed += 10 * share
        errors += int(owed)
        owed -= int(owed)
        yield seed.health(machine, t, polls, errors)


async def write_plant(config: Config, days: int, end_ms: int) -> int:
    """Every machine's points through the collector's own InfluxDB sink (which sends the sums
    to the rollup retention policy); the number of points written."""
    from collector.sinks.influxdb import InfluxDBSink

    written = 0
    async with InfluxDBSink.from_config(config.influxdb) as sink:
        batch: list[Point] = []
        for index, machine in enumerate(config.machines, start=1):
            for point in machine_points(index, machine.id, days, end_ms):
                batch.append(point)
                if len(batch) >= BATCH_POINTS:
                    await sink.write(batch)
                    written += len(batch)
                    batch = []
        if batch:
            await sink.write(batch)
            written += len(batch)
    return written


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Latencies:
    """Seconds per request of one endpoint, and how they were answered."""

    seconds: list[float] = field(default_factory=list)
    ok: int = 0
    conflict: int = 0
    errors: int = 0
    ok_seconds: list[float] = field(default_factory=list)


@dataclass
class MaintenanceMeasurement:
    machines: int
    days: int
    rules: int = 0
    points_written: int = 0
    write_s: float = 0.0
    cold_s: float = 0.0
    warm_s: list[float] = field(default_factory=list)
    verdicts: dict[str, int] = field(default_factory=dict)
    fired: dict[str, list[str]] = field(default_factory=dict)
    findings_per_cycle: int = 0
    clients: int = 0
    seconds: float = 0.0
    tickets: int = 0
    endpoints: dict[str, Latencies] = field(default_factory=dict)
    api_problem: str = ""
    load: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)

    def note_load(self, when: str) -> None:
        self.load.append((when, os.getloadavg()))


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (what is reported as p50/p95/p99)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def time_cycles(config: Config, cycles: int, m: MaintenanceMeasurement) -> None:
    """A cold cycle (a fresh baseline cache) at NOW_MS, then `cycles` warm ones a minute apart,
    over one InfluxDB client, as the maintenance service runs them."""
    from collector.influxql import InfluxQL
    from maintenance.rules import BaselineCache, evaluate

    machines = [machine.id for machine in config.machines]
    # Most machines were serviced 10 days ago (115,200 strokes since); every tenth counts from
    # its first data (161,280 strokes: past the strokes meter's 150,000).
    served = {
        (machine, rule): NOW_MS - 10 * DAY_MS
        for n, machine in enumerate(machines)
        if n % 10 != 0
        for rule in ("oil", "strokes")
    }

    def last_service(machine: str, rule: str) -> int | None:
        return served.get((machine, rule))

    cache = BaselineCache()
    with InfluxQL.from_config(config.influxdb, timeout=120) as db:
        for cycle in range(cycles + 1):
            began = time.perf_counter()
            findings = evaluate(
                db, config, NOW_MS + cycle * MINUTE_MS, last_service=last_service, baselines=cache
            )
            took = time.perf_counter() - began
            if cycle == 0:
                m.cold_s = took
            else:
                m.warm_s.append(took)
    m.findings_per_cycle = len(findings)
    m.verdicts, m.fired = {}, {}
    for finding in findings:
        m.verdicts[finding.verdict] = m.verdicts.get(finding.verdict, 0) + 1
        if finding.verdict == "fire":
            m.fired.setdefault(finding.rule, []).append(finding.machine)


async def drive(
    url: str, ticket_ids: list[int], clients: int, seconds: float
) -> dict[str, Latencies]:
    """`clients` closed-loop clients, each on a connection of its own, alternating a page of the
    ticket list and an acknowledge of the next ticket (each ticket acknowledged once; once all
    are, the acknowledges answer 409)."""
    lists, acks = Latencies(), Latencies()
    order = list(ticket_ids)
    random.Random(5).shuffle(order)
    next_ticket = iter(order * 100)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.perf_counter() + seconds

    def record(into: Latencies, status: int, took: float) -> None:
        into.seconds.append(took)
        if 200 <= status < 300:
            into.ok += 1
            into.ok_seconds.append(took)
        elif status == 409:
            into.conflict += 1
        else:
            into.errors += 1

    async def client() -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=30, limits=limits
        ) as http:
            while time.perf_counter() < deadline:
                for into, method, path in (
                    (lists, "GET", "/api/tickets?limit=50"),
                    (acks, "POST", f"/api/tickets/{next(next_ticket)}/acknowledge"),
                ):
                    began = time.perf_counter()
                    try:
                        status = (await http.request(method, path)).status_code
                    except httpx.HTTPError:
                        status = 0
                    record(into, status, time.perf_counter() - began)

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"GET /api/tickets?limit=50": lists, "POST /api/tickets/{id}/acknowledge": acks}


def _free_port() -> int:
    from tests.services import free_port

    return free_port()


def time_api(workdir: Path, m: MaintenanceMeasurement, *, tickets: int, progress: Any) -> None:
    """The web app in a process of its own (this one's clients would otherwise share its GIL),
    then the clients against it."""
    port = _free_port()
    log_path = workdir / "web.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "serve",
                "--workdir",
                str(workdir),
                "--port",
                str(port),
                "--tickets",
                str(tickets),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith(b'{"ready"'):
            server.wait(10)
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("the web app did not start:\n" + "\n".join(tail))
        ids = json.loads(line)["tickets"]
        m.tickets = len(ids)
        progress(f"   {len(ids)} tickets; {m.clients} clients for {m.seconds:g} s")
        m.note_load("before the API run")
        m.endpoints = asyncio.run(drive(f"http://127.0.0.1:{port}", ids, m.clients, m.seconds))
        m.note_load("after the API run")
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if server.stdout is not None:
            server.stdout.close()


def run_maintenance(
    influx_url: str,
    *,
    machines: int = 50,
    days: int = 14,
    cycles: int = 10,
    clients: int = 20,
    seconds: float = 20.0,
    tickets: int = 500,
    progress: Callable[[str], None] = print,
) -> MaintenanceMeasurement:
    """Write the plant's days, time the rule cycles, then the ticket API."""
    database = "maintenance_bench"
    config = plant_config(influx_url, database, machines)
    m = MaintenanceMeasurement(machines, days, rules=len(config.maintenance.rules))
    m.clients, m.seconds = clients, seconds
    m.note_load("start")
    progress(f"== maintenance: writing {machines} machines × {days} days of minute data")
    began = time.monotonic()
    m.points_written = asyncio.run(write_plant(config, days, NOW_MS + (cycles + 1) * MINUTE_MS))
    m.write_s = time.monotonic() - began
    progress(f"   {m.points_written:,} points in {m.write_s:.0f} s")
    m.note_load("before the rule cycles")
    time_cycles(config, cycles, m)
    progress(
        f"   rules: cold {m.cold_s:.2f} s, warm median {statistics.median(m.warm_s):.2f} s, "
        f"p95 {percentile(m.warm_s, 0.95):.2f} s"
    )
    with tempfile.TemporaryDirectory(prefix="aguante-maintenance-web-") as workdir:
        time_api(Path(workdir), m, tickets=tickets, progress=progress)
    for name, lat in m.endpoints.items():
        progress(
            f"   {name}: {len(lat.seconds)} requests, "
            f"p95 {percentile(lat.seconds, 0.95) * 1000:.0f} ms, {lat.errors} errors"
        )
    return m


# -- the web app's process -----------------------------------------------------------------------


def web_config(machines: int) -> Config:
    plant = {
        "factory": "bench",
        "timezone": seed.TIMEZONE,
        "language": "es",
        "sectors": [{"id": s} for s in SECTORS],
        "machines": [
            {"id": f"m{n:02d}", "sector": SECTORS[n % len(SECTORS)]} for n in range(machines)
        ],
        "maintenance": {
            "crews": [{"id": "mantenimiento", "sectors": [], "notify": ["celulares"]}],
            "notifications": [
                {"type": "webhook", "id": "celulares", "url": "http://127.0.0.1:9/hook"}
            ],
        },
    }
    return parse_config(yaml.safe_dump(plant, allow_unicode=True), environ={})


def seed_tickets(store: Any, config: Config, count: int, now_ms: int) -> list[int]:
    """`count` open tickets, one per machine and rule, each with the readings that raised it."""
    from maintenance.model import Finding, Reading

    ids = []
    rule_ids = [rule["id"] for rule in rules([])]
    pairs = [(machine, rule) for rule in rule_ids for machine in config.machines]
    for n in range(count):
        machine, rule = pairs[n % len(pairs)]
        at = now_ms - (count - n) * MINUTE_MS
        readings = tuple(Reading(at - k * MINUTE_MS, "temperature", 90.0 + k) for k in range(5))
        name = rule if n < len(pairs) else f"{rule}-{n // len(pairs)}"
        event = store.apply(
            Finding(name, machine.id, "fire", at, {"value": 91.5}, readings),
            sector=machine.sector,
            severity="warning",
            crew="mantenimiento",
            title=f"{machine.id}: {rule} 91,5",
            description="Más de 85 °C durante 5 min",
            reopen_window_ms=DAY_MS,
            now_ms=at,
        )
        assert event is not None
        ids.append(event.ticket.id)
    return ids


async def serve(workdir: Path, port: int, tickets: int) -> None:
    import uvicorn

    from collector.influxql import InfluxQL
    from collector.sinks.memory import MemorySink
    from maintenance.service import TicketPublisher
    from maintenance.store import TicketStore
    from maintenance.web import create_app

    config = web_config(50)
    store = TicketStore(f"sqlite:///{workdir / 'tickets.db'}")
    try:
        ids = seed_tickets(store, config, tickets, round(time.time() * 1000))
        sink = MemorySink()
        publisher = TicketPublisher(config, store, sink, base_url="http://plant.test")
        nothing = {"results": [{"statement_id": 0}]}
        app = create_app(
            config,
            store,
            publisher,
            db_factory=lambda: InfluxQL(
                "http://influx.test",
                "aguante",
                transport=httpx.MockTransport(lambda request: httpx.Response(200, json=nothing)),
            ),
            sink=sink,
            tokens={TOKEN: ("Bench", "mantenimiento")},
            secret_key=SECRET,
        )
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        async with sink:
            serving = asyncio.create_task(server.serve())
            while not server.started:
                if serving.done():
                    await serving  # raises what stopped it
                    return
                await asyncio.sleep(0.05)
            print(json.dumps({"ready": port, "tickets": ids}), flush=True)
            await serving
    finally:
        store.close()


# -- the report ----------------------------------------------------------------------------------


def report_lines(m: MaintenanceMeasurement) -> list[str]:
    warm = m.warm_s
    warm_p95 = percentile(warm, 0.95)
    cycle_verdict = "PASS" if warm_p95 < CYCLE_TARGET_S else "**FAIL**"
    verdicts = ", ".join(f"{count} {verdict}" for verdict, count in sorted(m.verdicts.items()))
    out = [
        "## Maintenance: rule cycles and the ticket API",
        "",
        f"{m.machines} machines × {m.rules} rules over {m.days} days of stored minute data "
        f"({m.points_written:,} points written through the collector's InfluxDB sink in "
        f"{m.write_s:.0f} s). Targets: a warm cycle's p95 under {CYCLE_TARGET_S:g} s (10 % of the "
        f"{INTERVAL_S:g} s interval); each API endpoint's p95 under {API_TARGET_S * 1000:.0f} ms "
        f"with {m.clients} concurrent clients.",
        "",
        "| rule cycle | runs | median s | p95 s | max s | verdict |",
        "|---|---:|---:|---:|---:|---|",
        f"| first (cold drift baselines) | 1 | {m.cold_s:.2f} | {m.cold_s:.2f} | {m.cold_s:.2f} "
        f"| {'PASS' if m.cold_s < INTERVAL_S else '**FAIL**'} (inside the interval) |",
        f"| warm | {len(warm)} | {statistics.median(warm):.2f} | {warm_p95:.2f} | "
        f"{max(warm):.2f} | {cycle_verdict} |",
        "",
        f"Each cycle gave {m.findings_per_cycle} findings (last cycle: {verdicts}; fired: "
        + ", ".join(f"{rule} on {', '.join(ids)}" for rule, ids in sorted(m.fired.items()))
        + ").",
        "",
        "| endpoint | requests | 2xx | 409 | errors | p50 ms | p95 ms | p99 ms | p95 of 2xx ms "
        "| verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, lat in m.endpoints.items():
        p95 = percentile(lat.seconds, 0.95)
        ok = lat.errors == 0 and p95 < API_TARGET_S
        out.append(
            f"| `{name}` | {len(lat.seconds):,} | {lat.ok:,} | {lat.conflict:,} | {lat.errors} | "
            f"{percentile(lat.seconds, 0.50) * 1000:.0f} | {p95 * 1000:.0f} | "
            f"{percentile(lat.seconds, 0.99) * 1000:.0f} | "
            f"{percentile(lat.ok_seconds, 0.95) * 1000:.0f} | "
            f"{'PASS' if ok else '**FAIL**'} |"
        )
    total = sum(len(lat.seconds) for lat in m.endpoints.values())
    load = "; ".join(f"{when} {a:.2f} {b:.2f} {c:.2f}" for when, (a, b, c) in m.load)
    out += [
        "",
        f"{total:,} requests in {m.seconds:g} s ({total / m.seconds:,.0f}/s) over {m.tickets} "
        f"tickets. Load average (1, 5, 15 min): {load}.",
        "",
        "### How to read the maintenance tables",
        "",
        "A rule cycle is `maintenance.rules.evaluate` — what `aguante maintenance` runs every "
        "`maintenance.interval` — for every machine and rule, timed from the call to the "
        "findings, over one InfluxDB client. The data is what a collector stores: a `reading` "
        "point a minute per machine with temperature, vibration, pressure, current, running and "
        "strokes; `utilization` minutes with their `utilization_1h`/`utilization_1d` sums in the "
        "`aguante_rollups` retention policy; `collector` health counters every 10 s for the last "
        f"{HEALTH_HOURS} hours. Six machines misbehave (hot, shaking, low pressure, overcurrent, "
        "silent, Modbus errors) so that rules fire. The rules: four thresholds, a rate, a drift "
        "of temperature (the default 14-day baseline), meters of run hours/days and of cycles "
        "(all but every tenth machine serviced 10 days ago), offline, error rate. The first "
        "cycle reads the drift baselines whole; the warm ones, a minute apart, read only the new "
        "hour (if any) from the cache.",
        "",
        "The API rows: the web app (`maintenance.web.create_app`, SQLite ticket store, the real "
        "`TicketPublisher` over an in-memory sink, a webhook notice queued per event) served by "
        "uvicorn in a process of its own; the clients, closed loops each on one keep-alive "
        "connection in the benchmark's process, alternate `GET /api/tickets?limit=50` and an "
        "acknowledge of the next ticket with a crew's bearer token. Each ticket is acknowledged "
        "once; later acknowledges answer 409 (served, counted apart). Times are measured by the "
        "clients, so they include the client's own queueing: server and clients share the "
        "machine's cores (with whatever else runs: see the load average).",
        "",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    from tests.services import InfluxDB

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command")
    serving = sub.add_parser("serve", help="(internal) the web app for the API run")
    serving.add_argument("--workdir", type=Path, required=True)
    serving.add_argument("--port", type=int, required=True)
    serving.add_argument("--tickets", type=int, default=500)
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tickets", type=int, default=500)
    args = parser.parse_args(argv)
    if args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.workdir, args.port, args.tickets))
        return 0
    started = time.time()
    with (
        tempfile.TemporaryDirectory(prefix="aguante-maintenance-") as workdir,
        InfluxDB(Path(workdir) / "influxdb") as influx,
    ):
        m = run_maintenance(
            influx.url,
            machines=args.machines,
            days=args.days,
            cycles=args.cycles,
            clients=args.clients,
            seconds=args.seconds,
            tickets=args.tickets,
        )
    lines = report_lines(m)
    lines[1:1] = ["", standalone_note(started, argv)]
    print("\n".join(lines))
    return 0


def standalone_note(started: float, argv: list[str] | None) -> str:
    """When, where and how a standalone run was made (`make bench` says it in its header)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    args = sys.argv[1:] if argv is None else argv
    return (
        f"Standalone run: {dt.datetime.fromtimestamp(started, dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{time.time() - started:.0f} s; {cpu}, {os.cpu_count()} cores, Linux "
        f"{platform.release()}, Python {platform.python_version()}; "
        f"`{' '.join(['.venv/bin/python benchmarks/maintenance_bench.py', *args])}`."
    )


if __name__ == "__main__":
    sys.exit(main())
