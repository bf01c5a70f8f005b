"""An in-memory sink for tests: the seam they use instead of patching the InfluxDB client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from collector.lineprotocol import decode_line
from collector.schema import Point
from collector.sinks import RejectedWriteError, WriteError

__all__ = ["MemorySink"]


class MemorySink:
    """Keeps written points in `points` (and each batch in `batches`).

    `fail_next(n, error)` makes the next n writes raise `error` without storing anything;
    `reject` (point → reason or None) refuses single points the way a server would, storing the
    rest; `pause()` makes writes wait until `resume()`, to test slow or hanging servers.
    """

    def __init__(self, *, reject: Callable[[Point], str | None] | None = None) -> None:
        self.points: list[Point] = []
        self.batches: list[list[Point]] = []
        self.attempts = 0
        self.entered = False
        self.exited = False
        self.reject = reject
        self._failures: list[WriteError] = []
        self._open = asyncio.Event()
        self._open.set()

    def __repr__(self) -> str:
        return "MemorySink()"

    def fail_next(self, n: int, error: WriteError) -> None:
        self._failures.extend([error] * n)

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def __aenter__(self) -> Self:
        self.entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.exited = True

    async def write_lines(self, lines: Sequence[str]) -> None:
        """Decoded back into points: what a test compares is what InfluxDB would have stored."""
        await self.write([decode_line(line) for line in lines], lines=lines)

    async def write(self, points: Sequence[Point], *, lines: Sequence[str] | None = None) -> None:
        self.attempts += 1
        await self._open.wait()
        if self._failures:
            raise self._failures.pop(0)
        texts = list(lines) if lines is not None else [repr(p) for p in points]
        refused = [
            (text, reason)
            for point, text in zip(points, texts, strict=True)
            if self.reject and (reason := self.reject(point)) is not None
        ]
        refused_texts = {text for text, _ in refused}
        kept = [p for p, text in zip(points, texts, strict=True) if text not in refused_texts]
        self.batches.append(kept)
        self.points.extend(kept)
        if refused:
            raise RejectedWriteError(
                f"memory sink: refused {len(refused)} of {len(points)} points",
                lines=[text for text, _ in refused],
                reasons=[reason for _, reason in refused],
            )
