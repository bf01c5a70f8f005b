"""`aguante simulate`: serve a scenario's devices until Ctrl-C (plugged into the `aguante` command
through the `aguante.commands` entry point, so the collector never imports the simulators)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import sys
from typing import TextIO

from simulators.scenario import Scenario, ScenarioError, load_scenario, packaged_scenarios
from simulators.simulator import FAULT_KINDS, Simulator, parse_fault, run_scenario

__all__ = ["print_map", "register", "simulate"]

# The boards' login on a broker that refuses anonymous clients (docker-compose.yml's demo).
MQTT_USERNAME_VARIABLE = "AGUANTE_SIMULATOR_MQTT_USERNAME"
MQTT_PASSWORD_VARIABLE = "AGUANTE_SIMULATOR_MQTT_PASSWORD"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "simulate",
        help="serve simulated Modbus machines and MQTT boards (no hardware needed)",
        description="Serve a scenario's simulated machines over Modbus TCP, RTU-over-TCP and a "
        "pseudo-terminal RTU line, and (with --mqtt) run its retrofit boards publishing to an "
        "MQTT broker, until Ctrl-C.",
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        help=f"packaged scenario ({', '.join(packaged_scenarios())}) or a YAML path",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port-base", type=int, default=5020, help="port of offset 0 (5020)")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    parser.add_argument(
        "--start",
        type=dt.datetime.fromisoformat,
        help="simulated start, plant local time, e.g. 2025-03-03T06:00 (default: now)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="DEVICE=KIND[:ARG]",
        help=f"fault at start ({', '.join(FAULT_KINDS)}); DEVICE may be a machine, a board "
        "or 'all'",
    )
    parser.add_argument(
        "--mqtt",
        metavar="URL",
        help="also run the scenario's boards, publishing to this broker (mqtt://host:port); "
        f"a broker that wants a login: {MQTT_USERNAME_VARIABLE} and {MQTT_PASSWORD_VARIABLE}",
    )
    parser.add_argument(
        "--board-period",
        type=float,
        metavar="SECONDS",
        help="simulated seconds between every board's telemetry (default: each board's period)",
    )
    parser.add_argument(
        "--control-port", type=int, help="HTTP control port on 127.0.0.1 (default port base - 1)"
    )
    parser.add_argument(
        "--list", action="store_true", help="list scenarios, or print a scenario's map, and exit"
    )
    parser.set_defaults(func=simulate)


def simulate(args: argparse.Namespace) -> int:
    if args.scenario is None:
        if args.list:
            print("\n".join(packaged_scenarios()))
            return 0
        print(
            "aguante simulate: give a scenario name or YAML path (--list shows them)",
            file=sys.stderr,
        )
        return 2
    username = os.environ.get(MQTT_USERNAME_VARIABLE) or None
    password = os.environ.get(MQTT_PASSWORD_VARIABLE) or None
    if args.mqtt and username is not None and password is None:
        print(
            f"aguante simulate: {MQTT_USERNAME_VARIABLE} is {username!r} but "
            f"{MQTT_PASSWORD_VARIABLE} is empty: set it (in .env for docker compose's demo)",
            file=sys.stderr,
        )
        return 2
    try:
        scenario = load_scenario(args.scenario)
        faults = [parse_fault(f) for f in args.fault]
        control_port = args.port_base - 1 if args.control_port is None else args.control_port
        sim = run_scenario(
            scenario,
            host=args.host,
            port_base=args.port_base,
            seed=args.seed,
            speed=args.speed,
            start=args.start,
            faults=faults,
            control_port=None if args.list else control_port,
            mqtt_url=args.mqtt,
            board_period=args.board_period,
            mqtt_username=username,
            mqtt_password=password,
        )
    except (ScenarioError, ValueError, KeyError) as exc:
        print(f"aguante simulate: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    print_map(sim, scenario, sys.stdout)
    if args.list:
        return 0
    try:
        asyncio.run(_serve(sim, control_port))
    except OSError as exc:
        print(f"aguante simulate: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(sim: Simulator, control_port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with sim:
            print(
                f"serving; control: http://127.0.0.1:{control_port}/devices; "
                f"simulated time {sim.now():%Y-%m-%d %H:%M} ({sim.clock.speed:g}x); Ctrl-C stops",
                flush=True,
            )
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("stopped", flush=True)


def print_map(sim: Simulator, scenario: Scenario, out: TextIO) -> None:
    """Each device's endpoint and a one-line summary of every signal of its machines, then each
    board's topics."""
    print(f"scenario {scenario.name} ({scenario.timezone})", file=out)
    for device in scenario.devices:
        endpoint = sim.endpoints[device.name]
        where = (
            f"pty {endpoint.port}"
            if endpoint.transport == "rtu"
            else f"{endpoint.host}:{endpoint.port}"
        )
        print(f"\n{device.name}  {endpoint.transport}  {where}", file=out)
        for machine in device.machines:
            print(f"  unit {machine.unit}: {machine.id} ({machine.kind})", file=out)
            for s in machine.signals:
                extra = f" bit {s.bit}" if s.bit is not None else ""
                extra += f" x{s.count}" if s.count else ""
                extra += f" {s.order}" if s.order != "ABCD" else ""
                extra += f" scale {s.scale:g}" if s.scale != 1 else ""
                extra += " rw" if s.writable else ""
                print(f"    {s.table:8} {s.address:5}  {s.type:7}{extra:18} {s.name}", file=out)
    if scenario.boards:
        running = f"publishing to {sim.mqtt_url}" if sim.mqtt_url else "not running: give --mqtt"
        print(f"\nboards ({running})", file=out)
    for board in scenario.boards:
        client = board.client_id or board.name
        print(f"  {board.name}: {board.firmware} on {board.machine}, client id {client}, "
              f"every {sim.board_period or board.period:g} s", file=out)  # fmt: skip
        for topic in sim.board_topics_of(board.name):
            print(f"    {topic}", file=out)
