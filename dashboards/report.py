"""The assembly's report: how much of its capacity the plant used over a period, against the
period before, where the rest went, and each machine's figures — in the plant's language, in
words a worker reads at once, on paper or on a projector.

Every figure is computed by the code behind `aguante kpi` (capacity use, OEE and its factors:
`dashboards.kpi_query.kpis`) and `aguante stops` (losses by reason category:
`collector.stops.losses_by_reason`), over local dates of the plant, `to` included; the report
adds no arithmetic of its own beyond comparing two periods. No person is named: machines and
sectors only (the data holds nothing else).

`gather` reads InfluxDB; `render_html` is pure (a page that prints on A4, readable in black and
white); `aguante report` (dashboards/report_cli.py) writes it as HTML or, through headless
Chromium, as PDF.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, Template, select_autoescape
from markupsafe import Markup

from collector.config import Config, Language
from collector.i18n import translate
from collector.influxql import InfluxQL
from collector.shifts import ShiftCalendar
from collector.stops import UNASSIGNED, Losses, category_name, list_stops, losses_by_reason
from dashboards.cli import format_number, format_percent
from dashboards.decisions import Decision, list_decisions
from dashboards.kpi import Totals
from dashboards.kpi_query import Grouping, SelectionError, kpis
from dashboards.report_chart import line_chart, sparkline
from dashboards.report_upkeep import Upkeep, upkeep

__all__ = [
    "CATEGORIES",
    "Effect",
    "Figures",
    "Period",
    "Report",
    "Trend",
    "format_date",
    "format_day_month",
    "gather",
    "render_html",
    "sentence",
]

# Where lost time goes, in the order the report lists it (collector.config's reason categories,
# then the stops nobody gave a reason yet).
CATEGORIES = ("demand", "supply", "machine", "people", "planned", "other", UNASSIGNED)

# The figures of the machine table, in order, and the glossary's words.
MACHINE_COLUMNS = ("capacity_use", "availability", "performance", "quality", "oee")
GLOSSARY = ("capacity_use", "availability", "performance", "quality", "oee", "lost_time", "mttr")
# Meters shown in the report: due (1 = the limit reached) or at least this far on.
METER_SHOWN = 0.8
# A period up to this long is drawn day by day, a longer one week by week.
TREND_DAYS_MAX = 62
# A decision's effect: capacity use over at most this many days before it and after it.
EFFECT_DAYS_MAX = 30
# Characters of a decision written on a chart (all of it in the decisions' table).
MARK_CHARS = 28


@dataclass(frozen=True, slots=True)
class Period:
    """Local dates of the plant, both included."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(f"the period is empty: {self.start} is after {self.end}")

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def before(self) -> Period:
        """The period to compare with: a calendar month before a whole month, otherwise as many
        days just before."""
        if self.start.day == 1 and (self.end + dt.timedelta(days=1)).day == 1:
            months = (self.end.year - self.start.year) * 12 + self.end.month - self.start.month + 1
            month = self.start.month - months
            year = self.start.year + (month - 1) // 12
            start = dt.date(year, (month - 1) % 12 + 1, 1)
            return Period(start, self.start - dt.timedelta(days=1))
        return Period(self.start - dt.timedelta(days=self.days), self.start - dt.timedelta(days=1))


@dataclass(frozen=True, slots=True)
class Figures:
    """One period's sums: the plant's, each sector's and each machine's (config order), and the
    time lost to stops (micro-stops left out, as `aguante stops` does)."""

    period: Period
    plant: Totals
    sectors: dict[str, Totals]
    machines: dict[str, Totals]
    losses: Losses
    stops: dict[str, tuple[int, float]]  # machine → (stops, planned seconds lost)


@dataclass(frozen=True, slots=True)
class Trend:
    """Capacity use step by step over the period: each day, or each week (from Monday) of a
    period longer than two months; None where there is no figure."""

    step: Grouping
    starts: list[dt.date]
    plant: list[float | None]
    sectors: dict[str, list[float | None]]
    machines: dict[str, list[float | None]]


