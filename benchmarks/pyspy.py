"""Where a Python process's CPU goes: py-spy attached for some seconds, its samples summarized
by function and by library. Used by the scale run and by the polled-devices shapes."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

AREAS = (
    ("pymodbus", "pymodbus"),
    ("asyncio", "asyncio/"),
    ("httpx/httpcore", "http"),
    ("collector", "collector/"),
    ("pydantic", "pydantic"),
)
RATE = 100  # samples a second, by default


@dataclass
class Profile:
    samples: int = 0  # busy samples (idle waits left out)
    top: list[tuple[str, float, float]] = field(default_factory=list)  # fn, self %, total %
    by_area: list[tuple[str, float]] = field(default_factory=list)  # area, self %
    seconds: float = 0.0  # how long it was sampled


def py_spy() -> str | None:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    return found or shutil.which("py-spy")


def _area(frame: str) -> str:
    where = frame[frame.rfind("(") + 1 :]
    for name, needle in AREAS:
        if needle in where:
            return name
    return "other (stdlib, C calls)" if where.endswith(")") else "other"


def summarize_profile(
    raw: str, top: int = 15
) -> tuple[int, list[tuple[str, float, float]], list[tuple[str, float]]]:
    """From py-spy's collapsed stacks ("frame;frame;… count", idle excluded): samples, the `top`
    functions by self time (function, self %, total %), and self time by library area."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return 0, [], []
    table = [(f, 100 * n / total, 100 * inclusive[f] / total) for f, n in own.most_common(top)]
    by_area = [(a, 100 * n / total) for a, n in areas.most_common()]
    return total, table, by_area


def record_profile(
    pid: int, seconds: float, output: Path, top: int = 15, rate: int = RATE
) -> Profile | str:
    """py-spy on process `pid` for `seconds`, `rate` samples a second: its summary, or why
    there is none. A process busy 1 % of the time gives `rate` × `seconds` / 100 samples."""
    spy = py_spy()
    if spy is None:
        return "py-spy is not installed: no profile"
    duration = max(1, math.ceil(seconds))  # py-spy takes whole seconds
    command = [spy, "record", "--pid", str(pid), "--duration", str(duration)]
    command += ["--rate", str(rate), "--format", "raw", "--nolineno", "--nonblocking"]
    command += ["--output", str(output)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        return f"py-spy did not finish within {duration + 60} s: no profile"
    if result.returncode != 0 or not output.exists():
        return f"py-spy failed: {result.stderr.strip().splitlines()[-1:]}"
    return Profile(*summarize_profile(output.read_text(), top), seconds=duration)


def area_summary(profile: Profile) -> str:
    """ "collector 48 %, asyncio 25 %, …": self time by library, share of busy samples."""
    return ", ".join(f"{area} {share:.0f} %" for area, share in profile.by_area)
