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

from collector.config import ConfigError, load_config

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
    parser.set_defaults(func=_maintenance)


def _maintenance(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return asyncio.run(_run(config, once=args.once))


async def _run(config: object, *, once: bool) -> int:
    from collector.config import Config
    from collector.influxql import InfluxQL
    from collector.sinks.influxdb import InfluxDBSink
    from maintenance.notify import build_notifiers
    from maintenance.service import MaintenanceService, TicketPublisher
    from maintenance.store import TicketStore

    assert isinstance(config, Config)
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
                    config.maintenance.store.split("@")[-1],
                )
                await service.run(stop)
    finally:
        store.close()
    return 0