@dataclass(frozen=True, slots=True)
class Effect:
    """A decision of the period, and the capacity use of what it concerns (its sector, or the
    plant) over as many days before it as after it (`days`, from its day on, within the period
    and at most EFFECT_DAYS_MAX)."""

    decision: Decision
    days: int
    before: float | None
    after: float | None


@dataclass(frozen=True, slots=True)
class Report:
    factory: str
    current: Figures
    previous: Figures | None
    trend: Trend
    effects: list[Effect]
    upkeep: Upkeep
    made_at: dt.datetime


def gather(
    db: InfluxQL,
    config: Config,
    period: Period,
    *,
    compare: bool = True,
    now: dt.datetime | None = None,
) -> Report:
    """The report's figures from InfluxDB (raises `collector.influxql.QueryError`)."""
    moment = now or dt.datetime.now(dt.UTC)
    calendar = ShiftCalendar(config.calendar, config.timezone)

    def span_ms(span: Period) -> tuple[int, int]:
        """The local days of a period as UTC milliseconds, the last day included."""
        end = span.end + dt.timedelta(days=1)
        return calendar.local_midnight_ms(span.start), calendar.local_midnight_ms(end)

    def figures(span: Period) -> Figures:
        end = span.end + dt.timedelta(days=1)
        plant = kpis(db, config, span.start, end, now=moment)
        sectors = kpis(db, config, span.start, end, by="sector", now=moment)
        machines = kpis(db, config, span.start, end, by="machine", now=moment)
        stops = list_stops(db, config, *span_ms(span))
        per_machine: dict[str, tuple[int, float]] = {}
        for stop in stops:
            count, lost = per_machine.get(stop.machine, (0, 0.0))
            per_machine[stop.machine] = (count + 1, lost + stop.lost_s)
        return Figures(
            span,
            plant[0].totals,
            {row.label: row.totals for row in sectors},
            {row.label: row.totals for row in machines},
            losses_by_reason(stops, config),
            per_machine,
        )

    def trend(span: Period) -> Trend:
        step: Grouping = "day" if span.days <= TREND_DAYS_MAX else "week"
        end = span.end + dt.timedelta(days=1)

        def uses(**selection: Any) -> list[float | None]:
            rows = kpis(db, config, span.start, end, by=step, now=moment, **selection)
            return [r.totals.capacity_use for r in rows]

        rows = kpis(db, config, span.start, end, by=step, now=moment)
        starts, plant = [r.start.date() for r in rows], [r.totals.capacity_use for r in rows]
        sectors = {s.id: uses(sector=s.id) for s in config.sectors if s.id in current.sectors}
        ids = list(current.machines)
        if len(ids) <= len(rows):
            machines = {m: uses(machines=[m]) for m in ids}
        else:  # more machines than steps: one request a step, every machine in it
            machines = {m: [] for m in ids}
            for row in rows:
                each = kpis(db, config, row.start, row.end, by="machine", now=moment)
                for machine_row in each:
                    machines[machine_row.label].append(machine_row.totals.capacity_use)
        return Trend(step, starts, plant, sectors, machines)

    today = moment.astimezone(ZoneInfo(config.timezone)).date()

    def effect(decision: Decision) -> Effect:
        # Days after it that have happened (a report of the month under way), at least its own.
        last = min(period.end, today)
        days = max(1, min(EFFECT_DAYS_MAX, (last - decision.day).days + 1))
        day, span = decision.day, dt.timedelta(days=days)
        sector = decision.sector or None
        try:
            (before,) = kpis(db, config, day - span, day, sector=sector, now=moment)
            (after,) = kpis(db, config, day, day + span, sector=sector, now=moment)
        except SelectionError:  # a sector since removed from the factory file
            return Effect(decision, days, None, None)
        return Effect(decision, days, before.totals.capacity_use, after.totals.capacity_use)

    current = figures(period)
    previous = figures(period.before()) if compare else None
    effects = [effect(d) for d in list_decisions(db, config, period.start, period.end)]
    maintenance = upkeep(db, config, *span_ms(period))
    return Report(config.factory, current, previous, trend(period), effects, maintenance, moment)


