"""The durable buffer through a long outage: what a reading costs to keep, how much memory the
collector holds however long InfluxDB is away, and how fast the backlog reads back from disk.

Run by `benchmarks/run.py` (shape `buffer`), or alone:
    .venv/bin/python benchmarks/buffer_bench.py [--lines 10000000]

The buffer runs in a child process of its own, so its memory is measured alone: the default
(`influxdb.max_buffered_points`, 100,000 lines cached) against a backlog twenty times larger.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BUFFER_SHAPE = "buffer"
ROOT = Path(__file__).resolve().parent.parent
# A `reading` line of the example plant: its size is the median of the soak's (about 170 bytes).
LINE = (
    "reading,factory=cooperativa-metalurgica,machine=press-{n},sector=prensas "
    "strokes={n}i,pressure=131.25,oil_temp=48.5,running=true,motor_current=12.75 {t}"
)
CACHE_LINES = 100_000  # the default influxdb.max_buffered_points
BATCH = 5000  # the default influxdb.batch_size


@dataclass(frozen=True)
class BufferMeasurement:
    lines: int
    line_bytes: int
    disk_bytes: int
    put_cpu_us: float  # CPU per line taken into the buffer, µs
    rss_start_mib: float
    rss_outage_peak_mib: float  # after every line of the outage is in
    rss_drain_peak_mib: float
    drain_lines_per_s: float  # read back from disk and acknowledged, no sink
    reopen_s: float  # opening the buffer with the whole backlog (checks every record)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(lines: int, directory: Path) -> BufferMeasurement:
    """In this process: fill a buffer as a collector would during an outage, then drain it."""
    from collector.buffer import DiskBuffer

    start_rss = _rss_mib()
    options = {"cache_lines": CACHE_LINES, "max_bytes": 64 * 1024**3, "fsync_interval": 1.0}
    buffer = DiskBuffer(directory, **options)  # type: ignore[arg-type]
    peak = start_rss
    t0 = 1_764_000_000_000
    taken = buffer.take(BATCH)  # the batch the delivery holds while InfluxDB is away
    cpu = _cpu()
    synced = time.monotonic()
    for n in range(lines):
        buffer.put([LINE.format(n=n % 50, t=t0 + n)])
        if n % 20_000 == 0:
            peak = max(peak, _rss_mib())
            if time.monotonic() - synced >= 1.0:  # the delivery's fsync, once a second
                buffer.sync()
                synced = time.monotonic()
    put_cpu = (_cpu() - cpu) / lines * 1e6
    outage_peak = max(peak, _rss_mib())
    disk = buffer.size_bytes
    buffer.close()
    del taken

    opened = time.monotonic()
    buffer = DiskBuffer(directory, **options)  # type: ignore[arg-type]
    reopen = time.monotonic() - opened
    drain_peak = _rss_mib()
    started, drained = time.monotonic(), 0
    while batch := buffer.take(BATCH):
        drained += len(batch)
        buffer.ack()
        if drained % 200_000 < BATCH:
            drain_peak = max(drain_peak, _rss_mib())
    seconds = time.monotonic() - started
    buffer.close()
    return BufferMeasurement(
        lines=lines,
        line_bytes=len(LINE.format(n=7, t=t0)),
        disk_bytes=disk,
        put_cpu_us=put_cpu,
        rss_start_mib=start_rss,
        rss_outage_peak_mib=outage_peak,
        rss_drain_peak_mib=drain_peak,
        drain_lines_per_s=drained / seconds if seconds > 0 else 0.0,
        reopen_s=reopen,
    )


def run_buffer(lines: int = 10_000_000) -> BufferMeasurement:
    """The measurement in a child process of its own."""
    with tempfile.TemporaryDirectory(prefix="aguante-buffer-bench-") as work:
        result = subprocess.run(
            [sys.executable, __file__, "--child", "--lines", str(lines), "--dir", work],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    return BufferMeasurement(**json.loads(result.stdout.splitlines()[-1]))


def report_lines(m: BufferMeasurement) -> list[str]:
    hours = m.lines / (73 * 3600)  # the soak's live rate of the example plant, lines/s
    span = f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.0f} hours"
    bounded = m.rss_outage_peak_mib - m.rss_start_mib
    return [
        "## Durable buffer through a long outage",
        "",
        f"{m.lines:,} lines of {m.line_bytes} bytes put one at a time, as readings are taken "
        f"while InfluxDB is away (about {span} of the example plant at the soak's 73 "
        f"lines/s), with the default {CACHE_LINES:,} lines cached in memory and an fsync a "
        "second; then the buffer is opened again (every record checked) and read back in "
        f"batches of {BATCH:,}, acknowledged without a sink. In a process of its own.",
        "",
        "| | |",
        "|---|---:|",
        f"| on disk, MiB | {m.disk_bytes / 1024**2:,.0f} |",
        f"| CPU per line put, µs | {m.put_cpu_us:.1f} |",
        f"| RSS at start, MiB | {m.rss_start_mib:.1f} |",
        f"| RSS with the whole backlog in, MiB | {m.rss_outage_peak_mib:.1f} |",
        f"| RSS while draining, MiB (peak) | {m.rss_drain_peak_mib:.1f} |",
        f"| opening with the backlog, s | {m.reopen_s:.1f} |",
        f"| read back and acknowledged, lines/s | {m.drain_lines_per_s:,.0f} |",
        "",
        f"- {'PASS' if bounded < 64 else '**FAIL**'}: memory bounded by the cache, not the "
        f"backlog: +{bounded:.0f} MiB for {m.disk_bytes / 1024**2:,.0f} MiB on disk",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(ROOT))
        measured = measure(args.lines, args.dir / "buffer")
        print(json.dumps(measured.__dict__))
        return 0
    print("\n".join(report_lines(run_buffer(args.lines))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
