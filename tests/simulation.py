"""Helpers shared by tests that run the simulators: free port ranges, private pty paths."""

from __future__ import annotations

import datetime as dt
import random
import socket
from pathlib import Path

from simulators import Scenario

# Monday 3 March 2025, 09:00 in Buenos Aires: inside the morning shift, before the 10:00 break.
MONDAY_MORNING = dt.datetime(2025, 3, 3, 9, 0)


def free_port_base(count: int) -> int:
    """A port P with P-1 .. P+count-1 all free now (P-1 is for the control endpoint)."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        sockets = []
        try:
            for port in range(base - 1, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports found")


def with_pty_dir(scenario: Scenario, folder: Path) -> Scenario:
    """The scenario with its pty symlinks moved into `folder`, so tests can run in parallel."""
    data = scenario.model_dump()
    for device in data["devices"]:
        if device["path"] is not None:
            device["path"] = str(folder / Path(device["path"]).name)
    return Scenario.model_validate(data)
