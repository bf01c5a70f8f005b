"""Serve a generated benchmark scenario in its own process, so the simulated devices' CPU never
counts against the contender being measured; request counts come from its control endpoint.

    sim_server.py --devices 20 --registers 100 --port-base 21000 --control-port 20999

Prints one JSON line (`{"ready": true, ...}`) once every device listens, then serves until
SIGTERM or SIGINT. `GET http://127.0.0.1:CONTROL/devices` lists each device's `requests`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from simulators import generate_scenario, run_scenario


async def serve(devices: int, registers: int, port_base: int, control_port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    scenario = generate_scenario(devices=devices, registers=registers, transport="tcp")
    async with run_scenario(
        scenario, host="127.0.0.1", port_base=port_base, seed=1, control_port=control_port
    ) as sim:
        ports = [endpoint.port for endpoint in sim.endpoints.values()]
        print(json.dumps({"ready": True, "devices": devices, "ports": ports}), flush=True)
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--registers", type=int, required=True)
    parser.add_argument("--port-base", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.devices, args.registers, args.port_base, args.control_port))
    except OSError as exc:
        print(f"sim_server: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
