"""The sink seam: a sink writes one batch of points or raises one of these errors.

A sink neither buffers nor retries; `collector.delivery` does both in front of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from collector.schema import Point

__all__ = ["AuthWriteError", "RejectedWriteError", "RetryableWriteError", "Sink", "WriteError"]


class WriteError(Exception):
    """A batch was not (entirely) written. The message names the endpoint and the reason."""


class RetryableWriteError(WriteError):
    """Nothing can be assumed written (network error, timeout, 5xx, 429): send it all again."""


class AuthWriteError(WriteError):
    """The server refuses us, not the data (401, 403, database not found): hold the data, retry
    slowly and tell the operator loudly; a person has to fix credentials or create the database."""


class RejectedWriteError(WriteError):
    """Some lines can never be written (parse error, field type conflict, beyond retention).

    Every other point of the batch WAS written. `lines` are the refused lines, `reasons` the
    server's reason for each, `reason` a summary.
    """

    def __init__(self, message: str, *, lines: Sequence[str], reasons: Sequence[str]) -> None:
        if len(lines) != len(reasons):
            raise ValueError("RejectedWriteError needs one reason per line")
        super().__init__(message)
        self.lines = tuple(lines)
        self.reasons = tuple(reasons)
        self.reason = reasons[0] if reasons else ""


class Sink(Protocol):
    """Where delivered points go. Used as `async with sink: await sink.write(points)`.

    `write_lines` takes lines already encoded by `collector.lineprotocol.encode_point`, as the
    buffer keeps them; `write` encodes points first (a point no server can store is refused with
    `RejectedWriteError`, its `repr` as the line)."""

    async def write(self, points: Sequence[Point]) -> None: ...

    async def write_lines(self, lines: Sequence[str]) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
