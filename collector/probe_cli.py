"""`aguante probe scan|find|watch`: connect a machine nobody documented (docs/setup.md).

- `scan`: which unit ids answer on a bus or gateway; with `--unit`, which register ranges of
  that device answer. Paced (`--rate`), and it stops after a few reads in a row go unanswered.
- `find --expect 231.4`: every register, type, byte/word order and power-of-ten scale that shows
  the number on the machine's display, best first, each as a line to paste into the config;
  type the display again after it changes and the list narrows.
- `watch`: chosen registers decoded live, so a worker can start and stop the machine and see
  which value follows it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from collector.config import (
    LANGUAGES,
    ConfigError,
    Language,
    ModbusDevice,
    Signal,
    Table,
    load_config,
    validation_problems,
)
from collector.i18n import language_from_environment, translate
from collector.probe import (
    BIT_TABLES,
    Candidate,
    Finder,
    Pacer,
    ProbeError,
    Prober,
    Watch,
    display_tolerance,
    parse_display,
    scan_registers,
    scan_units,
)
from collector.sources.modbus import ClientFactory, make_client

__all__ = ["parse_signal_spec", "register", "run_probe"]

TABLES: tuple[Table, ...] = ("holding", "input", "coil", "discrete")
_SPEC = re.compile(
    r"^(?:(?P<name>[A-Za-z0-9_.\-]+)=)?(?P<table>coil|discrete|holding|input):(?P<address>\d+)"
    r"(?::(?P<type>[a-z0-9]+))?(?::(?P<order>ABCD|CDAB|BADC|DCBA))?(?:\*(?P<scale>[-+0-9.eE]+))?$"
)


def register(commands: Any) -> None:
    """Add the `probe` subcommand and its own subcommands to the `aguante` parser."""
    probe = commands.add_parser(
        "probe",
        help="find what a Modbus device holds: unit ids, registers, the number on its display",
        description="Talk to a Modbus device nobody documented, at a bounded rate: scan for "
        "unit ids and register ranges, find the register that shows the number on the "
        "machine's display, watch registers live. docs/setup.md walks through one machine.",
    )
    actions = probe.add_subparsers(dest="action", required=True, metavar="ACTION")

    scan = actions.add_parser(
        "scan",
        help="which unit ids answer; with --unit, which register ranges answer",
        description="Without --unit: read one register of every unit id in --units and list "
        "those that answer (an exception code counts: the device is there). With --unit: "
        "walk each table from --start to --end and list the address ranges that answer. A "
        "range shorter than --resolution addresses between two that answer may be missed.",
    )
    _link_arguments(scan, unit_required=False)
    scan.add_argument(
        "--units", default="1-247", metavar="LIST", help="unit ids to try, e.g. 1-32,100 (1-247)"
    )
    scan.add_argument(
        "--table",
        action="append",
        choices=TABLES,
        help="only this table (repeat for more; all four by default)",
    )
    scan.add_argument("--start", type=int, default=0, help="first address (0)")
    scan.add_argument("--end", type=int, default=1000, help="address after the last (1000)")
    scan.add_argument(
        "--resolution", type=int, default=10, help="addresses between reads in a gap (10)"
    )
    scan.add_argument(
        "--width",
        type=int,
        default=1,
        help="registers per read in a gap (1; 2 for meters that only answer whole floats)",
    )
    scan.add_argument(
        "--max-failures", type=int, default=3, help="stop after this many silent reads (3)"
    )
    scan.set_defaults(func=_scan)

    find = actions.add_parser(
        "find",
        help="find the register that shows the number on the machine's display",
        description="Read a block of registers and try every type, byte and word order, "
        "power-of-ten scale (and the address before and after --address), listing what "
        "shows --expect, best first, each as a line for the config. Then type the display "
        "again whenever it changes (Enter alone to finish) and the list narrows.",
    )
    _link_arguments(find, unit_required=True)
    find.add_argument(
        "--expect",
        required=True,
        metavar="NUMBER",
        help="the number on the display, as shown (231.4 or 231,4)",
    )
    find.add_argument(
        "--tolerance", type=float, help="how far off may be (default: half the last digit)"
    )
    find.add_argument("--table", choices=("holding", "input"), default="holding")
    where = find.add_mutually_exclusive_group()
    where.add_argument("--address", type=int, help="the address a manual gives (±1 tried too)")
    where.add_argument("--start", type=int, default=0, help="first address of the block (0)")
    find.add_argument("--count", type=int, default=125, help="registers in the block (125)")
    find.add_argument("--name", default="value", help="field name in the snippet (value)")
    find.add_argument("--top", type=int, default=8, help="candidates shown (8)")
    find.set_defaults(func=_find)

    watch = actions.add_parser(
        "watch",
        help="show registers decoded live",
        description="Read signals over and over and show each with its lowest, highest and "
        "how often it changed: start and stop the machine and see which one follows it. "
        "Signals as NAME=TABLE:ADDRESS[:TYPE[:ORDER]][*SCALE], e.g. holding:0, "
        "temp=holding:1:int16*0.1, shots=holding:10:uint32:CDAB, running=coil:0; or every "
        "signal of a machine in a config with --config and --machine.",
    )
    _link_arguments(watch, unit_required=False)
    watch.add_argument(
        "--signal", action="append", default=[], metavar="SPEC", help="a signal to watch"
    )
    watch.add_argument("--config", type=Path, help="a factory YAML file (with --machine)")
    watch.add_argument("--machine", help="watch this machine's Modbus signals")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between reads (1)")
    watch.add_argument("--rounds", type=int, help="stop after this many (default: Ctrl-C)")
    watch.set_defaults(func=_watch)


def _link_arguments(parser: argparse.ArgumentParser, *, unit_required: bool) -> None:
    link = parser.add_argument_group("the link")
    link.add_argument("--host", help="PLC or serial gateway (Modbus TCP, RTU over TCP)")
    link.add_argument("--port", type=int, default=502, help="TCP port (502)")
    link.add_argument("--serial-port", help="RS-485 adapter for RTU, e.g. /dev/ttyUSB0")
    link.add_argument(
        "--transport",
        choices=("tcp", "rtu-over-tcp", "rtu"),
        help="default: tcp with --host, rtu with --serial-port",
    )
    link.add_argument("--baudrate", type=int, default=9600)
    link.add_argument("--parity", choices=("N", "E", "O"), default="N")
    link.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    link.add_argument(
        "--unit", type=int, required=unit_required, help="unit (slave) id of the device"
    )
    link.add_argument("--timeout", type=float, default=1.0, help="seconds per answer (1)")
    link.add_argument(
        "--rate", type=float, default=10.0, help="at most this many requests a second (10)"
    )
    parser.add_argument("--lang", choices=LANGUAGES, help="language (default: the terminal's)")


def parse_signal_spec(spec: str) -> dict[str, Any]:
    """`[NAME=]TABLE:ADDRESS[:TYPE[:ORDER]][*SCALE]` as a config `signals:` entry."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise ValueError(
            f"{spec!r}: write TABLE:ADDRESS[:TYPE[:ORDER]][*SCALE], e.g. holding:10:uint32:CDAB"
        )
    table, address = match["table"], int(match["address"])
    entry: dict[str, Any] = {"name": match["name"] or f"{table}_{address}", "table": table}
    entry["address"] = address
    entry["type"] = match["type"] or ("bool" if table in BIT_TABLES else "uint16")
    if match["order"]:
        entry["order"] = match["order"]
    if match["scale"]:
        entry["scale"] = float(match["scale"])
    return entry


