"""A network of 300 plants × 20 machines (issue #11's benchmark): the hourly messages of every
plant for some weeks are published to a Mosquitto broker (one TLS-less connection per plant
sender, QoS 1, in several threads, as `aguante share` does after an outage), stored by
`aguante network run` (a process of its own, measured), then every panel of the network's
dashboard is queried as Grafana would.

    .venv/bin/python benchmarks/network_bench.py [--plants 300] [--machines 20] [--days 28]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from procstat import cpu_seconds, peak_rss_kib  # noqa: E402

from collector.mqtt_publish import BrokerLink, publish_all  # noqa: E402
from network.rollup import CATEGORIES, COUNTS, HOUR_MS, SECONDS  # noqa: E402

NETWORK_SHAPE = "network"
PROCESSES = ("turning", "pressing", "welding", "painting", "assembly", "printing", "baking")
SENDERS = 8  # plants publishing at once
NOW = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)  # a Monday: whole weeks behind it


@dataclass
class NetworkMeasurement:
    plants: int
    machines: int
    days: int
    messages: int = 0
    points: int = 0
    publish_s: float = 0.0
    stored_s: float = 0.0  # from the first publish until every point is queryable
    service_cpu_s: float = 0.0
    service_rss_kib: int = 0
    influxd_cpu_s: float = 0.0
    panel_s: dict[str, list[float]] = field(default_factory=dict)
    panel_rows: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    backlog: int | None = None  # messages the service held at most (its own log says)


def plant_messages(
    plant: str, processes: list[str], machines: int, hours: list[int], rng: random.Random
) -> list[bytes]:
    """One message per hour, as `aguante share` writes it: a group per process of the plant."""
    import json

    per_group = max(1, machines // len(processes))
    bodies = []
    for hour in hours:
        groups = []
        for process in processes:
            planned = float(rng.choice([0, 3600, 3600, 3600]) * per_group)
            running = rng.uniform(0, planned)
            lost = dict.fromkeys(CATEGORIES, 0.0)
            lost[rng.choice(CATEGORIES)] = planned - running
            sums = dict.fromkeys(SECONDS + COUNTS, 0.0)
            sums.update(planned_s=planned, running_s=running, idle_s=planned - running)
            sums.update(off_s=3600.0 * per_group - planned, produced=running / 40, capacity=90.0)
            group = {"group": process, "kind": "process", "machines": per_group, **sums}
            group["lost_s"] = lost
            groups.append(group)
        body = {"v": 1, "plant": plant, "name": None, "hour": hour, "groups": groups}
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return bodies


def run_network(
    *,
    plants: int = 300,
    machines: int = 20,
    days: int = 28,
    progress: Callable[[str], None] = print,
) -> NetworkMeasurement:
    from collector.influxql import InfluxQL
    from dashboards.grafana_query import answer_dashboard
    from network.config import parse_network
    from network.share import partition_of
    from network.view import network_dashboard
    from tests.services import InfluxDB, Mosquitto

    m = NetworkMeasurement(plants, machines, days)
    rng = random.Random(11)
    names = [f"coop-{n:03d}" for n in range(plants)]
    processes = {name: rng.sample(PROCESSES, rng.randint(2, 4)) for name in names}
    end = int(NOW.timestamp() * 1000) // HOUR_MS * HOUR_MS
    hours = list(range(end - days * 24 * HOUR_MS, end, HOUR_MS))
    with tempfile.TemporaryDirectory(prefix="aguante-network-") as folder:
        work = Path(folder)
        # The broker as docs/network.md sets it up: a catch-up of many plants at once is queued
        # for the network service whole (no limit), and sent to it 1,000 at a time.
        settings = {"max_queued_messages": "0", "max_inflight_messages": "1000"}
        with (
            InfluxDB(work / "influxdb") as influx,
            Mosquitto(work / "mosquitto", settings=settings) as broker,
        ):
            influx.create_database("network")
            config_text = yaml.safe_dump(
                {
                    "network": "bench",
                    "timezone": "America/Sao_Paulo",
                    "broker": {"url": broker.url},
                    "influxdb": {"url": influx.url, "database": "network"},
                    "partitions": 8,
                    "plants": [{"id": n, "processes": processes[n]} for n in names],
                }
            )
            (work / "network.yaml").write_text(config_text)
            config = parse_network(config_text, environ={})
            service = subprocess.Popen(
                [str(Path(sys.executable).parent / "aguante"), "network", "run", "network.yaml"],
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=(work / "service.log").open("wb"),
            )
            try:
                time.sleep(3)  # connected and subscribed
                cpu_before = cpu_seconds(service.pid)
                influxd = _influxd_pid(influx)
                influxd_before = cpu_seconds(influxd) if influxd else 0.0
                progress(f"== network: {plants} plants × {days} days of hourly messages")
                started = time.monotonic()

                def send(name: str) -> int:
                    bodies = plant_messages(name, processes[name], machines, hours, rng_for(name))
                    topic = f"aguante/network/{partition_of(name, 8)}/{name}/hourly"
                    link = BrokerLink(broker.url, client_id=f"bench-{name}")
                    for first in range(0, len(bodies), 500):
                        chunk = [(topic, body) for body in bodies[first : first + 500]]
                        publish_all(link, chunk, timeout=120)
                    return len(bodies)

                with concurrent.futures.ThreadPoolExecutor(SENDERS) as pool:
                    m.messages = sum(pool.map(send, names))
                m.publish_s = time.monotonic() - started
                expected = sum(len(processes[n]) for n in names) * len(hours)
                with InfluxQL(influx.url, "network", timeout=120) as db:
                    while True:
                        rows = db.select('SELECT count("planned_s") FROM "plant_hourly"')
                        stored = int(rows[0].rows[0]["count"]) if rows and rows[0].rows else 0
                        if stored >= expected or time.monotonic() - started > 900:
                            break
                        time.sleep(0.5)
                    m.stored_s = time.monotonic() - started
                    m.points = stored
                    m.lost = expected - stored
                    m.service_cpu_s = cpu_seconds(service.pid) - cpu_before
                    m.service_rss_kib = peak_rss_kib(service.pid)
                    if influxd:
                        m.influxd_cpu_s = cpu_seconds(influxd) - influxd_before
                    progress(
                        f"   {m.messages:,} messages ({m.points:,} points) stored in "
                        f"{m.stored_s:.1f} s"
                    )
                    board = network_dashboard(config, "en")
                    now = NOW.astimezone(dt.timezone(dt.timedelta(hours=-3)))
                    for _ in range(3):
                        for panel in board["panels"]:
                            single = {**board, "panels": [panel]}
                            began = time.perf_counter()
                            answers, _problems = answer_dashboard(db, single, now)
                            took = time.perf_counter() - began
                            m.panel_s.setdefault(panel["title"], []).append(took)
                            m.panel_rows[panel["title"]] = sum(
                                len(s.rows) for a in answers for t in a.targets for s in t.series
                            )
            finally:
                service.send_signal(signal.SIGTERM)
                service.wait(30)
            said = re.search(r"(\d+) waiting at most", (work / "service.log").read_text())
            m.backlog = int(said[1]) if said else None
    return m


def rng_for(name: str) -> random.Random:
    return random.Random(name)


def _influxd_pid(influx: object) -> int | None:
    # The test harness keeps its process private; read here only for the CPU figure.
    process = getattr(influx, "_process", None)
    return int(process.pid) if process is not None else None


def report_lines(m: NetworkMeasurement) -> list[str]:
    rate = m.messages / m.stored_s if m.stored_s else 0.0
    points_rate = m.points / m.stored_s if m.stored_s else 0.0
    backlog = f"{m.backlog:,}" if m.backlog is not None else "—"
    out = [
        "## Network of plants",
        "",
        f"{m.plants} plants × {m.machines} machines (2–4 processes each), {m.days} days of "
        "hourly messages per plant published at once by 8 senders (QoS 1, 500 in flight per "
        "connection, as `aguante share` catches up after an outage) to Mosquitto, stored by "
        "`aguante network run` (a process of its own) into InfluxDB; then each panel of the "
        "network's dashboard queried as Grafana queries it over its own time range (three "
        "times; median).",
        "",
        "| | |",
        "|---|---:|",
        f"| messages (plant-hours) / points stored | {m.messages:,} / {m.points:,} |",
        f"| **lost** (points expected − stored) | **{m.lost:,}** |",
        f"| publishing took, s | {m.publish_s:.1f} |",
        f"| all queryable after, s | {m.stored_s:.1f} |",
        f"| **ingest rate, messages/s (points/s)** | **{rate:,.0f} ({points_rate:,.0f})** |",
        f"| network service CPU, s (per 1,000 messages) | {m.service_cpu_s:.1f} "
        f"({1000 * m.service_cpu_s / max(m.messages, 1):.3f}) |",
        f"| network service peak RSS, MiB | {m.service_rss_kib / 1024:.1f} |",
        f"| messages waiting in the service at the most | {backlog} |",
        f"| influxd CPU while storing, s | {m.influxd_cpu_s:.1f} |",
        "",
        "| dashboard panel | median, s | runs, s | rows |",
        "|---|---:|---|---:|",
    ]
    for title, timings in m.panel_s.items():
        runs = " / ".join(f"{t:.2f}" for t in timings)
        out.append(
            f"| {title} | {statistics.median(timings):.2f} | {runs} | {m.panel_rows[title]:,} |"
        )
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--plants", type=int, default=300)
    parser.add_argument("--machines", type=int, default=20)
    parser.add_argument("--days", type=int, default=28)
    args = parser.parse_args(argv)
    m = run_network(plants=args.plants, machines=args.machines, days=args.days)
    print("\n".join(report_lines(m)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
