"""Waiting in tests for something the code under test gives no event for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(
    check: Callable[[], object], within: float = 15.0, every: float = 0.02
) -> None:
    """Until `check()` is true, asked every `every` seconds (the condition lives in InfluxDB,
    another thread or the code under test's state); TimeoutError after `within` seconds. A check
    that queries a server blocks the event loop while it waits: ask less often (0.1)."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - there is no event to wait for
            await asyncio.sleep(every)
