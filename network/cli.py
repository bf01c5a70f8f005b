"""`aguante share CONFIG` (a plant's side) and `aguante network run|show|dashboard|check
NETWORK.yaml` (the network's side); docs/network.md."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
import zoneinfo
from pathlib import Path
from typing import Any

from collector.config import LANGUAGES, ConfigError, Language, load_config_or_say
from collector.i18n import translate
from collector.influxql import InfluxQL, QueryError
from collector.mqtt_publish import PublishError

__all__ = ["register_network", "register_share"]

log = logging.getLogger("aguante.network")


def register_share(commands: Any) -> None:
    """Add `aguante share` to the parser."""
    share = commands.add_parser(
        "share",
        help="send this plant's hourly rollups to its network of plants, as its config allows",
        description="Every network.interval seconds, send the network's broker every hour it "
        "lacks or has an older version of (network.revise_hours back), from the plant's "
        "InfluxDB; catches up after the link was down. Nothing is sent without network.url, "
        "or with network.share: none.",
    )
    share.add_argument("config", type=Path, help="the factory YAML file")
    share.add_argument("--once", action="store_true", help="one round, then exit")
    share.add_argument(
        "--resend", action="store_true", help="forget what was sent: network.backfill_days again"
    )
    share.add_argument("--lang", choices=LANGUAGES, help="language of the output")
    share.set_defaults(func=_share)


def register_network(commands: Any) -> None:
    """Add `aguante network` and its actions to the parser."""
    network = commands.add_parser(
        "network",
        help="the network of plants' side: store what plants share, show where capacity is free",
        description="Run the network's service (store the plants' hourly messages in the "
        "network's InfluxDB), print the network's view, build its Grafana dashboard, check "
        "a network file.",
    )
    actions = network.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="store the plants' messages until Ctrl-C")
    run.add_argument("config", type=Path, help="the network YAML file")
    run.set_defaults(func=_run)
    show = actions.add_parser("show", help="the network's view, as its dashboard shows it")
    show.add_argument("config", type=Path, help="the network YAML file")
    show.add_argument("--lang", choices=LANGUAGES, help="language (default: the file's)")
    show.set_defaults(func=_show)
    board = actions.add_parser("dashboard", help="write the network's Grafana dashboard")
    board.add_argument("config", type=Path, help="the network YAML file")
    board.add_argument("--lang", choices=LANGUAGES, help="language (default: the file's)")
    board.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    board.set_defaults(func=_dashboard)
    check = actions.add_parser("check", help="validate a network file")
    check.add_argument("config", type=Path, help="the network YAML file")
    check.set_defaults(func=_check)


# -- a plant's side -------------------------------------------------------------------------------


def _share(args: argparse.Namespace) -> int:
    from network.share import MqttPublisher, Sharer, remove_state

    config = load_config_or_say(args.config)
    if config is None:
        return 1
    lang: Language = args.lang or config.language
    sharing = config.network
    if sharing.url is None or sharing.share == "none":
        print(translate(lang, "network.not_sharing"))
        return 0
    state = Path(sharing.state_file)
    if args.resend:
        remove_state(state)
    try:
        publisher = MqttPublisher(config, os.environ)
    except ValueError as exc:  # the TLS files cannot be used
        print(f"{args.config}: network.tls: {exc}", file=sys.stderr)
        return 1

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        failing = False
        with InfluxQL.from_config(config.influxdb) as db:
            sharer = Sharer(config, db, publisher, state)
            while True:
                try:
                    result = await asyncio.to_thread(sharer.round)
                except (PublishError, QueryError) as exc:
                    if isinstance(exc, PublishError) and not exc.retryable:
                        # Credentials or ACL: no round will do better until a person fixes it.
                        log.error("the network's broker refuses this plant: %s", exc)
                        return 1
                    if not failing or args.once:
                        log.warning("nothing more shared this round: %s", exc)
                    failing = True
                    if args.once:
                        return 1
                else:
                    if failing:
                        log.warning("sharing again")
                    failing = False
                    print(
                        translate(
                            lang,
                            "network.round",
                            looked=result.looked_at,
                            sent=result.sent,
                            url=sharing.url,
                        ),
                        flush=True,
                    )
                    if args.once:
                        return 0
                try:
                    async with asyncio.timeout(sharing.interval):
                        await stop.wait()
                    return 0
                except TimeoutError:
                    continue

    return asyncio.run(run())


# -- the network's side ---------------------------------------------------------------------------


def _load(path: Path) -> Any:
    from network.config import load_network

    try:
        return load_network(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    print(f"{args.config}: ok — {len(config.plants)} plants, {len(config.processes)} processes")
    return 0


def _run(args: argparse.Namespace) -> int:
    from network.ingest import Ingester

    config = _load(args.config)
    if config is None:
        return 1

    async def run() -> str | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        ingester = Ingester(config, os.environ)
        log.info(
            "network %s: storing into %s/%s",
            config.network,
            config.influxdb.url,
            config.influxdb.database,
        )
        await ingester.run(stop)
        stats = ingester.stats
        log.info(
            "network %s stopped: %d messages stored (%d points), %d dropped, %d waiting at most",
            config.network,
            stats.stored,
            stats.points,
            stats.bad,
            stats.largest_backlog,
        )
        return ingester.refused

    refused = asyncio.run(run())
    return 1 if refused else 0


def _dashboard(args: argparse.Namespace) -> int:
    from network.view import network_dashboard

    config = _load(args.config)
    if config is None:
        return 1
    lang: Language = args.lang or config.language
    board = network_dashboard(config, lang)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(args.out)
    return 0


def _show(args: argparse.Namespace) -> int:
    from dashboards.grafana_query import answer_dashboard
    from dashboards.panel_text import panel_lines
    from network.view import network_dashboard

    config = _load(args.config)
    if config is None:
        return 1
    lang: Language = args.lang or config.language
    zone = zoneinfo.ZoneInfo(config.timezone)
    board = network_dashboard(config, lang)
    print(board["title"])
    failed = False
    with InfluxQL.from_config(config.influxdb) as db:
        answers, problems = answer_dashboard(db, board, dt.datetime.now(zone))
        for problem in problems:
            print(problem, file=sys.stderr)
        for answer in answers:
            print()
            print("\n".join(panel_lines(answer, lang, zone)))
            failed = failed or bool(answer.problems)
    return 1 if failed or problems else 0
