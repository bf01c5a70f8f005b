"""Parts made, from a counting register or a pulse input, across wraps and restarts.

A 16-bit stroke counter goes from 65535 to 0; a PLC that restarts starts again from 0; a bad
frame can show a number from nowhere. None of these is negative or absurd production: a wrap
counts the few parts across it, a restart counts what was made since it, and a jump larger than
is plausible counts nothing and is reported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from collector.config import PartCounter, Signal
from collector.schema import FieldValue

__all__ = ["PartTally", "default_wrap"]

log = logging.getLogger(__name__)

_WRAP_BY_TYPE = {"int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}


def default_wrap(counter: PartCounter, signal: object) -> int | None:
    """The bits a counter wraps at: as configured, else from its Modbus type; None if unbounded."""
    if counter.wrap is not None:
        return counter.wrap
    if isinstance(signal, Signal) and signal.scale == 1.0 and signal.offset == 0.0:
        return _WRAP_BY_TYPE.get(signal.type)
    return None


@dataclass
class PartTally:
    """Successive values of one counter → parts made since the value before."""

    machine: str
    role: str  # "produced" or "rejected", for the log
    counter: PartCounter
    wrap: int | None
    last: int | None = None
    resets: int = 0
    glitches: int = 0

    def update(self, value: FieldValue, *, max_plausible: int | None = None) -> int:
        """Parts since the previous value; 0 the first time (nothing to compare with)."""
        if isinstance(value, float) and not math.isfinite(value):
            return 0  # a failed sensor's "nan": no count, and the last good value stays
        if self.counter.kind == "pulse":
            edge = bool(value) and self.last == 0
            self.last = int(bool(value))
            return self.counter.parts_per_count if edge else 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0
        current = round(value)
        previous, self.last = self.last, current
        if previous is None:
            return 0
        step = current - previous
        if step < 0:
            step = self._after_going_back(previous, current, max_plausible)
        limit = self.counter.max_step if self.counter.max_step is not None else max_plausible
        if limit is not None and step > limit:
            self.glitches += 1
            log.warning(
                "%s: %s counter jumped by %d (at most %d expected); not counted as parts",
                self.machine,
                self.role,
                step,
                limit,
            )
            return 0
        return step * self.counter.parts_per_count

    def _after_going_back(self, previous: int, current: int, max_plausible: int | None) -> int:
        if self.wrap is not None:
            modulus = 1 << self.wrap
            across = (current - previous) % modulus
            # A wrap crosses the top in a few counts; a restart drops far below the last value.
            near = modulus // 16 if max_plausible is None else max(max_plausible, 1)
            if across <= near:
                return across
        self.resets += 1
        log.info(
            "%s: %s counter went back from %d to %d (a restart): counting %d parts since",
            self.machine,
            self.role,
            previous,
            current,
            max(current, 0),
        )
        return max(current, 0)
