"""The plant's shift calendar in its own time zone: which instants are planned time, and which
shift they belong to (docs/capacity.md).

A shift belongs to the day it starts on, even when it ends after midnight; holidays and ad-hoc
periods (a second shift voted for a month) are looked up by that day. Breaks belong to their
shift but are not planned time. Times are UTC milliseconds at the edges, local time inside.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

from collector.config import WEEKDAYS, Calendar, Shift

__all__ = ["ShiftCalendar", "ShiftSpan"]

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class ShiftSpan:
    """One shift on one day: [start_ms, end_ms) in UTC, its breaks, the local day it starts."""

    shift: str
    day: dt.date
    start_ms: int
    end_ms: int
    breaks: tuple[tuple[int, int], ...] = ()

    def planned(self) -> list[tuple[int, int]]:
        """The shift's planned stretches: the shift minus its breaks."""
        stretches, cursor = [], self.start_ms
        for begin, end in self.breaks:
            if begin > cursor:
                stretches.append((cursor, begin))
            cursor = max(cursor, end)
        if cursor < self.end_ms:
            stretches.append((cursor, self.end_ms))
        return stretches


class ShiftCalendar:
    """Answers "is this planned time, and in which shift?" for a `Calendar` in a time zone."""

    def __init__(self, calendar: Calendar, timezone: str) -> None:
        self.calendar = calendar
        self.zone = ZoneInfo(timezone)
        self._holidays = frozenset(calendar.holidays)
        self._day_spans = lru_cache(maxsize=4096)(self._compute_day)

    def shifts_on(self, day: dt.date) -> list[Shift]:
        """The shifts in force on a local day, before holidays are taken out."""
        for change in self.calendar.changes:
            if change.start <= day <= change.end:
                return change.shifts
        return self.calendar.shifts

    def spans(self, start_ms: int, end_ms: int) -> list[ShiftSpan]:
        """Every shift that overlaps [start_ms, end_ms), in time order, unclipped."""
        first = self.local_day(start_ms) - dt.timedelta(days=1)  # a night shift from the day before
        last = self.local_day(end_ms)
        found: list[ShiftSpan] = []
        day = first
        while day <= last:
            found.extend(
                s for s in self._day_spans(day) if s.start_ms < end_ms and s.end_ms > start_ms
            )
            day += dt.timedelta(days=1)
        return found

    def planned(self, start_ms: int, end_ms: int) -> list[tuple[int, int, str]]:
        """Planned stretches clipped to [start_ms, end_ms), with their shift's name."""
        clipped = []
        for span in self.spans(start_ms, end_ms):
            for begin, end in span.planned():
                begin, end = max(begin, start_ms), min(end, end_ms)
                if begin < end:
                    clipped.append((begin, end, span.shift))
        return clipped

    def planned_ms(self, start_ms: int, end_ms: int) -> int:
        return sum(end - begin for begin, end, _ in self.planned(start_ms, end_ms))

    def shift_at(self, time_ms: int) -> str | None:
        """The shift an instant belongs to (its breaks included), None outside every shift."""
        for span in self.spans(time_ms, time_ms + 1):
            if span.start_ms <= time_ms < span.end_ms:
                return span.shift
        return None

    def local_day(self, time_ms: int) -> dt.date:
        return dt.datetime.fromtimestamp(time_ms / 1000, self.zone).date()

    def local_midnight_ms(self, day: dt.date) -> int:
        return self._ms(day, dt.time(0, 0))

    def _compute_day(self, day: dt.date) -> tuple[ShiftSpan, ...]:
        if day in self._holidays:
            return ()
        weekday = WEEKDAYS[day.weekday()]
        spans = []
        for shift in self.shifts_on(day):
            if weekday not in shift.days:
                continue
            start = self._ms(day, shift.start)
            end_day = day + dt.timedelta(days=1) if shift.end <= shift.start else day
            breaks = []
            for pause in shift.breaks:
                # A break before the shift's start time of day happens after midnight.
                pause_day = day + dt.timedelta(days=1) if pause.start < shift.start else day
                pause_end_day = (
                    pause_day + dt.timedelta(days=1) if pause.end < pause.start else (pause_day)
                )
                breaks.append(
                    (self._ms(pause_day, pause.start), self._ms(pause_end_day, pause.end))
                )
            spans.append(
                ShiftSpan(
                    shift.name, day, start, self._ms(end_day, shift.end), tuple(sorted(breaks))
                )
            )
        return tuple(sorted(spans, key=lambda s: s.start_ms))

    def _ms(self, day: dt.date, clock: dt.time) -> int:
        moment = dt.datetime.combine(day, clock, tzinfo=self.zone)
        return round(moment.timestamp() * 1000)
