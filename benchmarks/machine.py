"""What machine a benchmark ran on, for the results file: CPU, cores, memory, versions."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path


def machine_description() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    try:
        influxd = subprocess.run(
            ["influxd", "version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        influxd = "?"
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "pymodbus": version("pymodbus"),
        "httpx": version("httpx"),
        "aguante": version("aguante"),
        "influxd": influxd,
    }


def machine_line() -> str:
    """CPU, cores, memory and kernel in one line."""
    info = machine_description()
    return f"{info['cpu']}, {info['cores']} cores, {info['ram']} RAM, {info['kernel']}"
