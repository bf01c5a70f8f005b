"""CPU per message of each stage of aguante's MQTT path, and of the plain subscriber's callback,
timed in-process without a profiler (cProfile's per-call cost would inflate the stages made of
many small calls), on the MQTT benchmark's own payloads.

    .venv/bin/python benchmarks/stages_mqtt.py [--messages 20000] [--rounds 5]

No broker or InfluxDB: the stages are called directly, as the collector calls them. The
hand-over (the source's paho callback on the event loop → its inbox → its consumer, in turns of
READ_BURST messages as in a burst) is timed with `handle` left out. What no stage here covers —
paho reading and decoding packets, the acks, the HTTP POSTs, the event loop's turns — is the
difference between these sums and the benchmark's CPU per message.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from mqtt_bench import MQTT_SHAPES, AguanteMqtt, MqttShape, MqttTarget, PlainSubscriber
from mqtt_load import plain_sources, tasmota_sources
from plain_mqtt import Subscriber

from collector.app import Collector
from collector.config import Config, load_config
from collector.delivery import Delivery
from collector.lineprotocol import encode_point
from collector.schema import Point
from collector.sinks.memory import MemorySink
from collector.sources import Reading
from collector.sources.mqtt import READ_BURST, Delivered, MqttSource


def messages(shape: MqttShape, count: int) -> list[tuple[str, bytes]]:
    sources = (tasmota_sources if shape.payload == "tasmota" else plain_sources)(shape.sources)
    now = time.time()
    out = []
    for k in range(count):
        topic, payload = sources[k % len(sources)]
        out.append((topic, payload(now + k / 1000)))
    return out


def cpu_us(function: Callable[[], object], count: int, rounds: int) -> float:
    """Median over `rounds` of process CPU per item, µs, of `function` doing `count` items."""
    results = []
    for _ in range(rounds):
        started = time.process_time()
        function()
        results.append((time.process_time() - started) / count * 1e6)
    return statistics.median(results)


def handover_us(config: Config, raw: list[paho.MQTTMessage], rounds: int) -> float:
    """The source's `_on_message` (a Delivered and its ack, into the inbox) → its consumer, in
    turns of READ_BURST messages, per message; `handle` answers with one ready reading, so only
    the hand-over is timed."""
    count = len(raw)
    reading = Reading("m", 0, {"v": 1.0})

    def one_round() -> None:
        source = MqttSource(config)
        source.handle = lambda delivered: [reading]  # type: ignore[method-assign]
        client: Any = None  # the ack is made, not called: it would need a connection
        taken = 0

        def consume(readings: Sequence[Reading]) -> None:
            nonlocal taken
            taken += len(readings)

        source._consume = consume
        for k, message in enumerate(raw):
            source._on_message(client, None, message)
            if k % READ_BURST == READ_BURST - 1:
                source._deliver()  # a turn of the loop per READ_BURST packets read
        source._deliver()
        if taken != count:
            raise RuntimeError(f"handed over {taken} of {count} readings")

    return cpu_us(one_round, count, rounds)


def stages(shape: MqttShape, count: int, rounds: int, workdir: Path) -> list[tuple[str, float]]:
    target = MqttTarget(shape, 1883, "http://127.0.0.1:8086", "stages", workdir, "stages")
    config = load_config(AguanteMqtt().command(target)[-1])
    source = MqttSource(config)
    collector = Collector(config, sink=MemorySink(), sources=[source])
    batch = messages(shape, count)
    received = time.time_ns() // 1_000_000
    delivered = [Delivered(topic, payload, received, None) for topic, payload in batch]
    readings: list[Reading] = []
    points: list[Point] = []

    def handle() -> None:
        readings.clear()
        for message in delivered:
            readings.extend(source.handle(message))

    def to_points() -> None:
        points.clear()
        points.extend(collector.to_point(r) for r in readings)

    def submit() -> None:  # the collector submits each reading's point on its own
        delivery = Delivery(
            MemorySink(),
            batch_size=10 * count,
            max_points=10 * count,
            quarantine_path=workdir / "quarantine.jsonl",
        )
        for point in points:
            delivery.submit([point])

    def encode() -> None:  # InfluxDBSink.write's work for one batch
        "".join(encode_point(p) + "\n" for p in points).encode()

    raw = []
    for mid, (topic, payload) in enumerate(batch):
        message = paho.MQTTMessage(mid % 65535 + 1, topic.encode())
        message.payload = payload
        message.qos = 1  # as the benchmark's load sends them: each gets its ack
        raw.append(message)

    results = [
        ("aguante: _on_message → inbox → consumer", handover_us(config, raw, rounds)),
        ("aguante: MqttSource.handle (route, parse, coerce, stamp)", cpu_us(handle, count, rounds)),
        ("aguante: Collector.to_point", cpu_us(to_points, count, rounds)),
        (
            "aguante: Delivery.submit per reading (drop_nonfinite, buffer)",
            cpu_us(submit, count, rounds),
        ),
        ("aguante: encode_point + join (sink)", cpu_us(encode, count, rounds)),
    ]

    spec_path = Path(PlainSubscriber().command(target)[-1])
    subscriber = Subscriber(json.loads(spec_path.read_text()))
    callback: Any = subscriber.client.on_message

    def plain() -> None:
        subscriber.lines = []
        for message in raw:
            callback(subscriber.client, None, message)

    def plain_body() -> None:
        ("\n".join(subscriber.lines) + "\n").encode()

    results += [
        ("plain: on_message (parse, line by hand)", cpu_us(plain, count, rounds)),
        ("plain: join the batch", cpu_us(plain_body, count, rounds)),
    ]
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--shapes", default="mqtt-tasmota,mqtt-plain", help="payload shapes (mqtt-tasmota,…)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aguante-stages-") as tmp:
        for name in args.shapes.split(","):
            shape = MQTT_SHAPES[name.strip()]
            print(
                f"== {shape.payload} payloads, {args.messages:,} messages, median of "
                f"{args.rounds} rounds: CPU µs per message"
            )
            rows = stages(shape, args.messages, args.rounds, Path(tmp))
            ours = sum(us for label, us in rows if label.startswith("aguante"))
            plain = sum(us for label, us in rows if label.startswith("plain"))
            for label, us in rows:
                print(f"{us:8.2f}  {label}")
            print(f"{ours:8.2f}  aguante, these stages in all")
            print(f"{plain:8.2f}  plain, these stages in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
