"""`aguante dashboards build|push`: the Grafana dashboards in the plant's language, as files for
provisioning or pushed to a Grafana the plant already runs (registered through the
`aguante.commands` entry point)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from collector.config import LANGUAGES, Config, ConfigError, Language, load_config
from dashboards.grafana import build_dashboards, write_dashboards
from dashboards.push import TOKEN_VARIABLE

__all__ = ["register_dashboards"]


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
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
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