def run_probe(args: argparse.Namespace, client_factory: ClientFactory = make_client) -> int:
    """Run a parsed `aguante probe` command (tests pass an in-memory client factory)."""
    code: int = args.func(args, client_factory)
    return code


def _language(args: argparse.Namespace) -> Language:
    return args.lang or language_from_environment()


def _device(
    args: argparse.Namespace, signals: Sequence[dict[str, Any]] | None = None
) -> ModbusDevice:
    transport = args.transport or ("rtu" if args.serial_port and not args.host else "tcp")
    data: dict[str, Any] = {
        "transport": transport,
        "unit": args.unit if args.unit is not None else 1,
        "timeout": args.timeout,
        "retries": 0,  # a probe counts silence itself; a retry would only hide it
        "baudrate": args.baudrate,
        "parity": args.parity,
        "stopbits": args.stopbits,
        "signals": list(signals or [{"name": "probe", "table": "holding", "address": 0}]),
    }
    if transport == "rtu":
        data["serial_port"] = args.serial_port
    else:
        data["host"], data["port"] = args.host, args.port
    return ModbusDevice.model_validate(data)


def _problem(lang: Language, exc: ValidationError | ValueError | ConfigError) -> int:
    if isinstance(exc, ValidationError):
        for problem in validation_problems(exc):
            where = f"{problem.path}:" if problem.path else ""
            text = translate(lang, "probe.bad_argument", where=where, problem=problem.message)
            print(text, file=sys.stderr)
    else:
        print(translate(lang, "probe.bad_argument", where="", problem=str(exc)), file=sys.stderr)
    return 2


