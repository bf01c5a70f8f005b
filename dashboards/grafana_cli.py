"""`aguante dashboards build|push`: the Grafana dashboards in the plant's language, as files for
provisioning or pushed to a Grafana the plant already runs (registered through the
`aguante.commands` entry point)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from collector.config import (
    LANGUAGES,
    Config,
    Language,
    load_config_or_say,
)
from dashboards.grafana import DASHBOARD_NAMES, build_dashboards, write_dashboards
from dashboards.push import TOKEN_VARIABLE

__all__ = ["register_dashboards", "show_dashboards"]


def register_dashboards(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "dashboards",
        help="build the Grafana dashboards, or push them to a running Grafana",
        description="The shop floor, machine, maintenance and assembly dashboards for Grafana, "
        "with their titles and labels in one language.",
    )
    commands = parser.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")
    build = commands.add_parser(
        "build",
        help="write the dashboards as JSON files for Grafana's provisioning",
        description="Write floor.json, machine.json, maintenance.json and assembly.json. With a "
        "factory file they use its stop reasons, time zone and retention policies; without one, "
        "the defaults and the browser's time zone.",
    )
    _common(build)
    build.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder to write into (default: aguante-dashboards/<lang>)",
    )
    build.set_defaults(func=_build)
    push = commands.add_parser(
        "push",
        help="send the dashboards to a Grafana that already runs",
        description="Create or replace the dashboards in the `aguante` folder of a running "
        f"Grafana. The API token (a service account token) comes from {TOKEN_VARIABLE}; the "
        "Grafana must have a data source with uid `aguante-influxdb` "
        "(dashboards/provisioning/datasources/aguante.yaml).",
    )
    _common(push)
    push.add_argument("--url", required=True, help="Grafana's address, e.g. http://grafana:3000")
    push.set_defaults(func=_push)
    show = commands.add_parser(
        "show",
        help="print what the dashboards show now, from InfluxDB (no Grafana needed)",
        description="Run every panel's query as Grafana would (its time range, the plant's "
        "time zone, every sector and machine) and print the figures, panel by panel. Exits 1 "
        "when a query fails or answers without a column its panel shows, naming it: a check "
        "after installing or upgrading InfluxDB.",
    )
    show.add_argument("config", type=Path, help="the factory YAML file")
    show.add_argument(
        "dashboard", nargs="*", help=f"which ({', '.join(DASHBOARD_NAMES)}); default: all"
    )
    show.add_argument("--machine", metavar="ID", help="the machine of the machine dashboard")
    show.add_argument(
        "--lang", choices=LANGUAGES, help="language of titles and labels (default: the config's)"
    )
    show.set_defaults(func=_show)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, nargs="?", help="the factory YAML file (optional)")
    parser.add_argument(
        "--lang",
        choices=LANGUAGES,
        help="language of titles and labels (default: the config's, else es)",
    )


def _load(args: argparse.Namespace) -> tuple[Config | None, Language] | None:
    config = None
    if args.config is not None:
        config = load_config_or_say(args.config)
        if config is None:
            return None
    language: Language = args.lang or (config.language if config else "es")
    return config, language


def _build(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return 1
    config, language = loaded
    folder = args.out or Path("aguante-dashboards") / language
    for path in write_dashboards(build_dashboards(config, language), folder):
        print(path)
    return 0


def _push(args: argparse.Namespace) -> int:
    from dashboards.push import PushError, push_dashboards

    token = os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        print(
            f"aguante dashboards push: set {TOKEN_VARIABLE} to a Grafana service account token "
            "(Administration → Service accounts, role Editor)",
            file=sys.stderr,
        )
        return 1
    loaded = _load(args)
    if loaded is None:
        return 1
    config, language = loaded
    dashboards = list(build_dashboards(config, language).values())
    try:
        results = push_dashboards(args.url, token, dashboards)
    except PushError as exc:
        print(f"aguante dashboards push: {exc}", file=sys.stderr)
        return 1
    for result in results:
        print(f"{result.title}: {result.url} (version {result.version})")
    return 0


def _show(args: argparse.Namespace) -> int:
    config = load_config_or_say(args.config)
    if config is None:
        return 1
    unknown = sorted(set(args.dashboard) - set(DASHBOARD_NAMES))
    if unknown:
        print(
            f"aguante dashboards show: no dashboard {', '.join(unknown)}; "
            f"there are {', '.join(DASHBOARD_NAMES)}",
            file=sys.stderr,
        )
        return 2
    language: Language = args.lang or config.language
    chosen = {"machine": args.machine} if args.machine else {}
    problems = show_dashboards(config, language, args.dashboard or DASHBOARD_NAMES, chosen)
    for problem in problems:
        print(f"aguante dashboards show: {problem}", file=sys.stderr)
    return 1 if problems else 0


def show_dashboards(
    config: Config,
    language: Language,
    names: Sequence[str] = DASHBOARD_NAMES,
    chosen: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> list[str]:
    """Print what the dashboards `names` show now, read from the config's InfluxDB as Grafana
    would; the problems met (a failed query, a panel without data)."""
    from collector.influxql import InfluxQL
    from dashboards.grafana_query import answer_dashboard
    from dashboards.panel_text import panel_lines

    out = out or sys.stdout
    zone = ZoneInfo(config.timezone)
    now = dt.datetime.now(zone)
    problems: list[str] = []
    with InfluxQL.from_config(config.influxdb) as db:
        for name, dashboard in build_dashboards(config, language).items():
            if name not in names:
                continue
            print(f"# {dashboard['title']}", file=out)
            answers, found = answer_dashboard(db, dashboard, now, chosen)
            problems += [f"{dashboard['title']}: {problem}" for problem in found]
            for answer in answers:
                print(file=out)
                print("\n".join(panel_lines(answer, language, zone)), file=out)
                problems += [f"{dashboard['title']} / {p}" for p in answer.problems]
            print(file=out)
    return problems
