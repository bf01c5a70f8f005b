"""Log a recurring problem once in a while, with how often it happened, never once per time."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Occasional"]


class Occasional:
    """Counts a problem each time it happens; `happened()` says whether to log it now: the first
    time, then at most once every `every` seconds."""

    def __init__(self, every: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.count = 0
        self._clock = clock
        self._logged: float | None = None

    def happened(self) -> bool:
        self.count += 1
        now = self._clock()
        if self._logged is not None and now - self._logged < self.every:
            return False
        self._logged = now
        return True