def _link_name(device: ModbusDevice) -> str:
    if device.transport == "rtu":
        return f"{device.serial_port} ({device.baudrate} {device.parity} {device.stopbits})"
    return f"{device.host}:{device.port} ({device.transport})"


async def _open(
    device: ModbusDevice, factory: ClientFactory, rate: float, lang: Language
) -> Prober | None:
    prober = Prober(factory(device, lambda sending, data: data), Pacer(rate))
    if not await prober.connect():
        print(translate(lang, "probe.no_link", link=_link_name(device)), file=sys.stderr)
        prober.close()
        return None
    return prober


def _parse_units(text: str) -> list[int]:
    units: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if not (0 <= low <= high <= 255):
            raise ValueError(f"{part!r}: unit ids go from 0 to 255")
        units.extend(range(low, high + 1))
    if not units:
        raise ValueError("no unit ids to try")
    return units


# -- scan ------------------------------------------------------------------------------------------


def _scan(args: argparse.Namespace, factory: ClientFactory = make_client) -> int:
    lang = _language(args)
    try:
        device = _device(args)
        units = _parse_units(args.units)
        if args.rate <= 0 or args.resolution < 1 or args.width < 1 or args.max_failures < 1:
            raise ValueError("--rate, --resolution, --width and --max-failures must be above 0")
        if not 0 <= args.start < args.end <= 65536:
            raise ValueError("--start and --end: 0 ≤ start < end ≤ 65536")
    except (ValidationError, ValueError) as exc:
        return _problem(lang, exc)
    return asyncio.run(_scan_async(args, device, units, factory, lang))


async def _scan_async(
    args: argparse.Namespace,
    device: ModbusDevice,
    units: list[int],
    factory: ClientFactory,
    lang: Language,
) -> int:
    prober = await _open(device, factory, args.rate, lang)
    if prober is None:
        return 1
    started = time.monotonic()
    try:
        if args.unit is None:
            print(translate(lang, "probe.scan_units", count=len(units), link=_link_name(device)))
            answers = await scan_units(prober, units)
            present = [a for a in answers if a.present]
            for answer in present:
                if answer.exception is None:
                    print(translate(lang, "probe.unit_answers", unit=answer.unit))
                else:
                    print(
                        translate(
                            lang, "probe.unit_exception", unit=answer.unit, code=answer.exception
                        )
                    )
            if not present:
                print(translate(lang, "probe.no_units"))
        else:
            print(
                translate(
                    lang,
                    "probe.scan_registers",
                    unit=args.unit,
                    link=_link_name(device),
                    start=args.start,
                    end=args.end - 1,
                )
            )
            for table in args.table or TABLES:
                scan = await scan_registers(
                    prober,
                    args.unit,
                    table,
                    args.start,
                    args.end,
                    resolution=args.resolution,
                    width=args.width,
                    max_failures=args.max_failures,
                )
                ranges = ", ".join(
                    f"{first}–{last}" if last > first else str(first) for first, last in scan.ranges
                )
                print(
                    translate(lang, "probe.table_ranges", table=table, ranges=ranges)
                    if ranges
                    else translate(lang, "probe.table_empty", table=table)
                )
                if scan.stopped:
                    print(translate(lang, "probe.stopped", why=scan.stopped))
        seconds = time.monotonic() - started
        print(translate(lang, "probe.requests", requests=prober.requests, seconds=f"{seconds:.1f}"))
    finally:
        prober.close()
    return 0


