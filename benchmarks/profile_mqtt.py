"""Where aguante's CPU goes on MQTT messages: `aguante collect` under cProfile, every thread
(the event loop's and paho's network thread), on one burst of the MQTT benchmark.

    .venv/bin/python benchmarks/profile_mqtt.py [--contender aguante|plain]
        [--shape mqtt-tasmota-burst] [--burst 20000] [--top 25] [--output FILE.prof]

Starts its own influxd and Mosquitto (tests/services.py), runs the burst through mqtt_bench's
measurement with the collector wrapped by this file (`--child CONFIG PROF`), then prints the
functions with the most own CPU time (time.thread_time: waiting in select is not counted), per
thread and in all, as shares of the profiled CPU.
cProfile slows Python calls down unevenly (many small calls suffer most): read shares, not
seconds, and the benchmark's CPU figures without it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import marshal
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mqtt_bench
from mqtt_bench import MQTT_SHAPES, AguanteMqtt, MqttTarget, PlainSubscriber

from tests.services import InfluxDB, Mosquitto


class ProfiledAguante(AguanteMqtt):
    def __init__(self, prof_path: Path) -> None:
        self.prof_path = prof_path

    def command(self, target: MqttTarget) -> list[str]:
        config = super().command(target)[-1]
        return [sys.executable, __file__, "--child", "aguante", config, str(self.prof_path)]


class ProfiledPlain(PlainSubscriber):
    def __init__(self, prof_path: Path) -> None:
        self.prof_path = prof_path

    def command(self, target: MqttTarget) -> list[str]:
        spec = super().command(target)[-1]
        return [sys.executable, __file__, "--child", "plain", spec, str(self.prof_path)]


def child(kind: str, config: str, prof_path: Path) -> int:
    """`aguante collect CONFIG` (or plain_mqtt.py SPEC) with every thread profiled in thread
    CPU time; each thread's stats to PROF.<n>."""
    profiles: list[tuple[str, cProfile.Profile]] = []
    original = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)
        profiles.append((self.name, profile))
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    def aguante() -> int:
        from collector.cli import main

        return main(["collect", config])

    def plain() -> int:
        import plain_mqtt

        sys.argv = ["plain_mqtt.py", config]
        return plain_mqtt.main()

    main = cProfile.Profile(time.thread_time)
    profiles.insert(0, ("MainThread (event loop)", main))
    main.enable()
    try:
        code = aguante() if kind == "aguante" else plain()
    finally:
        main.disable()
        for n, (name, profile) in enumerate(profiles):
            profile.create_stats()
            stats: Any = profile.stats
            Path(f"{prof_path}.{n}").write_bytes(marshal.dumps(stats))
            Path(f"{prof_path}.{n}.name").write_text(name)
    return code


def report(prof_path: Path, top: int) -> str:
    parts: list[tuple[str, pstats.Stats]] = []
    n = 0
    while Path(f"{prof_path}.{n}").exists():
        name = Path(f"{prof_path}.{n}.name").read_text()
        stats = pstats.Stats(f"{prof_path}.{n}")
        parts.append((name, stats))
        n += 1
    if not parts:
        return "no profile written"
    merged = pstats.Stats(f"{prof_path}.0")
    for n in range(1, len(parts)):
        merged.add(f"{prof_path}.{n}")
    merged.dump_stats(str(prof_path))
    out = io.StringIO()
    total_all: float = merged.total_tt  # type: ignore[attr-defined]
    for name, stats in [*parts, ("all threads", merged)]:
        total: float = stats.total_tt  # type: ignore[attr-defined]
        if total < 0.01 * total_all:
            continue
        out.write(f"\n== {name}: {total:.2f} s profiled ({total / total_all:.0%} of all)\n")
        rows = sorted(
            stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda item: item[1][2],
            reverse=True,
        )
        out.write(f"{'own %':>6} {'cum %':>6} {'calls':>9}  function\n")
        for (file, line, function), (_, calls, own, cumulative, _) in rows[:top]:
            where = file.replace(str(mqtt_bench.ROOT) + "/", "")
            where = where.split("site-packages/")[-1]
            out.write(
                f"{own / total:6.1%} {cumulative / total:6.1%} {calls:9,}  "
                f"{function} ({where}:{line})\n"
            )
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # KIND CONFIG PROF
    parser.add_argument("--contender", choices=["aguante", "plain"], default="aguante")
    parser.add_argument("--shape", default="mqtt-tasmota-burst", choices=list(MQTT_SHAPES))
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="for a plant-rate shape")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--output", type=Path, help="merged pstats file to keep")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], Path(args.child[2]))
    shape = MQTT_SHAPES[args.shape]
    with tempfile.TemporaryDirectory(prefix="aguante-profile-") as tmp:
        workdir = Path(tmp)
        prof_path = workdir / "aguante.prof"
        with InfluxDB(workdir / "influxdb") as influx, Mosquitto(workdir / "mosquitto") as broker:
            target = MqttTarget(shape, broker.port, influx.url, "profile", workdir, "bench-profile")
            contender = (ProfiledAguante if args.contender == "aguante" else ProfiledPlain)(
                prof_path
            )
            m = mqtt_bench.measure(
                contender,
                target,
                influx,
                broker,
                run=1,
                seconds=args.seconds,
                burst=args.burst,
            )
        print(
            f"{contender.name} — {shape.title}: {m.stored:,} of {m.published:,} stored, "
            f"{m.cpu_per_1000:.4f} CPU s / 1000 msg under cProfile"
        )
        print(report(prof_path, args.top))
        if args.output:
            args.output.write_bytes(prof_path.read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
