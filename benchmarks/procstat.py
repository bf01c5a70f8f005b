"""What a benchmark reads of another process: its CPU time to the nanosecond, its peak RSS."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (exited ones too), so far.

    Read from the process's CPU-time clock (clock_getcpuclockid): nanoseconds, where
    /proc/PID/stat counts in 10 ms ticks — a tick is 5 % of what a collector spends in a
    20-second window at the plant shape. /proc/PID/stat where the clock cannot be read."""
    clock = ctypes.c_int()
    spec = _Timespec()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0 and (
        _libc.clock_gettime(clock, ctypes.byref(spec)) == 0
    ):
        return float(spec.tv_sec + spec.tv_nsec / 1e9)
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a running process, KiB (0 when it has none, e.g. a zombie)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
