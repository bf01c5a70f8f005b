"""KPIs as ratios of sums of the `utilization` rollup (docs/capacity.md): availability, performance,
quality, OEE, capacity use and the share of time nobody could see. Pure arithmetic, no I/O.

Sums add up over any window, machine set or shift, so every figure here is computed from `Totals`
and never averaged from other ratios. A ratio whose denominator is 0 is None ("no figure"), never
0 % and never a ZeroDivisionError.

The collector writes every minute, `unknown` when it cannot see a machine, so the minutes recorded
are normally the calendar. Where minutes were never written (before the collector was installed,
a lost state file) the figures are taken over the recorded minutes, as parts-based capacity can
only be, and the missing minutes count as unknown in `unknown_share`: no data is never stopped,
and never hidden either.

Capacity use of a set mixing machines that count parts at a rated speed with machines that do
not: the figure is parts-based (produced / capacity) over the machines that count, and the
others are left out of it and counted in `time_based_machines`, since a ratio of parts to running
time has no meaning. Only a set where no machine counts gets time-based use (running time over
recorded calendar time), and says so with `capacity_use_basis == "time"`. Performance is likewise
taken over the counting machines only: a machine with a rated speed but no counter would
otherwise show 0 % performance it never had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from collector.schema import UTILIZATION_COUNTS, UTILIZATION_SECONDS

__all__ = ["RATIOS", "STATE_SECONDS", "Basis", "Totals"]

Basis = Literal["parts", "time"]

# The five states of a minute; they add up to its 60 seconds (planned_s overlaps them).
STATE_SECONDS = ("running_s", "idle_s", "down_s", "off_s", "unknown_s")

# The figures `Totals` computes, in the order tables and JSON show them.
RATIOS = (
    "availability",
    "performance",
    "quality",
    "oee",
    "capacity_use",
    "time_based_use",
    "unknown_share",
)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _number(value: Any, name: str) -> float:
    if value is None:
        return 0  # a field absent from every point summed: nothing of it
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"utilization {name} must be a number, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums of `utilization` fields over a window and a set of machines (zero when empty).

    `calendar_s` is the calendar time the sums stand for (the window's seconds × machines), which
    is the recorded state seconds when built from rows alone. The `parts_*` sums are those of the
    machines counted on parts (a part counter and a capacity); `parts_machines` and
    `time_machines` name the machines of each kind.
    """

    planned_s: float = 0
    running_s: float = 0
    idle_s: float = 0
    down_s: float = 0
    off_s: float = 0
    unknown_s: float = 0
    produced: float = 0
    rejected: float = 0
    capacity: float = 0
    running_capacity: float = 0
    micro_stops: float = 0
    calendar_s: float = 0
    parts_produced: float = 0
    parts_capacity: float = 0
    parts_running_capacity: float = 0
    parts_machines: frozenset[str] = frozenset()
    time_machines: frozenset[str] = frozenset()

    @classmethod
    def from_row(
        cls,
        row: Mapping[str, Any],
        *,
        machine: str | None = None,
        counted: bool = True,
        calendar_s: float | None = None,
    ) -> Totals:
        """The sums of one machine (or of an unnamed set) from a row of `utilization` fields.

        `counted`: the machine has a part counter (from the config). It is counted on parts when
        it also has capacity in the row; otherwise its use is time-based. Missing or null fields
        are 0; `calendar_s` defaults to the row's, else to the sum of its state seconds. Give a
        machine's sums over a whole span in one row: minute by minute, its minutes without
        capacity would each be judged time-based.
        """
        sums = {
            name: _number(row.get(name), name) for name in UTILIZATION_SECONDS + UTILIZATION_COUNTS
        }
        if calendar_s is None:
            given = row.get("calendar_s")
            if given is not None:
                calendar_s = _number(given, "calendar_s")
            else:
                calendar_s = sum(sums[name] for name in STATE_SECONDS)
        parts = counted and sums["capacity"] > 0
        recorded = sum(sums[name] for name in STATE_SECONDS) > 0
        named = frozenset({machine}) if machine is not None and recorded else frozenset()
        return cls(
            **sums,
            calendar_s=calendar_s,
            parts_produced=sums["produced"] if parts else 0,
            parts_capacity=sums["capacity"] if parts else 0,
            parts_running_capacity=sums["running_capacity"] if parts else 0,
            parts_machines=named if parts else frozenset(),
            time_machines=frozenset() if parts else named,
        )

    def __add__(self, other: Totals) -> Totals:
        if not isinstance(other, Totals):
            return NotImplemented
        values: dict[str, Any] = {}
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            values[field.name] = mine | theirs if isinstance(mine, frozenset) else mine + theirs
        return Totals(**values)

    @property
    def availability(self) -> float | None:
        """Running time over planned time."""
        return _ratio(self.running_s, self.planned_s)

    @property
    def performance(self) -> float | None:
        """Parts made over parts the running time allowed at rated speed (counting machines)."""
        return _ratio(self.parts_produced, self.parts_running_capacity)

    @property
    def quality(self) -> float | None:
        """Good parts over parts made."""
        return _ratio(self.produced - self.rejected, self.produced)

    @property
    def oee(self) -> float | None:
        """Availability × performance × quality; None when any of them is."""
        a, p, q = self.availability, self.performance, self.quality
        return None if a is None or p is None or q is None else a * p * q

    @property
    def capacity_use_basis(self) -> Basis | None:
        """`parts` when some machine counts parts at a rated speed, `time` when none does."""
        if self.parts_capacity > 0:
            return "parts"
        return "time" if self.recorded_s > 0 else None

    @property
    def capacity_use(self) -> float | None:
        """The surveys' figure: parts made over capacity, or time-based use (see the module)."""
        if self.capacity_use_basis == "parts":
            return _ratio(self.parts_produced, self.parts_capacity)
        return self.time_based_use

    @property
    def time_based_use(self) -> float | None:
        """Running time over (recorded) calendar time, of every machine of the set."""
        return _ratio(self.running_s, self.recorded_s)

    @property
    def recorded_s(self) -> float:
        """Seconds with a state: the calendar time the collector wrote minutes for."""
        return self.running_s + self.idle_s + self.down_s + self.off_s + self.unknown_s

    @property
    def unrecorded_s(self) -> float:
        """Calendar seconds no minute was written for."""
        return max(0, self.calendar_s - self.recorded_s)

    @property
    def time_based_machines(self) -> int:
        """Machines whose use could only be time-based: left out of a parts-based figure."""
        return len(self.time_machines)

    @property
    def unknown_share(self) -> float | None:
        """Calendar time without data, unknown or never recorded: shown, never hidden."""
        return _ratio(self.unknown_s + self.unrecorded_s, max(self.calendar_s, self.recorded_s))

    def to_dict(self) -> dict[str, Any]:
        """Ratios (None when undefined), the capacity-use basis and the sums, keyed in English."""
        found: dict[str, Any] = {name: getattr(self, name) for name in RATIOS}
        found["capacity_use_basis"] = self.capacity_use_basis
        found["time_based_machines"] = self.time_based_machines
        found["recorded_s"] = self.recorded_s
        found["unrecorded_s"] = self.unrecorded_s
        for field in fields(self):
            value = getattr(self, field.name)
            found[field.name] = sorted(value) if isinstance(value, frozenset) else value
        return found
