"""The `aguante` command line: check, schema, collect, stops, import, and subcommands other
packages register.

Other packages add subcommands through the `aguante.commands` entry-point group, so this module
never imports them (the simulators must share no code with the collector).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from collector.buffer_cli import register as register_buffer
from collector.config import (
    LANGUAGES,
    Config,
    Language,
    config_warnings,
    json_schema,
    load_config_or_say,
)
from collector.db_cli import register as register_db
from collector.i18n import translate

if TYPE_CHECKING:
    from collector.sinks import Sink

__all__ = ["build_parser", "event_loop_factory", "main"]

log = logging.getLogger("aguante")


def build_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    """The `aguante` parser; `plugins=False` leaves out the commands other packages register
    (they import their packages: a few MiB a long-running `collect` does not need)."""
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
    collect.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="uvloop (libuv, the default where installed: the collector's CPU is mostly the "
        "event loop's) or Python's own asyncio loop",
    )
    collect.set_defaults(func=_collect)

    stops = commands.add_parser(
        "stops",
        help="list the machines' stops, or give a stop its reason",
        description="List stops newest first with the planned time they lost by cause "
        "(micro-stops only with --all); or give one a reason with --set ID REASON, which "
        "rewrites only the stop's `reason` field.",
    )
    stops.add_argument("config", type=Path, help="the factory YAML file")
    window = stops.add_mutually_exclusive_group()
    window.add_argument(
        "--since", metavar="PERIOD", help="how far back: 30m, 12h, 7d (the default), 2w"
    )
    window.add_argument(
        "--from",
        dest="start",
        metavar="DATE",
        help="from this day (or 'YYYY-MM-DD HH:MM'), plant time",
    )
    stops.add_argument(
        "--to",
        dest="end",
        metavar="DATE",
        help="with --from: up to this day, included (or up to 'YYYY-MM-DD HH:MM'); default now",
    )
    stops.add_argument(
        "--machine", action="append", metavar="ID", help="only this machine (repeat for more)"
    )
    stops.add_argument("--all", action="store_true", help="show micro-stops too")
    stops.add_argument(
        "--lang", choices=LANGUAGES, help="language of the output (default: the config's)"
    )
    stops.add_argument("--json", action="store_true", help="print JSON instead of tables")
    change = stops.add_mutually_exclusive_group()
    change.add_argument(
        "--set",
        nargs=2,
        metavar=("ID", "REASON"),
        help="give stop ID a reason: an id of stop_reasons or its name; '' clears it",
    )
    change.add_argument("--clear", metavar="ID", help="take stop ID's reason away")
    stops.set_defaults(func=_stops)

    importer = commands.add_parser(
        "import",
        help="import paper records or data-logger exports (CSV)",
        description="Import production counts (machine,start,end,produced[,rejected]) and/or "
        "stops (machine,start,end,reason) from a CSV file, times in plant time. The whole file is "
        "checked first: any problem and nothing is written. Importing a file again is safe.",
    )
    importer.add_argument("config", type=Path, help="the factory YAML file")
    importer.add_argument("file", type=Path, help="the CSV file (UTF-8, ',' or ';')")
    importer.add_argument(
        "--dry-run", action="store_true", help="check the file and say what would be written"
    )
    importer.add_argument(
        "--lang", choices=LANGUAGES, help="language of the output (default: the config's)"
    )
    importer.set_defaults(func=_import)

    rollup = commands.add_parser(
        "rollup",
        help="sum the stored minutes into hourly and daily sums again",
        description="Rebuild the hourly and daily sums of utilization (utilization_1h, "
        "utilization_1d) from the stored minutes for the hours and days between two dates, "
        "after minutes were corrected or written by other tools. The collector and "
        "`aguante import` keep them up to date themselves.",
    )
    rollup.add_argument("config", type=Path, help="the factory YAML file")
    rollup.add_argument("--from", dest="start", required=True, metavar="DATE", help="plant time")
    rollup.add_argument(
        "--to", dest="end", required=True, metavar="DATE", help="included when a day"
    )
    rollup.add_argument(
        "--machine", action="append", metavar="ID", help="only this machine (repeat for more)"
    )
    rollup.add_argument(
        "--lang", choices=LANGUAGES, help="language of the output (default: the config's)"
    )
    rollup.set_defaults(func=_rollup)
    register_buffer(commands)
    register_db(commands)
    if plugins:  # set-up commands: not imported by a long-running `collect`
        from collector.init_cli import register as register_init
        from collector.probe_cli import register as register_probe
        from collector.profiles_cli import register as register_profiles

        register_init(commands)
        register_probe(commands)
        register_profiles(commands)

    for entry in sorted(entry_points(group="aguante.commands"), key=lambda e: e.name):
        if not plugins:
            break
        try:
            register = entry.load()
        except ImportError as exc:
            # A broken optional command must not take `check` or `collect` down with it.
            print(f"aguante: command {entry.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(commands)
    return parser


# Commands of this package that run for long: their parser needs no other package's commands.
_LEAN_COMMANDS = frozenset({"collect"})


def main(argv: Sequence[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--log-level")
    first.add_argument("command", nargs="?")
    known, _ = first.parse_known_args(argv)
    args = build_parser(plugins=known.command not in _LEAN_COMMANDS).parse_args(argv)
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
    config = load_config_or_say(args.config)
    if config is None:
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
    from collector.buffer import BufferDirectoryError
    from collector.sinks.influxdb import InfluxDBSink

    config = load_config_or_say(args.config)
    if config is None:
        return 1
    influx = config.influxdb
    sink = InfluxDBSink.from_config(influx)

    async def run() -> None:
        # pymodbus clients bind to the running loop when made, so the collector is made here.
        collector = Collector(config, sink=sink)
        # What exists now (modules, config, read plans, clients) lives as long as the process:
        # frozen, the garbage collector's full passes no longer walk it every time. (Collected
        # first: garbage frozen would never be freed.)
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "collecting %d machines into %s/%s (event loop: %s)",
            len(config.machines),
            influx.url,
            influx.database,
            type(loop).__module__.split(".")[0],
        )
        await collector.run(stop)

    try:
        with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
            runner.run(run())
    except BufferDirectoryError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop, where it is installed and asked for; else asyncio's (None)."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # not built for this platform: asyncio's loop does the same, slower
        log.info("uvloop is not installed: running on asyncio's own event loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _stops(args: argparse.Namespace) -> int:
    from collector import stops as stop_api
    from collector.influxql import InfluxQL, QueryError

    config = load_config_or_say(args.config)
    if config is None:
        return 1
    lang: Language = args.lang or config.language
    if args.set is not None or args.clear is not None:
        return _set_reason(args, config, lang)
    zone = ZoneInfo(config.timezone)
    known = [m.id for m in config.machines]
    for machine in args.machine or []:
        if machine not in known:
            print(
                translate(lang, "stops.unknown_machine", machine=machine, known=", ".join(known)),
                file=sys.stderr,
            )
            return 1
    now = _now_ms()
    try:
        if args.start is not None:
            start_ms = _day_or_time(args.start, zone, end=False)
            end_ms = now if args.end is None else _day_or_time(args.end, zone, end=True)
        elif args.end is not None:
            print(translate(lang, "stops.to_without_from"), file=sys.stderr)
            return 1
        else:
            start_ms, end_ms = now - _period_ms(args.since or "7d"), now
    except ValueError as exc:
        key = "stops.bad_period" if args.start is None else "stops.bad_date"
        print(translate(lang, key, text=exc.args[0]), file=sys.stderr)
        return 1
    if end_ms <= start_ms:
        end = args.end or stop_api.local_time(end_ms, zone)  # no --to: now
        print(translate(lang, "stops.empty_window", start=args.start, end=end), file=sys.stderr)
        return 1
    try:
        with InfluxQL.from_config(config.influxdb) as db:
            found = stop_api.list_stops(db, config, start_ms, end_ms, args.machine, True)
    except QueryError as exc:
        print(exc, file=sys.stderr)
        return 1
    shown = [s for s in found if args.all or not s.micro]
    hidden = len(found) - len(shown)
    losses = stop_api.losses_by_reason(shown, config)
    window = {
        "start": stop_api.local_time(start_ms, zone),
        "end": stop_api.local_time(end_ms, zone),
        "zone": config.timezone,
    }
    if args.json:
        answer: dict[str, Any] = {
            "from_ms": start_ms,
            "to_ms": end_ms,
            "timezone": config.timezone,
            "stops": stop_api.stops_json(shown, config, lang),
            "micro_hidden": hidden,
            "losses": stop_api.losses_json(losses, config, lang),
        }
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0
    if not shown:
        print(translate(lang, "stops.none", **window))
    else:
        print(translate(lang, "stops.title", **window))
        print()
        print("\n".join(stop_api.stops_table(shown, config, lang)))
    if hidden:
        print(translate(lang, "stops.micro_hidden", count=hidden))
    if shown:
        print()
        print(translate(lang, "stops.losses_title"))
        print()
        print("\n".join(stop_api.losses_table(losses, lang)))
    return 0


_PERIOD = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_PERIOD_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def _period_ms(text: str) -> int:
    match = _PERIOD.match(text)
    if match is None or int(match[1]) == 0:
        raise ValueError(text)
    return int(match[1]) * _PERIOD_MS[match[2]]


def _day_or_time(text: str, zone: ZoneInfo, *, end: bool) -> int:
    """A `--from`/`--to` bound: a day means its local midnight, or the next one for `--to`
    (the day is included); a date-time is taken as it is."""
    from collector.importer import parse_local_time

    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        try:
            return parse_local_time(text, zone)
        except ValueError:
            raise ValueError(text) from None
    if end:
        day += dt.timedelta(days=1)
    return round(dt.datetime.combine(day, dt.time(0, 0), tzinfo=zone).timestamp() * 1000)


def _set_reason(args: argparse.Namespace, config: Config, lang: Language) -> int:
    from collector import stops as stop_api
    from collector.influxql import InfluxQL, QueryError
    from collector.sinks import WriteError
    from collector.sinks.influxdb import InfluxDBSink

    stop_id, reason = args.set if args.set is not None else (args.clear, "")
    sink = InfluxDBSink.from_config(config.influxdb)

    async def assign(db: InfluxQL) -> stop_api.Stop:
        async with sink:
            return await stop_api.assign_reason(db, sink, config, stop_id, reason)

    zone = ZoneInfo(config.timezone)
    try:
        with InfluxQL.from_config(config.influxdb) as db:
            stop = asyncio.run(assign(db))
    except stop_api.InvalidStopId:
        print(translate(lang, "stops.bad_id", text=stop_id), file=sys.stderr)
        return 1
    except stop_api.UnknownReason as exc:
        known = ", ".join(f"{r.id} ({r.name(lang)})" for r in exc.reasons)
        print(translate(lang, "stops.unknown_reason", text=exc.text, known=known), file=sys.stderr)
        return 1
    except stop_api.StopNotFound as exc:
        message = translate(
            lang,
            "stops.not_found",
            id=stop_id.strip(),
            machine=exc.machine,
            start=stop_api.local_time(exc.start_ms, zone),
        )
        print(message, file=sys.stderr)
        return 1
    except (QueryError, WriteError) as exc:
        print(exc, file=sys.stderr)
        return 1
    values = {
        "id": stop.id,
        "machine": stop.machine,
        "start": stop_api.local_time(stop.start_ms, zone),
        "duration": stop_api.clock(stop.duration_s),
    }
    if stop.reason:
        reason_text = stop_api.reason_name(config, stop.reason, lang)
        print(translate(lang, "stops.assigned", reason=reason_text, **values))
    else:
        print(translate(lang, "stops.cleared", **values))
    return 0


def _import(args: argparse.Namespace) -> int:
    from collector import importer
    from collector.influxql import QueryError
    from collector.sinks import WriteError
    from collector.sinks.influxdb import InfluxDBSink
    from collector.stops import local_time

    config = load_config_or_say(args.config)
    if config is None:
        return 1
    lang: Language = args.lang or config.language
    source = str(args.file)
    try:
        parsed = importer.read_import(args.file, config, now_ms=_now_ms())
    except importer.ImportRejected as exc:
        for problem in exc.problems:
            print(problem.text(lang, source), file=sys.stderr)
        print(translate(lang, "import.rejected", count=len(exc.problems)), file=sys.stderr)
        return 1
    warning = translate(lang, "import.warning")
    for problem in parsed.warnings:
        print(f"{problem.where(source)}: {warning}: {problem.message(lang)}", file=sys.stderr)
    plan = importer.plan_import(parsed, config)
    zone = ZoneInfo(config.timezone)
    summary = {
        "source": source,
        "rows": plan.rows,
        "points": len(plan.points),
        "minutes": plan.minutes,
        "stops": plan.stops,
        "first": local_time(plan.first_ms, zone) if plan.first_ms is not None else "—",
        "last": local_time(plan.last_ms, zone) if plan.last_ms is not None else "—",
    }
    machines = [
        translate(
            lang,
            "import.summary.sensors" if m.sensors else "import.summary.paper",
            machine=m.machine,
            minutes=m.minutes,
            stops=m.stops,
            produced=m.produced,
            rejected=m.rejected,
        )
        for m in plan.machines
    ]
    if args.dry_run:
        print(translate(lang, "import.dry_run", **summary))
        print("\n".join(machines))
        return 0
    progress = importer.ProgressBar(sys.stderr, translate(lang, "import.progress"))
    sink = InfluxDBSink.from_config(config.influxdb)

    async def write() -> None:
        async with sink:
            await importer.write_import(
                plan, sink, batch_size=config.influxdb.batch_size, progress=progress
            )
            if plan.first_ms is None or plan.last_ms is None:
                return
            machines = [m.machine for m in plan.machines]
            try:
                await _write_sums(config, sink, plan.first_ms, plan.last_ms, machines)
            except (QueryError, WriteError) as exc:
                text = translate(lang, "rollup.import_sums_failed", error=exc)
                print(f"aguante import: {text}", file=sys.stderr)

    try:
        asyncio.run(write())
    except importer.ImportInterrupted as exc:
        progress.close()
        message = translate(
            lang,
            "import.interrupted",
            error=exc.cause,
            rows=exc.rows_written,
            total_rows=plan.rows,
            points=exc.points_written,
            total_points=len(plan.points),
        )
        print(message, file=sys.stderr)
        return 1
    progress.close()
    print(translate(lang, "import.done", **summary))
    print("\n".join(machines))
    return 0


async def _write_sums(
    config: Config, sink: Sink, start_ms: int, end_ms: int, machines: list[str] | None
) -> int:
    """Sum the stored minutes of the hours and days touched again; the points written."""
    from collector.influxql import InfluxQL
    from collector.rebuild import rebuilt_points

    with InfluxQL.from_config(config.influxdb) as db:
        points = await asyncio.to_thread(rebuilt_points, db, config, start_ms, end_ms, machines)
    size = config.influxdb.batch_size
    for first in range(0, len(points), size):
        await sink.write(points[first : first + size])
    return len(points)


def _rollup(args: argparse.Namespace) -> int:
    from collector.influxql import QueryError
    from collector.sinks import WriteError
    from collector.sinks.influxdb import InfluxDBSink

    config = load_config_or_say(args.config)
    if config is None:
        return 1
    lang: Language = args.lang or config.language
    zone = ZoneInfo(config.timezone)
    try:
        start = _day_or_time(args.start, zone, end=False)
        end = _day_or_time(args.end, zone, end=True)
    except ValueError as exc:
        print(f"aguante rollup: {translate(lang, 'rollup.not_a_day', text=exc)}", file=sys.stderr)
        return 2
    if end <= start:
        print(f"aguante rollup: {translate(lang, 'rollup.backwards')}", file=sys.stderr)
        return 2
    known = {m.id for m in config.machines}
    unknown = sorted(set(args.machine or ()) - known)
    if unknown:
        text = translate(lang, "rollup.unknown_machines", machines=", ".join(unknown))
        print(f"aguante rollup: {text}", file=sys.stderr)
        return 1

    async def run() -> int:
        async with InfluxDBSink.from_config(config.influxdb) as sink:
            return await _write_sums(config, sink, start, end, args.machine)

    try:
        written = asyncio.run(run())
    except (QueryError, WriteError) as exc:
        print(f"aguante rollup: {exc}", file=sys.stderr)
        return 1
    print(translate(lang, "rollup.done", count=written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
