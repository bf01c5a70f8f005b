"""`aguante maintenance CONFIG`: the maintenance service, registered into the `aguante` command
through the `aguante.commands` entry point (the collector's command line never imports it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from collector.config import Config, load_config_or_say

__all__ = ["register"]

log = logging.getLogger("aguante.maintenance")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "maintenance",
        help="evaluate maintenance rules and keep tickets and crews up to date",
        description="Evaluate the config's maintenance rules against InfluxDB every interval, "
        "open, update and reopen tickets in the ticket store, write ticket events to InfluxDB and "
        "notify the crews, until Ctrl-C.",
    )
    parser.add_argument("config", type=Path, help="the factory YAML file")
    parser.add_argument("--once", action="store_true", help="one evaluation, then exit")
    parser.add_argument(
        "--new-token",
        metavar="NAME",
        help="give a person a token for the web app (printed once), then exit",
    )
    parser.add_argument("--crew", metavar="ID", help="with --new-token: the person's crew")
    parser.set_defaults(func=_maintenance)


def _maintenance(args: argparse.Namespace) -> int:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per migration step is noise
    config = load_config_or_say(args.config)
    if config is None:
        return 1
    from maintenance.tokens import TokenFileError, new_token

    if args.new_token:
        try:
            token = new_token(
                Path(config.maintenance.web.tokens_file), config, args.new_token, args.crew
            )
        except TokenFileError as exc:
            print(f"aguante maintenance: {exc}", file=sys.stderr)
            return 1
        print(token)
        return 0
    try:
        return asyncio.run(_run(config, once=args.once))
    except (TokenFileError, ValueError) as exc:
        print(f"aguante maintenance: {exc}", file=sys.stderr)
        return 1


async def _run(config: Config, *, once: bool) -> int:
    from collector.influxql import InfluxQL
    from collector.sinks.influxdb import InfluxDBSink
    from maintenance.notify import build_notifiers
    from maintenance.service import MaintenanceService, TicketPublisher
    from maintenance.store import TicketStore

    web = config.maintenance.web
    base_url = web.public_url or f"http://{web.host}:{web.port}"
    store = TicketStore(config.maintenance.store)
    try:
        with InfluxQL.from_config(config.influxdb) as db:
            async with InfluxDBSink.from_config(config.influxdb) as sink:
                publisher = TicketPublisher(config, store, sink, base_url=base_url)
                service = MaintenanceService(
                    config,
                    store=store,
                    db=db,
                    publisher=publisher,
                    notifiers=build_notifiers(config, os.environ),
                )
                if once:
                    report = await service.cycle()
                    print(
                        f"{report.findings} findings, {report.events} ticket events, "
                        f"{report.notices_sent} notices sent, {report.notices_failed} failed "
                        f"in {report.seconds:.2f} s"
                    )
                    for error in report.errors:
                        print(f"  {error}", file=sys.stderr)
                    return 1 if report.errors else 0
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, stop.set)
                log.info(
                    "maintenance: %d rules every %.0f s, tickets in %s",
                    len(config.maintenance.rules),
                    config.maintenance.interval,
                    store.where,
                )
                if not web.enabled:
                    await service.run(stop)
                    return 0
                await _serve(config, store, publisher, sink, service, stop)
    finally:
        store.close()
    return 0


async def _serve(
    config: Config, store: Any, publisher: Any, sink: Any, service: Any, stop: asyncio.Event
) -> None:
    """The rules' loop and the web app side by side until Ctrl-C."""
    import uvicorn

    from collector.influxql import InfluxQL
    from maintenance.tokens import load_tokens
    from maintenance.web import create_app

    web = config.maintenance.web
    tokens = load_tokens(Path(web.tokens_file), config)
    app = create_app(
        config,
        store,
        publisher,
        db_factory=lambda: InfluxQL.from_config(config.influxdb),
        sink=sink,
        tokens=tokens,
        secret_key=web.secret_key,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=web.host, port=web.port, log_level="warning", lifespan="off")
    )
    # uvicorn takes Ctrl-C while it serves and stops; the rules' loop then stops with it.
    serving = asyncio.create_task(server.serve(), name="web app")
    rules = asyncio.create_task(service.run(stop), name="maintenance rules")
    log.info(
        "web app on http://%s:%d; %d people hold a token (%s)",
        web.host,
        web.port,
        len(tokens),
        web.tokens_file,
    )
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, rules, waiting}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    server.should_exit = True
    await asyncio.gather(serving, rules, waiting)
