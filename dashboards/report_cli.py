"""`aguante report`: the assembly's report for a period, as HTML or PDF (dashboards/report.py)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

from collector.config import (
    LANGUAGES,
    Config,
    Language,
    load_config_or_say,
)
from collector.i18n import translate
from collector.influxql import InfluxQL, QueryError
from collector.sinks import WriteError
from collector.sinks.influxdb import InfluxDBSink
from dashboards.cli import add_period_arguments, parse_date
from dashboards.decisions import (
    Decision,
    InvalidDecision,
    check_decision,
    list_decisions,
    record_decision,
)
from dashboards.report import Period, format_date, gather, render_html

__all__ = [
    "PdfError",
    "decision_command",
    "html_to_pdf",
    "register_decision",
    "register_report",
    "report_command",
]

# Browsers that print a page to PDF headless, first found wins; AGUANTE_CHROMIUM names another.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PDF_TIMEOUT_S = 120


class PdfError(RuntimeError):
    """The PDF could not be printed: no headless browser, or it failed."""


def register_report(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "report",
        help="the assembly's report for a period: capacity use, losses, each machine",
        description="Write the report for the workers' assembly over local plant dates (--to "
        "included), compared with the period before, as HTML or PDF.",
    )
    parser.add_argument("config", type=Path, help="the factory YAML file")
    add_period_arguments(parser)
    parser.add_argument(
        "--compare",
        choices=("previous", "none"),
        default="previous",
        help="compare with the period before (the month before a whole month; default) or not",
    )
    parser.add_argument("--lang", choices=LANGUAGES, help="default: the config's language")
    parser.add_argument("--format", choices=("html", "pdf"), default="html")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write")
    parser.set_defaults(func=report_command)


def register_decision(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "decision",
        help="record a decision of the assembly (shown in the reports), or list them",
        description="Record a decision of the workers' assembly with the day it was taken and "
        "the sector it concerns (the whole plant without --sector); the report draws it on its "
        "charts and compares before and after. --list shows those recorded.",
    )
    parser.add_argument("config", type=Path, help="the factory YAML file")
    parser.add_argument("text", nargs="?", help='what was decided, e.g. "2nd shift approved"')
    parser.add_argument(
        "--date", type=parse_date, metavar="DATE", help="YYYY-MM-DD (default: today)"
    )
    parser.add_argument("--sector", default="", metavar="ID", help="the sector it concerns")
    parser.add_argument("--list", action="store_true", help="list the decisions instead")
    add_period_arguments(parser, required=False)  # with --list
    parser.set_defaults(func=decision_command)


def decision_command(args: argparse.Namespace) -> int:
    """Run `aguante decision`; 0, 1 (config, InfluxDB or a refused decision) or 2 (arguments)."""
    if args.list == (args.text is not None):
        _error("give the decision's text, or --list", command="decision")
        return 2
    config = load_config_or_say(args.config)
    if config is None:
        return 1
    zone = ZoneInfo(config.timezone)
    today = dt.datetime.now(zone).date()
    language: Language = config.language
    try:
        with InfluxQL.from_config(config.influxdb) as db:
            if args.list:
                start = args.start or today.replace(month=1, day=1)
                decisions = list_decisions(db, config, start, args.end or today)
                for decision in decisions:
                    what = decision.sector or translate(language, "report.decisions.plant")
                    print(f"{format_date(decision.day, language)}  {what}  {decision.text}")
                return 0
            check_decision(config, args.text, args.sector)
            recorded = asyncio.run(_record(db, config, args.date or today, args.text, args.sector))
    except InvalidDecision as exc:
        _error(str(exc), command="decision")
        return 1
    except (QueryError, WriteError) as exc:
        _error(str(exc), command="decision")
        return 1
    print(
        translate(
            language,
            "report.decisions.recorded",
            day=format_date(recorded.day, language),
            text=recorded.text,
            what=recorded.sector or translate(language, "report.decisions.plant"),
        )
    )
    return 0


async def _record(db: InfluxQL, config: Config, day: dt.date, text: str, sector: str) -> Decision:
    async with InfluxDBSink.from_config(config.influxdb) as sink:
        return await record_decision(db, sink, config, day, text, sector)


def report_command(args: argparse.Namespace) -> int:
    """Run `aguante report`; 0, 1 (config, InfluxDB or PDF problem) or 2 (bad arguments)."""
    try:
        period = Period(args.start, args.end)
    except ValueError as exc:
        _error(str(exc))
        return 2
    config = load_config_or_say(args.config)
    if config is None:
        return 1
    language: Language = args.lang or config.language
    try:
        with InfluxQL.from_config(config.influxdb) as db:
            report = gather(db, config, period, compare=args.compare == "previous")
    except QueryError as exc:
        _error(str(exc))
        return 1
    html = render_html(report, config, language)
    try:
        if args.format == "pdf":
            html_to_pdf(html, args.out)
        else:
            args.out.write_text(html, encoding="utf-8")
    except (OSError, PdfError, subprocess.SubprocessError) as exc:
        _error(f"cannot write {args.out}: {exc}")
        return 1
    print(args.out)
    return 0


def html_to_pdf(html: str, out: Path) -> None:
    """Print the page to PDF with headless Chromium (A4, as the page's own @page rule says)."""
    browser = os.environ.get("AGUANTE_CHROMIUM") or next(
        (found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None
    )
    if browser is None:
        raise PdfError(
            "no Chromium found to print the PDF with: install it (Debian: apt install chromium) "
            "or name it in AGUANTE_CHROMIUM; --format html needs none"
        )
    with tempfile.TemporaryDirectory(prefix="aguante-report-") as folder:
        page = Path(folder) / "report.html"
        page.write_text(html, encoding="utf-8")
        pdf = Path(folder) / "report.pdf"
        command = [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # as root, Chromium refuses to start sandboxed
            "--no-pdf-header-footer",
            f"--user-data-dir={Path(folder) / 'profile'}",
            f"--print-to-pdf={pdf}",
            page.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PDF_TIMEOUT_S)
        if done.returncode != 0 or not pdf.exists() or pdf.stat().st_size == 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PdfError(f"{browser} could not print the PDF: {detail[0]}")
        shutil.copyfile(pdf, out)


def _error(message: str, *, command: str = "report") -> None:
    print(f"aguante {command}: {message}", file=sys.stderr)
