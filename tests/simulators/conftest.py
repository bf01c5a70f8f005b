"""Fixtures for the simulator tests: free ports, a metalworks scenario on a private pty path,
and a running simulator pinned to a known Monday morning."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulators import Scenario, Simulator, load_scenario, run_scenario
from tests.simulation import MONDAY_MORNING, free_port_base, with_pty_dir


@pytest.fixture
def port_base() -> int:
    return free_port_base(8)


@pytest.fixture
def metalworks(tmp_path: Path) -> Scenario:
    return with_pty_dir(load_scenario("metalworks"), tmp_path)


@pytest.fixture
async def sim(metalworks: Scenario, port_base: int) -> AsyncIterator[Simulator]:
    """Metalworks at MONDAY_MORNING, frozen so reads are comparable, with the control endpoint."""
    async with run_scenario(
        metalworks,
        port_base=port_base,
        seed=1,
        start=MONDAY_MORNING,
        control_port=port_base - 1,
        frozen=True,
    ) as simulator:
        yield simulator
