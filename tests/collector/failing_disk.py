"""A delivery buffer in memory whose disk fails on demand."""

from __future__ import annotations

from collections.abc import Sequence

from collector.delivery import MemoryBuffer


class FailingDisk(MemoryBuffer):
    """A buffer whose disk fails on demand: `fail_take` / `fail_put` reads or writes raise."""

    def __init__(self) -> None:
        super().__init__(max_points=10_000)
        self.fail_take = 0
        self.fail_put = False

    def take(self, max_n: int) -> list[str]:
        if self.fail_take:
            self.fail_take -= 1
            raise OSError(5, "Input/output error")
        return super().take(max_n)

    def put(self, lines: Sequence[str]) -> int:
        if self.fail_put:
            raise OSError(28, "No space left on device")
        return super().put(lines)
