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
import contextlib
import math
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError
from pymodbus.exceptions import ModbusException

from collector.config import (
    LANGUAGES,
    ConfigError,
    Language,
    ModbusDevice,
    Signal,
    Table,
    load_config,
    modicon_address,
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
    Problem,
    UnitAnswer,
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
    r"(?:\.(?P<bit>\d{1,2}))?"
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
    where.add_argument(
        "--address", type=int, help="a 0-based address to look around (±1 tried too)"
    )
    where.add_argument(
        "--register",
        metavar="NUMBER",
        help="a manual's 1-based register, e.g. 30001 or 40010 (it says the table; ±1 tried)",
    )
    where.add_argument("--start", type=int, default=0, help="first address of the block (0)")
    find.add_argument("--count", type=int, default=125, help="registers in the block (125)")
    find.add_argument(
        "--max-registers",
        type=int,
        default=125,
        help="registers per request, for devices that take fewer (125)",
    )
    find.add_argument("--name", default="value", help="field name in the snippet (value)")
    find.add_argument("--top", type=int, default=8, help="candidates shown (8)")
    find.set_defaults(func=_find)

    watch = actions.add_parser(
        "watch",
        help="show registers decoded live",
        description="Read signals over and over and show each with its lowest, highest and "
        "how often it changed: start and stop the machine and see which one follows it. "
        "Signals as NAME=TABLE:ADDRESS[.BIT][:TYPE[:ORDER]][*SCALE], e.g. holding:0, "
        "temp=holding:1:int16*0.1, shots=holding:10:uint32:CDAB, running=coil:0, "
        "fault=holding:30.1 (bit 1 of register 30); or every "
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


class _Bad(ValueError):
    """An argument that cannot be used, with the message key that says why."""

    def __init__(self, key: str, **values: Any) -> None:
        super().__init__(key)
        self.key, self.values = key, values


def parse_signal_spec(spec: str) -> dict[str, Any]:
    """`[NAME=]TABLE:ADDRESS[.BIT][:TYPE[:ORDER]][*SCALE]` as a config `signals:` entry."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise _Bad("probe.bad_spec", spec=spec)
    table, address = match["table"], int(match["address"])
    entry: dict[str, Any] = {"name": match["name"] or f"{table}_{address}", "table": table}
    entry["address"] = address
    if match["bit"] is not None:
        entry["bit"] = int(match["bit"])
    bits = table in BIT_TABLES or match["bit"] is not None
    entry["type"] = match["type"] or ("bool" if bits else "uint16")
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
    if bool(args.host) == bool(args.serial_port):
        raise _Bad("probe.bad_link")
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise _Bad("probe.bad_positive", option="--rate")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise _Bad("probe.bad_positive", option="--timeout")
    transport = args.transport or ("rtu" if args.serial_port else "tcp")
    if (transport == "rtu") != bool(args.serial_port):
        raise _Bad("probe.bad_link")
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


def _refuse(lang: Language, exc: Exception) -> int:
    """Say what is wrong with the arguments; exit status 2 as argparse does."""
    if isinstance(exc, _Bad):
        lines = [translate(lang, exc.key, **exc.values)]
    elif isinstance(exc, ValidationError):
        lines = [f"{p.path}: {p.message}" if p.path else p.message
                 for p in validation_problems(exc)]  # fmt: skip
    else:
        lines = [str(exc)]
    for line in lines:
        print(translate(lang, "probe.bad_argument", problem=line), file=sys.stderr)
    return 2


def _say(lang: Language, problem: Problem) -> str:
    return translate(lang, problem.key, **problem.values)


def _link_name(device: ModbusDevice) -> str:
    if device.transport == "rtu":
        return f"{device.serial_port} ({device.baudrate} {device.parity} {device.stopbits})"
    return f"{device.host}:{device.port} ({device.transport})"


async def _open(
    device: ModbusDevice, factory: ClientFactory, rate: float, lang: Language
) -> Prober | None:
    prober = Prober(factory(device, lambda sending, data: data), Pacer(rate))
    try:
        connected = await prober.connect()
    except (OSError, ModbusException):  # a serial port that is not there, one in use
        connected = False
    if not connected:
        print(translate(lang, "probe.no_link", link=_link_name(device)), file=sys.stderr)
        prober.close()
        return None
    return prober


def _interrupted(lang: Language) -> int:
    print(translate(lang, "probe.interrupted"), file=sys.stderr)
    return 130


def _parse_units(text: str) -> list[int]:
    units: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        if not first.isdigit() or not (last.isdigit() or not last):
            raise _Bad("probe.bad_units", units=text)
        low, high = int(first), int(last or first)
        if not (0 <= low <= high <= 255):
            raise _Bad("probe.bad_units", units=text)
        units.extend(range(low, high + 1))
    if not units:
        raise _Bad("probe.bad_units", units=text)
    return units


# -- scan ------------------------------------------------------------------------------------------


def _scan(args: argparse.Namespace, factory: ClientFactory = make_client) -> int:
    lang = _language(args)
    try:
        device = _device(args)
        units = _parse_units(args.units)
        for option in ("resolution", "width", "max_failures"):
            if getattr(args, option) < 1:
                raise _Bad("probe.bad_positive", option="--" + option.replace("_", "-"))
        if not 0 <= args.start < args.end <= 65536:
            raise _Bad("probe.bad_range", first=args.start, end=args.end)
    except (ValidationError, ValueError) as exc:
        return _refuse(lang, exc)
    try:
        return asyncio.run(_scan_async(args, device, units, factory, lang))
    except KeyboardInterrupt:
        return _interrupted(lang)


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
    found_any = False
    try:
        if args.unit is None:
            print(translate(lang, "probe.scan_units", count=len(units), link=_link_name(device)))

            def heard(answer: UnitAnswer) -> None:  # each as it answers: a bus scan is long
                if not answer.present:
                    return
                if answer.exception is None:
                    print(translate(lang, "probe.unit_answers", unit=answer.unit), flush=True)
                else:
                    text = translate(
                        lang, "probe.unit_exception", unit=answer.unit, code=answer.exception
                    )
                    print(text, flush=True)

            answers = await scan_units(prober, units, on_answer=heard)
            found_any = any(a.present for a in answers)
            if not found_any:
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
                found_any = found_any or bool(scan.ranges)
                print(
                    translate(lang, "probe.table_ranges", table=table, ranges=ranges)
                    if ranges
                    else translate(lang, "probe.table_empty", table=table),
                    flush=True,
                )
                if scan.stopped:
                    print(translate(lang, "probe.stopped", why=_say(lang, scan.stopped)))
                if scan.device_silent:  # the other tables would only wait the same
                    break
        seconds = time.monotonic() - started
        print(translate(lang, "probe.requests", requests=prober.requests, seconds=f"{seconds:.1f}"))
    finally:
        prober.close()
    return 0 if found_any else 1


# -- find ------------------------------------------------------------------------------------------


def _find(args: argparse.Namespace, factory: ClientFactory = make_client) -> int:
    lang = _language(args)
    try:
        device = _device(args)
        try:
            expect = parse_display(args.expect)
            tolerance = (
                args.tolerance if args.tolerance is not None else display_tolerance(args.expect)
            )
        except ValueError:
            raise _Bad("probe.not_a_number", text=args.expect) from None
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise _Bad("probe.bad_positive", option="--tolerance")
        if args.top < 1 or not 1 <= args.max_registers <= 125:
            raise _Bad("probe.bad_positive", option="--top/--max-registers")
        table, near = args.table, args.address
        if args.register is not None:
            try:
                table, near = modicon_address(args.register)
            except ValueError:
                raise _Bad("probe.bad_register", register=args.register) from None
            if table not in ("holding", "input"):
                raise _Bad("probe.bad_register", register=args.register)
        if near is not None:
            start = max(0, near - 1)
            count = min(near + 5, 65536) - start  # room for a 64-bit value at +1
        else:
            start, count = args.start, args.count
        if start < 0 or count < 1 or start + count > 65536:
            raise _Bad("probe.bad_range", first=start, end=start + count)
    except (ValidationError, ValueError) as exc:
        return _refuse(lang, exc)
    block = _Block(table, start, count, near)
    try:
        return asyncio.run(_find_async(args, device, expect, tolerance, block, factory, lang))
    except KeyboardInterrupt:
        return _interrupted(lang)


@dataclass(frozen=True)
class _Block:
    table: Table
    start: int
    count: int
    near: int | None


async def _read_line(stdin: TextIO) -> str:
    """A line of standard input without blocking the loop, in a daemon thread of its own: a
    Ctrl-C at the prompt ends the command instead of waiting for the line."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            line = stdin.readline()
        except (OSError, ValueError):
            line = ""

        def deliver() -> None:
            if not future.done():
                future.set_result(line)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver)

    threading.Thread(target=read, name="probe find: stdin", daemon=True).start()
    return await future


async def _find_async(
    args: argparse.Namespace,
    device: ModbusDevice,
    expect: float,
    tolerance: float,
    block: _Block,
    factory: ClientFactory,
    lang: Language,
) -> int:
    prober = await _open(device, factory, args.rate, lang)
    if prober is None:
        return 1
    finder = Finder(block.start, near=block.near)
    stdin = sys.stdin
    try:
        while True:
            if expect == 0:
                print(translate(lang, "probe.zero"), file=sys.stderr)
            try:
                registers = await prober.read_range(
                    device.unit, block.table, block.start, block.count, limit=args.max_registers
                )
            except ProbeError as exc:
                text = translate(lang, "probe.read_failed", problem=_say(lang, exc.problem))
                print(text, file=sys.stderr)
                return 1
            candidates = finder.add(registers, expect, tolerance)
            _print_candidates(args, lang, candidates, len(finder.readings), block)
            if not candidates:
                print(translate(lang, "probe.none"))
                return 1
            if len(candidates) == 1 and len(finder.readings) > 1:
                return 0
            while True:  # the next number on the display; a typo is asked again
                if stdin.isatty():
                    print(translate(lang, "probe.again"), end=" ", flush=True)
                line = await _read_line(stdin)
                if not line.strip():
                    return 0
                try:
                    expect = parse_display(line)
                    tolerance = (
                        args.tolerance if args.tolerance is not None else display_tolerance(line)
                    )
                    break
                except ValueError:
                    print(translate(lang, "probe.not_a_number", text=line.strip()), file=sys.stderr)
                    if not stdin.isatty():
                        return 2
    finally:
        prober.close()


def _print_candidates(
    args: argparse.Namespace,
    lang: Language,
    candidates: list[Candidate],
    readings: int,
    block: _Block,
) -> None:
    print(
        translate(
            lang,
            "probe.found",
            count=len(candidates),
            readings=readings,
            table=block.table,
            first=block.start,
            last=block.start + block.count - 1,
        )
    )
    for rank, candidate in enumerate(candidates[: args.top], 1):
        last = candidate.address + candidate.width - 1
        first = candidate.address
        where = str(first) if last == first else f"{first}–{last}"
        shows = " · ".join(f"{v:.6g}" for v in candidate.values)
        print(
            translate(
                lang,
                "probe.candidate",
                rank=rank,
                table=block.table,
                where=where,
                type=candidate.type,
                order=candidate.order,
                scale=f"{candidate.scale:g}",
                shows=shows,
            )
        )
        snippet = yaml.safe_dump(
            [candidate.signal(args.name, block.table)], default_flow_style=None, sort_keys=False
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
                raise _Bad("probe.bad_watch")
            device = _machine_device(args)
        else:
            if not args.signal:
                raise _Bad("probe.bad_watch")
            device = _device(args, [parse_signal_spec(spec) for spec in args.signal])
        if not (math.isfinite(args.interval) and args.interval > 0):
            raise _Bad("probe.bad_positive", option="--interval")
        if not (math.isfinite(args.rate) and args.rate > 0):
            raise _Bad("probe.bad_positive", option="--rate")
        if args.rounds is not None and args.rounds < 1:
            raise _Bad("probe.bad_positive", option="--rounds")
    except (ValidationError, ValueError, ConfigError) as exc:
        return _refuse(lang, exc)
    try:
        return asyncio.run(_watch_async(args, device, factory, lang, sys.stdout))
    except KeyboardInterrupt:
        return 0


def _machine_device(args: argparse.Namespace) -> ModbusDevice:
    config = load_config(args.config)
    for machine in config.machines:
        if machine.id == args.machine and machine.modbus is not None:
            return machine.modbus
    known = ", ".join(m.id for m in config.machines if m.modbus)
    raise _Bad("probe.no_machine", machine=args.machine, config=str(args.config), known=known)


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
        if signal.bit is not None:
            where += f".{signal.bit}"
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
    problems = [_say(lang, problem) for problem in watch.problems]
    text = "\n".join([header, *lines, *problems])
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
