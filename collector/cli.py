"""The `aguante` command line: check, schema, collect, and subcommands other packages register.

Other packages add subcommands through the `aguante.commands` entry-point group, so this module
never imports them (the simulators must share no code with the collector).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from collector.config import ConfigError, config_warnings, json_schema, load_config

__all__ = ["build_parser", "main"]

log = logging.getLogger("aguante")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aguante",
        description="Production and machinery tracking for worker-run factories.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="validate a factory config file",
        description="Validate a factory config file; print every problem with its path; exit 1.",
    )
    check.add_argument("config", type=Path, help="the factory YAML file")
    check.set_defaults(func=_check)

    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of the factory file",
        description="Print the JSON Schema of the factory config, for editors.",
    )
    schema.set_defaults(func=_schema)

    collect = commands.add_parser(
        "collect",
        help="poll the machines and store readings in InfluxDB",
        description="Run the collector until Ctrl-C, then flush what it holds to InfluxDB.",
    )
    collect.add_argument("config", type=Path, help="the factory YAML file")
    collect.set_defaults(func=_collect)

    for entry in sorted(entry_points(group="aguante.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:
            # A broken optional command must not take `check` or `collect` down with it.
            print(f"aguante: command {entry.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per HTTP request is noise in a collector's log; their failures are logged by us.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    # pymodbus logs every failed connect and every timeout; the sources log a device going down
    # and coming back once each, and count the rest.
    if args.log_level != "DEBUG":
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    code: int = args.func(args)
    return code


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    machines = len(config.machines)
    modbus = sum(len(m.modbus.signals) for m in config.machines if m.modbus)
    mqtt = sum(len(b.signals) for m in config.machines for b in m.mqtt)
    mqtt += sum(len(b.signals) for b in config.mqtt.subscriptions)
    print(f"{args.config}: ok — {machines} machines, {modbus} Modbus signals, {mqtt} MQTT signals")
    for warning in config_warnings(config):
        print(f"  warning: {warning}", file=sys.stderr)
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0


def _collect(args: argparse.Namespace) -> int:
    from collector.app import Collector
    from collector.sinks.influxdb import InfluxDBSink

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    influx = config.influxdb
    sink = InfluxDBSink.from_config(influx)

    async def run() -> None:
        # pymodbus clients bind to the running loop when made, so the collector is made here.
        collector = Collector(config, sink=sink)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "collecting %d machines into %s/%s", len(config.machines), influx.url, influx.database
        )
        await collector.run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
