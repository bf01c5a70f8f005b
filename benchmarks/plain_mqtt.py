"""The MQTT benchmark's floor: the plainest paho subscriber that stores what the collector does.

    plain_mqtt.py SPEC.json      (written by mqtt_bench.py; SIGTERM or SIGINT stops it)

QoS 1, clean session false, paho's loop in its own thread; each message is parsed in the
callback (`json.loads` and the same fields for Tasmota SENSOR, a bare number or ON/OFF for the
plain shape), turned into a line of protocol by hand and appended to a list — paho acknowledges
it when the callback returns. The main thread POSTs the list to /write?precision=ms once a
second. No validation, no retries, no health points. On stop it flushes and prints one JSON line:
messages, lines, posts, failed posts.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

# Tasmota ENERGY key → field name, all stored as floats (as the collector's float signals).
TASMOTA_FIELDS = (
    ("power", "Power"),
    ("voltage", "Voltage"),
    ("current", "Current"),
    ("energy_kwh", "Total"),
    ("power_factor", "Factor"),
)


@dataclass
class Tally:
    messages: int = 0
    lines: int = 0
    bad: int = 0
    posts: int = 0
    failed_posts: int = 0


class Subscriber:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.prefix = f"reading,factory={spec['factory']},machine=%s,sector={spec['sector']} "
        self.kinds: dict[str, str] = spec.get("kinds", {})  # plain shape: signal → float | bool
        self.lines: list[str] = []
        self.last_ms: dict[str, int] = {}
        self.tally = Tally()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=spec["client_id"],
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_tasmota if spec["shape"] == "tasmota" else self._on_plain

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(self.spec["filter"], qos=1)

    def _on_tasmota(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        self.tally.messages += 1
        try:
            document = json.loads(message.payload)
            energy = document["ENERGY"]
            moment = datetime.fromisoformat(document["Time"]).replace(tzinfo=UTC)
            fields = ",".join(f"{name}={float(energy[key])!r}" for name, key in TASMOTA_FIELDS)
        except (ValueError, KeyError, TypeError):
            self.tally.bad += 1
            return
        machine = message.topic.split("/")[1]
        time_ms = round(moment.timestamp() * 1000)
        self.lines.append(f"{self.prefix % machine}{fields} {time_ms}")

    def _on_plain(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        self.tally.messages += 1
        _, machine, _, name = message.topic.split("/")
        text = message.payload.decode()
        kind = self.kinds.get(name)
        if kind == "bool":
            value = "true" if text.strip().upper() in ("ON", "TRUE", "1") else "false"
        elif kind == "float":
            try:
                value = repr(float(text))
            except ValueError:
                self.tally.bad += 1
                return
        else:
            self.tally.bad += 1
            return
        # Stamped on arrival; one ms apart per machine, so a burst does not overwrite itself.
        time_ms = max(time.time_ns() // 1_000_000, self.last_ms.get(machine, 0) + 1)
        self.last_ms[machine] = time_ms
        self.lines.append(f"{self.prefix % machine}{name}={value} {time_ms}")

    def flush(self, http: httpx.Client) -> None:
        lines, self.lines = self.lines, []  # the swap is atomic under the GIL
        if not lines:
            return
        self.tally.posts += 1
        body = ("\n".join(lines) + "\n").encode()
        try:
            response = http.post(
                "/write",
                params={"db": self.spec["database"], "precision": "ms"},
                content=body,
            )
            if response.status_code == 204:
                self.tally.lines += len(lines)
            else:
                self.tally.failed_posts += 1
        except httpx.HTTPError:
            self.tally.failed_posts += 1

    def run(self, stop: threading.Event) -> None:
        self.client.connect(self.spec["host"], self.spec["port"], keepalive=30)
        self.client.loop_start()
        try:
            with httpx.Client(base_url=self.spec["influx_url"], timeout=10.0) as http:
                while not stop.wait(1.0):
                    self.flush(http)
                self.client.disconnect()
                self.client.loop_stop()
                self.flush(http)
        finally:
            self.client.loop_stop()


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: plain_mqtt.py SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(sys.argv[1]).read_text())
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    subscriber = Subscriber(spec)
    subscriber.run(stop)
    print(json.dumps(subscriber.tally.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