def sentence(name: str, now: Totals, before: Totals | None, language: Language) -> str:
    """One line for the plant or a sector, such as "The press shop used 64 % of its capacity, up
    from 58 %", comparing figures as they are shown (a change below the shown digit is none)."""
    use = now.capacity_use
    if use is None:
        return translate(language, "report.sentence.none", name=name)
    shown = format_percent(use, language)
    past = before.capacity_use if before is not None else None
    if past is None:
        return translate(language, "report.sentence.alone", name=name, use=shown)
    was = format_percent(past, language)
    if was == shown:
        key = "report.sentence.same"
    else:
        key = "report.sentence.up" if use > past else "report.sentence.down"
    return translate(language, key, name=name, use=shown, before=was)


def render_html(report: Report, config: Config, language: Language) -> str:
    """The report as one HTML page (styles inside, no scripts, nothing fetched)."""

    def t(key: str, **values: Any) -> str:
        return translate(language, f"report.{key}", **values)

    def pct(ratio: float | None) -> str:
        return format_percent(ratio, language)

    def hours(seconds: float) -> str:
        return format_number(seconds / 3600, 1, language)

    def parts(value: float | None) -> str:
        return "—" if value is None else format_number(value, 0, language)

    def day(date: dt.date) -> str:
        return format_date(date, language)

    current, previous = report.current, report.previous
    plant_name = config.factory
    sectors = [
        {
            "name": sector.name or sector.id,
            "use": pct(current.sectors[sector.id].capacity_use),
            "before": pct(previous.sectors[sector.id].capacity_use) if previous else None,
            "time_based": current.sectors[sector.id].capacity_use_basis == "time",
            "sentence": sentence(
                sector.name or sector.id,
                current.sectors[sector.id],
                previous.sectors[sector.id] if previous else None,
                language,
            ),
        }
        for sector in config.sectors
        if sector.id in current.sectors
    ]
    machines = []
    for machine in config.machines:
        totals = current.machines.get(machine.id)
        if totals is None:
            continue
        machines.append(
            {
                "id": machine.id,
                "sector": next(
                    (s.name or s.id for s in config.sectors if s.id == machine.sector),
                    machine.sector,
                ),
                "figures": [pct(getattr(totals, name)) for name in MACHINE_COLUMNS],
                "time_based": totals.capacity_use_basis == "time",
                "running_h": hours(totals.running_s),
                "down_h": hours(totals.down_s),
                "stops": current.stops.get(machine.id, (0, 0.0))[0],
                "lost_h": hours(current.stops.get(machine.id, (0, 0.0))[1]),
                "spark": Markup(
                    sparkline(
                        report.trend.machines.get(machine.id, []),
                        title=t("trend.machine", machine=machine.id),
                    )
                ),
            }
        )
    losses = []
    for category in CATEGORIES:
        loss = current.losses.by_category.get(category)
        before = previous.losses.by_category.get(category) if previous else None
        if loss is None and before is None:
            continue
        losses.append(
            {
                "key": category,
                "name": category_name(category, language),
                "hours": hours(loss.lost_s if loss else 0),
                "parts": parts(loss.parts if loss else None),
                "stops": loss.stops if loss else 0,
                "before": hours(before.lost_s) if before else (hours(0) if previous else None),
            }
        )
    trend = report.trend
    steps = [format_day_month(start, language) for start in trend.starts]
    ticks = [(r, format_percent(r, language, 0)) for r in (0.0, 0.25, 0.5, 0.75, 1.0)]

    def marks(sector: str) -> list[tuple[int, str]]:
        found = []
        for item in report.effects:
            decision = item.decision
            if decision.sector != sector or not trend.starts:
                continue
            index = max(i for i, start in enumerate(trend.starts) if start <= decision.day)
            text = decision.text
            short = text if len(text) <= MARK_CHARS else text[: MARK_CHARS - 1] + "…"
            found.append((index, short))
        return found

    def chart(values: list[float | None], title: str, sector: str) -> Markup:
        return Markup(line_chart(values, steps, title=title, ticks=ticks, marks=marks(sector)))

    charts = [(plant_name, chart(trend.plant, t("trend.of", name=plant_name), ""))]
    charts += [
        (name, chart(trend.sectors[sector.id], t("trend.of", name=name), sector.id))
        for sector in config.sectors
        if sector.id in trend.sectors
        for name in [sector.name or sector.id]
    ]
    sector_names = {s.id: s.name or s.id for s in config.sectors}
    decisions = [
        {
            "day": day(item.decision.day),
            "text": item.decision.text,
            "what": sector_names.get(item.decision.sector, item.decision.sector)
            if item.decision.sector
            else plant_name,
            "days": item.days,
            "before": pct(item.before),
            "after": pct(item.after),
        }
        for item in report.effects
    ]
    care = report.upkeep
    context_upkeep = {
        "opened": care.opened,
        "resolved": care.resolved,
        "mttr": t("upkeep.mttr", hours=hours(care.mttr_h * 3600), repairs=care.repairs)
        if care.mttr_h is not None
        else t("upkeep.mttr_none"),
        "preventive": care.preventive_done,
        "meters": [
            {
                "machine": machine,
                "rule": rule,
                "share": pct(share),
                "due": t("upkeep.due") if share >= 1 else t("upkeep.soon"),
            }
            for machine, rule, share in care.meters
            if share >= METER_SHOWN
        ],
        "drifting": care.drifting,
    }
    context = {
        "upkeep": context_upkeep,
        "lang": language,
        "charts": charts,
        "decisions": decisions,
        "trend_title": t(f"trend.title_{trend.step}"),
        "t": t,
        "title": t("title", factory=report.factory),
        "period": t("period", start=day(current.period.start), end=day(current.period.end)),
        "compared": (
            t(
                "compared",
                start=day(previous.period.start),
                end=day(previous.period.end),
            )
            if previous
            else None
        ),
        "plant": {
            "name": plant_name,
            "use": pct(current.plant.capacity_use),
            "before": pct(previous.plant.capacity_use) if previous else None,
            "time_based": current.plant.capacity_use_basis == "time",
            "sentence": sentence(
                plant_name, current.plant, previous.plant if previous else None, language
            ),
            "oee": pct(current.plant.oee),
            "unknown": pct(current.plant.unknown_share),
        },
        "sectors": sectors,
        "machines": machines,
        "machine_columns": [translate(language, f"kpi.{name}") for name in MACHINE_COLUMNS],
        "losses": losses,
        "lost_total": hours(current.losses.total.lost_s),
        "lost_parts": parts(current.losses.total.parts),
        "unrated": hours(current.losses.total.unrated_s)
        if current.losses.total.unrated_s
        else None,
        "glossary": [(t(f"glossary.{word}.term"), t(f"glossary.{word}.text")) for word in GLOSSARY],
        "made_at": t(
            "made_at",
            when=format_date(report.made_at.astimezone(ZoneInfo(config.timezone)).date(), language),
        ),
    }
    html: str = _template().render(**context)
    return html


def format_day_month(date: dt.date, language: Language) -> str:
    """3/11 in es and pt-BR (day first), 11/3 in en."""
    return f"{date.month}/{date.day}" if language == "en" else f"{date.day}/{date.month}"


def format_date(date: dt.date, language: Language) -> str:
    """A date as the plant writes it: 3/11/2026 in es and pt-BR (day first), 11/3/2026 in en."""
    if language == "en":
        return f"{date.month}/{date.day}/{date.year}"
    return f"{date.day}/{date.month}/{date.year}"


@cache
def _template() -> Template:
    environment = Environment(
        loader=PackageLoader("dashboards", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("report.html")