# -- find ------------------------------------------------------------------------------------------


def _find(args: argparse.Namespace, factory: ClientFactory = make_client) -> int:
    lang = _language(args)
    try:
        device = _device(args)
        expect = parse_display(args.expect)
        tolerance = args.tolerance if args.tolerance is not None else display_tolerance(args.expect)
        if args.address is not None:
            start, count = max(0, args.address - 1), 0
            count = min(args.address + 5, 65536) - start  # room for a 64-bit value at +1
        else:
            start, count = args.start, args.count
        if count < 1 or start + count > 65536 or args.rate <= 0:
            raise ValueError("--start/--count: a block inside addresses 0–65535")
    except (ValidationError, ValueError) as exc:
        return _problem(lang, exc)
    return asyncio.run(
        _find_async(args, device, expect, tolerance, start, count, factory, lang, sys.stdin)
    )


async def _find_async(
    args: argparse.Namespace,
    device: ModbusDevice,
    expect: float,
    tolerance: float,
    start: int,
    count: int,
    factory: ClientFactory,
    lang: Language,
    stdin: TextIO,
) -> int:
    prober = await _open(device, factory, args.rate, lang)
    if prober is None:
        return 1
    finder = Finder(start, near=args.address)
    try:
        if expect == 0:
            print(translate(lang, "probe.zero"), file=sys.stderr)
        while True:
            try:
                registers = await prober.read_range(device.unit, args.table, start, count)
            except ProbeError as exc:
                print(translate(lang, "probe.read_failed", problem=str(exc)), file=sys.stderr)
                return 1
            candidates = finder.add(registers, expect, tolerance)
            _print_candidates(args, lang, candidates, len(finder.readings), start, count)
            if not candidates:
                print(translate(lang, "probe.none"))
                return 1
            if len(candidates) == 1 and len(finder.readings) > 1:
                return 0
            interactive = stdin.isatty()
            if interactive:
                print(translate(lang, "probe.again"), end=" ", flush=True)
            line = await asyncio.to_thread(stdin.readline)
            if not line.strip():
                return 0
            try:
                expect = parse_display(line)
                tolerance = (
                    args.tolerance if args.tolerance is not None else display_tolerance(line)
                )
            except ValueError:
                print(translate(lang, "probe.not_a_number", text=line.strip()), file=sys.stderr)
                return 2
    finally:
        prober.close()


def _print_candidates(
    args: argparse.Namespace,
    lang: Language,
    candidates: list[Candidate],
    readings: int,
    start: int,
    count: int,
) -> None:
    print(
        translate(
            lang,
            "probe.found",
            count=len(candidates),
            readings=readings,
            table=args.table,
            first=start,
            last=start + count - 1,
        )
    )
    for rank, candidate in enumerate(candidates[: args.top], 1):
        last = candidate.address + candidate.width - 1
        where = (
            str(candidate.address) if last == candidate.address else f"{candidate.address}–{last}"
        )
        shows = " · ".join(f"{v:.6g}" for v in candidate.values)
        print(
            translate(
                lang,
                "probe.candidate",
                rank=rank,
                table=args.table,
                where=where,
                type=candidate.type,
                order=candidate.order,
                scale=f"{candidate.scale:g}",
                shows=shows,
            )
        )
        snippet = yaml.safe_dump(
            [candidate.signal(args.name, args.table)], default_flow_style=None, sort_keys=False
        ).strip()
        print(f"       {snippet}")
        if candidate.twins:
            print(translate(lang, "probe.twins", twins=", ".join(candidate.twins)))
        if candidate.offset_from is not None:
            print(
                translate(
                    lang, "probe.offset", given=candidate.offset_from, address=candidate.address
                )
            )
    if len(candidates) > args.top:
        print(translate(lang, "probe.more", count=len(candidates) - args.top))
    if len(candidates) > 1:
        print(translate(lang, "probe.narrow"))


