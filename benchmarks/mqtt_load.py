"""The MQTT benchmark's load: retrofit boards publishing to a broker with paho-mqtt, QoS 1.

    mqtt_load.py --port P --shape tasmota|plain --sources N [--rate R --seconds S | --count C]
                 --timeline FILE

Shapes: `tasmota` — board `plug-NNN` publishes a Tasmota energy SENSOR message (`Time` with
milliseconds, as `Time 4` sets, `ENERGY` with Power/Total/Voltage/Current/Factor…) on
`tele/plug-NNN/SENSOR`; `plain` — machine `machine-NN` publishes one bare number (or ON/OFF) per
signal on `planta/machine-NN/valor/<signal>`. Message k goes to source k mod N.

With `--rate`, messages go out at that fixed total rate for `--seconds` (each source once per
N/R seconds, staggered); with `--count`, that many as fast as the broker acknowledges them (at
most WINDOW unacknowledged). After printing `{"connected": ...}` it waits for a line on stdin
before publishing, so the runner can start its measurement first. At the end it writes the time
each message was handed to paho (epoch s, in order) to `--timeline` and prints one JSON line:
published, acknowledged, first and last publish time, its own CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

WINDOW = 200  # unacknowledged QoS 1 messages at most, in the saturation mode
PLAIN_SIGNALS = ("current", "temperature", "pressure", "running")


Source = tuple[str, Callable[[float], bytes]]  # (topic, payload at a time)


class _Plug:
    """A Tasmota energy plug: a load that wanders around its own base power."""

    def __init__(self, n: int) -> None:
        self.rng = random.Random(n)
        self.base = self.rng.uniform(50, 2500)
        self.total = self.rng.uniform(10, 5000)

    def payload(self, now: float) -> bytes:
        rng = self.rng
        power = max(0, round(self.base + rng.gauss(0, self.base * 0.05)))
        voltage = round(rng.gauss(229, 2))
        factor = round(rng.uniform(0.80, 0.99), 2)
        self.total += power / 3.6e6  # kWh, as if a second had passed
        stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        return json.dumps(
            {
                "Time": stamp[:-6],  # local time without offset, as Tasmota prints it (here UTC)
                "ENERGY": {
                    "TotalStartTime": "2024-03-01T08:12:44",
                    "Total": round(self.total, 3),
                    "Yesterday": 3.21,
                    "Today": 1.234,
                    "Period": 2,
                    "Power": power,
                    "ApparentPower": round(power / factor),
                    "ReactivePower": round(power * 0.3),
                    "Factor": factor,
                    "Voltage": voltage,
                    "Current": round(power / voltage / factor, 3) if voltage else 0.0,
                },
            },
            separators=(",", ":"),
        ).encode()


class _Value:
    """One bare value of a machine: a float as text, or ON/OFF for `running`."""

    def __init__(self, n: int, name: str) -> None:
        self.rng = random.Random(n)
        self.name = name

    def payload(self, now: float) -> bytes:
        rng = self.rng
        if self.name == "running":
            return b"ON" if rng.random() < 0.9 else b"OFF"
        if self.name == "current":
            return f"{rng.uniform(0, 40):.2f}".encode()
        if self.name == "temperature":
            return f"{rng.gauss(60, 5):.1f}".encode()
        return f"{rng.uniform(4, 7):.3f}".encode()


def tasmota_sources(count: int) -> list[Source]:
    """`count` Tasmota energy plugs, plug-000 …"""
    return [(f"tele/plug-{n:03d}/SENSOR", _Plug(n).payload) for n in range(count)]


def plain_sources(count: int) -> list[Source]:
    """`count` signals, PLAIN_SIGNALS in turn over machine-00 …"""
    sources: list[Source] = []
    for n in range(count):
        machine, signal = divmod(n, len(PLAIN_SIGNALS))
        name = PLAIN_SIGNALS[signal]
        sources.append((f"planta/machine-{machine:02d}/valor/{name}", _Value(n, name).payload))
    return sources


class Publisher:
    def __init__(self, port: int) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-load-{random.getrandbits(32):08x}",
            clean_session=True,
        )
        self.client.max_inflight_messages_set(WINDOW)
        self.client.max_queued_messages_set(0)
        self.acked = 0
        self.unacked = 0
        self.connected = threading.Event()
        self.room = threading.Condition()
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        if not self.connected.wait(30):
            raise RuntimeError("the broker did not accept the load generator within 30 s")

    def _on_publish(self, *_: object) -> None:
        with self.room:
            self.acked += 1
            self.unacked -= 1
            self.room.notify()

    def publish(self, topic: str, payload: bytes, *, wait_for_room: bool) -> None:
        with self.room:
            if wait_for_room:
                while self.unacked >= WINDOW:
                    self.room.wait(1.0)
            self.unacked += 1
        self.client.publish(topic, payload, qos=1)

    def finish(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.room:
            while self.unacked > 0 and time.monotonic() < deadline:
                self.room.wait(0.5)
        self.client.disconnect()
        self.client.loop_stop()


def run(args: argparse.Namespace) -> dict[str, float | int]:
    build = tasmota_sources if args.shape == "tasmota" else plain_sources
    sources = build(args.sources)
    publisher = Publisher(args.port)
    print(json.dumps({"connected": True}), flush=True)
    sys.stdin.readline()  # the runner's go
    total = args.count if args.count else math.ceil(args.rate * args.seconds)
    times: list[float] = []
    start = time.time()
    for k in range(total):
        if args.rate:
            due = start + k / args.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
        topic, payload = sources[k % len(sources)]
        now = time.time()
        publisher.publish(topic, payload(now), wait_for_room=not args.rate)
        times.append(now)
    publisher.finish()
    Path(args.timeline).write_text(json.dumps(times))
    return {
        "published": len(times),
        "acknowledged": publisher.acked,
        "first": times[0] if times else start,
        "last": times[-1] if times else start,
        "cpu_s": time.process_time(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--shape", choices=["tasmota", "plain"], required=True)
    parser.add_argument("--sources", type=int, required=True, help="boards (or signals)")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s in all")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=0, help="as fast as acknowledged")
    parser.add_argument("--timeline", required=True)
    args = parser.parse_args(argv)
    if bool(args.count) == bool(args.rate and args.seconds):
        parser.error("give either --rate and --seconds, or --count")
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
