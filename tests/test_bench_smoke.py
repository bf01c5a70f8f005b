"""`make bench` still runs: its Modbus part at a toy size, in seconds, producing numbers for each
contender. Nothing is asserted about speed — that is the benchmark's own report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def test_the_modbus_benchmark_runs_and_reports_numbers_for_each_contender(
    tmp_path: Path,
) -> None:
    report = tmp_path / "RESULTS.md"
    argv = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--shapes", "plant",
        "--devices", "2",
        "--seconds", "3",
        "--warmup", "4",
        "--contenders", "plain loop,aguante,bare client,bare pipelined",
        "--rounds", "2",
        "--profile-seconds", "2",
        "--output", str(report),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    row = next(line for line in text.splitlines() if "CPU s per 1,000 values stored" in line)
    assert len(re.findall(r"\*\*\d+\.\d+\*\*", row)) == 4, row
    each = next(line for line in text.splitlines() if "of each round" in line)
    assert len(re.findall(r"\d+\.\d+ / \d+\.\d+", each)) == 4, each  # two rounds each
    requests = next(line for line in text.splitlines() if "Modbus requests per poll" in line)
    assert re.findall(r"\| (\d+\.\d+)", requests) == ["1.00"] * 4, requests
    for contender in ("plain loop", "aguante", "bare client", "bare pipelined"):
        assert f"PASS: {contender}: every point read is stored" in text


def test_the_network_benchmark_runs_and_loses_nothing(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        str(ROOT / "benchmarks" / "network_bench.py"),
        "--plants", "3",
        "--days", "1",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lost = next(line for line in done.stdout.splitlines() if "**lost**" in line)
    assert lost.rstrip().endswith("| **0** |"), lost
    table = done.stdout.split("| dashboard panel |", 1)[1].splitlines()[2:]
    panels = [line for line in table if line.startswith("| ")]
    assert len(panels) == 5, done.stdout  # every panel of the network's dashboard was timed


def test_the_profiles_and_what_the_node_red_target_asks_are_reported() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pyspy
    import run

    shape = run.SHAPES["plant"]

    def measured(name: str, cpu_s: float, profile: pyspy.Profile | None) -> run.Measurement:
        return run.Measurement(name, shape, cpu_s=cpu_s, values_window=1000, profile=profile)

    top = [("_poll (collector/sources/modbus.py)", 30.0, 60.0)]
    results = [
        measured("plain loop", 0.004, pyspy.Profile(200, [], [("pymodbus", 55.0)], 20.0)),
        measured("aguante", 0.004, pyspy.Profile(300, top, [("collector", 40.0)], 20.0)),
        measured("Node-RED", 0.02, None),
        measured("bare client", 0.0025, None),
    ]
    text = "\n".join(run.profile_lines(results))
    assert "plain loop (200 samples): pymodbus 55 %" in text
    assert "aguante (300 samples): collector 40 %" in text
    assert "| `_poll (collector/sources/modbus.py)` | 30.0 | 60.0 |" in text
    assert run.profile_lines(results[2:]) == []  # no Python contender profiled: nothing to show
    target = run.node_red_target(results)
    assert target.startswith("Node-RED spent 5.0× the plain loop's CPU per value")
    assert "means 0.50× the plain loop's" in target
    assert "aguante 1.00×, 5.0× less than Node-RED" in target
    assert "bare client 0.62×, 8.0× less than Node-RED" in target
    assert run.node_red_target(results[1:]) == ""  # no plain loop: nothing to compare with
