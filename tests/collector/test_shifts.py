"""The shift calendar in the plant's time zone: nights across midnight, holidays, changes, DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import yaml

from collector.config import Calendar
from collector.shifts import ShiftCalendar

CALENDAR = """
shifts:
  - name: morning
    days: [mon, tue, wed, thu, fri]
    start: "06:00"
    end: "14:00"
    breaks: [{start: "10:00", end: "10:30"}]
  - name: night
    days: [mon, tue, wed, thu, fri]
    start: "22:00"
    end: "06:00"
    breaks: [{start: "02:00", end: "02:30"}]
holidays: [2026-11-20]
changes:
  - from: 2026-12-01
    to: 2026-12-31
    note: a second shift voted for December
    shifts:
      - {name: morning, days: [mon, tue, wed, thu, fri], start: "06:00", end: "14:00"}
      - {name: afternoon, days: [mon, tue, wed, thu, fri], start: "14:00", end: "22:00"}
"""
ZONE = "America/Argentina/Buenos_Aires"


def calendar(text: str = CALENDAR, zone: str = ZONE) -> ShiftCalendar:
    return ShiftCalendar(Calendar.model_validate(yaml.safe_load(text)), zone)


def ms(text: str, zone: str = ZONE) -> int:
    local = dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
    return round(local.timestamp() * 1000)


HOUR = 3_600_000


def test_a_weekday_has_its_shifts_minus_breaks() -> None:
    shifts = calendar()
    # Tuesday 2026-11-24: morning 7.5 h, night 22:00 → 06:00 less half an hour.
    day = shifts.planned(ms("2026-11-24T00:00"), ms("2026-11-25T00:00"))
    # Monday night until 06:00 (less its 02:00 break), the morning, and Tuesday night to 24:00.
    assert sum(e - b for b, e, _ in day) == (5.5 + 7.5 + 2) * HOUR
    assert shifts.shift_at(ms("2026-11-24T10:15")) == "morning"  # a break belongs to its shift
    assert shifts.planned_ms(ms("2026-11-24T10:00"), ms("2026-11-24T10:30")) == 0
    assert shifts.shift_at(ms("2026-11-24T15:00")) is None


def test_a_night_shift_belongs_to_the_day_it_starts() -> None:
    shifts = calendar()
    # Friday's night shift runs into Saturday, which has no shift of its own.
    saturday_morning = ms("2026-11-28T03:00")
    assert shifts.shift_at(saturday_morning) == "night"
    (span,) = shifts.spans(saturday_morning, saturday_morning + 1)
    assert span.day == dt.date(2026, 11, 27)
    assert span.end_ms - span.start_ms == 8 * HOUR
    # The break at 02:00 is after midnight, inside Friday's night shift.
    assert shifts.planned_ms(ms("2026-11-28T02:00"), ms("2026-11-28T02:30")) == 0
    assert shifts.planned_ms(ms("2026-11-28T06:00"), ms("2026-11-29T00:00")) == 0


def test_a_holiday_starts_no_shift_but_keeps_the_night_before() -> None:
    shifts = calendar()
    # Friday 2026-11-20 is a holiday: no morning, no night; Thursday's night still ends at 06:00.
    assert shifts.shift_at(ms("2026-11-20T05:00")) == "night"
    assert shifts.planned_ms(ms("2026-11-20T06:00"), ms("2026-11-21T06:00")) == 0
    week = shifts.planned_ms(ms("2026-11-16T00:00"), ms("2026-11-23T00:00"))
    assert week == 4 * (7.5 + 7.5) * HOUR  # four working days of two shifts


def test_a_calendar_change_replaces_the_usual_week() -> None:
    shifts = calendar()
    assert shifts.shift_at(ms("2026-12-02T15:00")) == "afternoon"
    assert shifts.shift_at(ms("2026-12-02T23:00")) is None  # no night shift in December
    # Monday 30 November's night shift still runs into 1 December.
    assert shifts.shift_at(ms("2026-12-01T03:00")) == "night"
    assert shifts.shift_at(ms("2026-11-25T15:00")) is None


def test_planned_time_follows_daylight_saving_time() -> None:
    # Chile keeps DST: on 2026-04-05 at 00:00 clocks go back to 23:00 (a 25-hour day).
    text = """
shifts:
  - {name: night, days: [sat], start: "20:00", end: "04:00"}
"""
    shifts = calendar(text, "America/Santiago")
    (span,) = shifts.spans(ms("2026-04-04T12:00", "America/Santiago"), ms("2026-04-05T12:00"))
    assert span.end_ms - span.start_ms == 9 * HOUR  # eight hours on the clock, nine lived


def test_spans_are_in_time_order_and_clipped_by_planned() -> None:
    shifts = calendar()
    start, end = ms("2026-11-24T13:00"), ms("2026-11-24T23:00")
    stretches = shifts.planned(start, end)
    assert stretches == [
        (start, ms("2026-11-24T14:00"), "morning"),
        (ms("2026-11-24T22:00"), end, "night"),
    ]
