"""Waiting in tests for something the code under test gives no event for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(check: Callable[[], object], within: float = 15.0) -> None:
    """Until `check()` is true (polled: the condition lives in InfluxDB, another thread or the
    code under test's state); TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - there is no event to wait for
            await asyncio.sleep(0.02)