# -- watch -----------------------------------------------------------------------------------------


def _watch(args: argparse.Namespace, factory: ClientFactory = make_client) -> int:
    lang = _language(args)
    try:
        if args.config is not None or args.machine is not None:
            if args.config is None or args.machine is None or args.signal:
                raise ValueError("--config and --machine go together, without --signal")
            device = _machine_device(args)
        else:
            if not args.signal:
                raise ValueError("give at least one --signal, or --config and --machine")
            device = _device(args, [parse_signal_spec(spec) for spec in args.signal])
        if args.interval <= 0 or args.rate <= 0 or (args.rounds is not None and args.rounds < 1):
            raise ValueError("--interval, --rate and --rounds must be above 0")
    except (ValidationError, ValueError, ConfigError) as exc:
        return _problem(lang, exc)
    try:
        return asyncio.run(_watch_async(args, device, factory, lang, sys.stdout))
    except KeyboardInterrupt:
        return 0


def _machine_device(args: argparse.Namespace) -> ModbusDevice:
    config = load_config(args.config)
    for machine in config.machines:
        if machine.id == args.machine:
            if machine.modbus is None:
                raise ValueError(f"machine {args.machine!r} has no Modbus device")
            return machine.modbus
    known = ", ".join(m.id for m in config.machines if m.modbus)
    raise ValueError(f"no machine {args.machine!r} with Modbus in {args.config}; known: {known}")


async def _watch_async(
    args: argparse.Namespace,
    device: ModbusDevice,
    factory: ClientFactory,
    lang: Language,
    out: TextIO,
) -> int:
    prober = await _open(device, factory, args.rate, lang)
    if prober is None:
        return 1
    watch = Watch(device)
    redraw = out.isatty()
    try:
        while True:
            started = time.monotonic()
            await watch.poll(prober)
            _print_watch(watch, device, lang, out, redraw=redraw)
            if args.rounds is not None and watch.rounds >= args.rounds:
                return 0
            await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    finally:
        prober.close()


def _print_watch(
    watch: Watch, device: ModbusDevice, lang: Language, out: TextIO, *, redraw: bool
) -> None:
    signals: dict[str, Signal] = {s.name: s for s in device.signals}
    rows = [
        (
            translate(lang, "probe.col_signal"),
            translate(lang, "probe.col_where"),
            translate(lang, "probe.col_now"),
            translate(lang, "probe.col_min"),
            translate(lang, "probe.col_max"),
            translate(lang, "probe.col_changes"),
            translate(lang, "probe.col_since"),
        )
    ]
    now = time.monotonic()
    for name, watched in watch.signals.items():
        signal = signals[name]
        where = f"{signal.wire_table} {signal.wire_address}"
        since = "" if watched.changed_at is None else f"{now - watched.changed_at:.0f} s"
        rows.append(
            (
                name,
                where,
                _show(watched.value),
                _show(watched.minimum),
                _show(watched.maximum),
                str(watched.changes),
                since,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    header = translate(
        lang, "probe.watching", link=_link_name(device), unit=device.unit, round=watch.rounds
    )
    text = "\n".join([header, *lines, *watch.problems])
    if redraw:
        out.write("\x1b[H\x1b[J" + text + "\n")
    else:
        out.write(text + "\n\n")
    out.flush()


def _show(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
