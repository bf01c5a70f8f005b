"""Retrofit boards publishing over MQTT as their firmware does: a Tasmota energy plug, an ESPHome
node, a Shelly Gen2 relay, custom JSON and plain-value sketches, a Sparkplug B edge node.

Each board is one paho-mqtt client with its own client id and Last Will, driven by the asyncio
loop through paho's socket callbacks (no thread), publishing QoS 1 on the simulated clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import re
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.floor import MachineModel, SimClock
from simulators.scenario import Board, BoardValue, State
from simulators.sparkplug import Metric, encode_metric, encode_payload, field_bytes, field_varint

__all__ = [
    "OVERSIZE",
    "CustomJson",
    "ESPHome",
    "Firmware",
    "LiveBoard",
    "Message",
    "PlainValues",
    "Shelly",
    "Sparkplug",
    "Tasmota",
    "firmware_for",
]

OVERSIZE = 100_000  # bytes of an oversize payload: past the collector's default max_payload
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_NUMBER = re.compile(rb":\s*(-?\d+(?:\.\d+)?)")


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool = False


def _uptime(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    return f"{days}T{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


class Firmware:
    """What a board publishes, and when: on connecting, every period, and on a clean exit."""

    binary = False  # payloads are bytes, not text (Sparkplug)

    def __init__(self, board: Board, model: MachineModel, zone: dt.tzinfo) -> None:
        self.board = board
        self.model = model
        self.zone = zone
        self.boot: float | None = None  # simulated time of power-on
        self.connections = 0

    # -- what every firmware says ---------------------------------------------------------------

    def will(self) -> Message:
        raise NotImplementedError

    def hello(self, t: float) -> list[Message]:
        """On each (re)connection: availability, births."""
        raise NotImplementedError

    def telemetry(self, t: float) -> list[Message]:
        raise NotImplementedError

    def goodbye(self, t: float) -> list[Message]:
        """Before a clean disconnect: the board says itself what its will would have said."""
        return [self.will()]

    def lost(self) -> None:
        """The connection went away (the next one may need a new will)."""

    def commands(self) -> list[str]:
        """Topics the board listens on for commands."""
        return []

    def command(self, topic: str, payload: bytes, t: float) -> list[Message]:
        """What the board publishes in answer to a command."""
        return []

    def topics(self) -> list[str]:
        """Every topic this board publishes on."""
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------------

    def value(self, spec: BoardValue, t: float) -> float | int | bool | str:
        raw = self.model.follow(f"{self.board.name}/{spec.name}", spec.value, t)
        kind = spec.kind
        if kind == "bool":
            return bool(raw)
        if kind == "string":
            return str(raw)
        if kind == "int":
            number = float(raw)
            return math.floor(number) if spec.value.accumulate is not None else round(number)
        return round(float(raw), spec.decimals)

    def named(self, name: str) -> BoardValue | None:
        return next((v for v in self.board.values if v.name == name), None)

    def energy_between(self, rates: dict[State, float], start: float, end: float) -> float:
        """The integral of an `accumulate` rule between two simulated times (minute by minute,
        without touching the machine's accumulator cache)."""
        total, at = 0.0, start
        while at < end:
            stop = min((math.floor(at / 60) + 1) * 60, end)
            total += rates.get(self.model.state_at(at), 0.0) * (stop - at)
            at = stop
        return total

    def local_time(self, t: float) -> str:
        return dt.datetime.fromtimestamp(t, self.zone).strftime("%Y-%m-%dT%H:%M:%S")

    def malformed(self, message: Message, n: int) -> Message:
        """The n-th garbage payload: truncated, text for a number, invalid UTF-8, oversize."""
        payload, variant = message.payload, n % 4
        if payload.startswith(b"{"):
            if variant == 0:
                garbage = payload[: len(payload) // 2]
            elif variant == 1 and _NUMBER.search(payload):
                garbage = _NUMBER.sub(b': "n/a"', payload, count=1)
            elif variant in (1, 2):
                garbage = payload[:2] + b"\xff\xfe\xc3\x28" + payload[2:]
            else:
                garbage = b'{"debug":"' + b"x" * OVERSIZE + b'",' + payload[1:]
        else:
            garbage = [b"12.5.3", b"ERROR", b"\xff\xfe" + payload, b"9" * OVERSIZE][variant]
        return message._replace(payload=garbage)


class Tasmota(Firmware):
    """tele/<topic>/SENSOR and STATE every TelePeriod, tele/<topic>/LWT Online/Offline."""

    def __init__(self, board: Board, model: MachineModel, zone: dt.tzinfo) -> None:
        super().__init__(board, model, zone)
        self._last_total: float | None = None
        self._day: dt.date | None = None
        self._today = self._yesterday = 0.0
        self._counted_to = 0.0

    def _tele(self, kind: str) -> str:
        return f"tele/{self.board.topic}/{kind}"

    def topics(self) -> list[str]:
        return [self._tele("SENSOR"), self._tele("STATE"), self._tele("LWT")]

    def will(self) -> Message:
        return Message(self._tele("LWT"), b"Offline", True)

    def hello(self, t: float) -> list[Message]:
        return [Message(self._tele("LWT"), b"Online", True)]

    def _today_and_yesterday(self, t: float, rates: dict[State, float]) -> tuple[float, float]:
        day = dt.datetime.fromtimestamp(t, self.zone).date()
        midnight = dt.datetime.combine(day, dt.time(), self.zone).timestamp()
        if self._day != day:
            if self._day is not None and self._day == day - dt.timedelta(days=1):
                self._yesterday = self._today + self.energy_between(
                    rates, self._counted_to, midnight
                )
            else:
                before = midnight - 86400
                self._yesterday = self.energy_between(rates, before, midnight)
            self._day, self._today, self._counted_to = day, 0.0, midnight
        self._today += self.energy_between(rates, self._counted_to, t)
        self._counted_to = max(self._counted_to, t)
        return self._today, self._yesterday

    def telemetry(self, t: float) -> list[Message]:
        total_spec = self.named("total")
        assert total_spec is not None
        power = round(float(self.value(self._spec("power"), t)))
        voltage = round(float(self.value(self._spec("voltage"), t)))
        factor = round(float(self.value(self._spec("factor"), t)), 2) if power > 0 else 0.0
        relay = self.named("relay")
        on = bool(self.value(relay, t)) if relay is not None else True
        total = float(self.model.follow(f"{self.board.name}/total", total_spec.value, t))
        today, yesterday = self._today_and_yesterday(t, total_spec.value.accumulate or {})
        period = 0 if self._last_total is None else round((total - self._last_total) * 1000)
        self._last_total = total
        apparent = round(power / factor) if factor > 0 else 0
        reactive = round(math.sqrt(max(apparent**2 - power**2, 0)))
        current = round(apparent / voltage, 3) if voltage > 0 else 0.0
        now = self.local_time(t)
        uptime = t - (self.boot or t)
        state = {
            "Time": now,
            "Uptime": _uptime(uptime),
            "UptimeSec": int(uptime),
            "Heap": 26,
            "SleepMode": "Dynamic",
            "Sleep": 50,
            "LoadAvg": 19,
            "MqttCount": self.connections,
            "POWER": "ON" if on else "OFF",
            "Wifi": {"AP": 1, "SSId": "cooperativa", "BSSId": "30:B5:C2:5D:70:72", "Channel": 11,
                     "Mode": "11n", "RSSI": 74, "Signal": -63, "LinkCount": self.connections,
                     "Downtime": "0T00:00:03"},
        }  # fmt: skip
        sensor = {
            "Time": now,
            "ENERGY": {
                "TotalStartTime": "2021-06-01T08:00:00",
                "Total": round(total, 3),
                "Yesterday": round(yesterday, 3),
                "Today": round(today, 3),
                "Period": period,
                "Power": power,
                "ApparentPower": apparent,
                "ReactivePower": reactive,
                "Factor": factor,
                "Voltage": voltage,
                "Current": current,
            },
        }
        return [
            Message(self._tele("STATE"), _json(state)),
            Message(self._tele("SENSOR"), _json(sensor)),
        ]

    def _spec(self, name: str) -> BoardValue:
        spec = self.named(name)
        assert spec is not None  # the scenario checks metering boards have every quantity
        return spec


class ESPHome(Firmware):
    """<node>/sensor/<id>/state as text, binary_sensor ON/OFF, <node>/status online/offline;
    states are retained, as ESPHome's MQTT component does by default."""

    def _state_topic(self, spec: BoardValue) -> str:
        component = {"bool": "binary_sensor", "string": "text_sensor"}.get(spec.kind, "sensor")
        return f"{self.board.topic}/{component}/{spec.name}/state"

    def topics(self) -> list[str]:
        return [self._state_topic(v) for v in self.board.values] + [f"{self.board.topic}/status"]

    def will(self) -> Message:
        return Message(f"{self.board.topic}/status", b"offline", True)

    def hello(self, t: float) -> list[Message]:
        return [Message(f"{self.board.topic}/status", b"online", True)]

    def telemetry(self, t: float) -> list[Message]:
        return [
            Message(self._state_topic(spec), _text(self.value(spec, t), spec.decimals), True)
            for spec in self.board.values
        ]


class Shelly(Firmware):
    """Shelly Plus 1PM (Gen2): <prefix>/status/switch:0 JSON, <prefix>/online true/false."""

    def topics(self) -> list[str]:
        return [f"{self.board.topic}/status/switch:0", f"{self.board.topic}/online"]

    def will(self) -> Message:
        return Message(f"{self.board.topic}/online", b"false", True)

    def hello(self, t: float) -> list[Message]:
        return [Message(f"{self.board.topic}/online", b"true", True)]

    def telemetry(self, t: float) -> list[Message]:
        energy = self.named("energy")
        assert energy is not None
        rates = energy.value.accumulate or {}
        apower = float(self.value(self._get("apower"), t))
        voltage = float(self.value(self._get("voltage"), t))
        output_spec, temp_spec = self.named("output"), self.named("temperature")
        output = bool(self.value(output_spec, t)) if output_spec else True
        device_temp = float(self.value(temp_spec, t)) if temp_spec else 41.3
        minute = math.floor(t / 60) * 60
        by_minute = [
            round(self.energy_between(rates, minute - 60 * (i + 1), minute - 60 * i) * 1000, 3)
            for i in range(3)
        ]
        total = float(self.model.follow(f"{self.board.name}/energy", energy.value, t))
        status = {
            "id": 0,
            "source": "timer",
            "output": output,
            "apower": round(apower, 1),
            "voltage": round(voltage, 1),
            "current": round(apower / voltage, 3) if voltage > 0 else 0.0,
            "aenergy": {"total": round(total, 3), "by_minute": by_minute, "minute_ts": minute},
            "temperature": {"tC": round(device_temp, 1), "tF": round(device_temp * 9 / 5 + 32, 1)},
        }
        return [Message(f"{self.board.topic}/status/switch:0", _json(status))]

    def _get(self, name: str) -> BoardValue:
        spec = self.named(name)
        assert spec is not None
        return spec


class CustomJson(Firmware):
    """A home-made ESP32 sketch: one JSON document on one topic; online/offline on
    estado/<client id> (retained), since its author had to put them somewhere."""

    def _status(self) -> str:
        return f"estado/{self.board.client_id or self.board.name}"

    def topics(self) -> list[str]:
        return [self.board.topic, self._status()]

    def will(self) -> Message:
        return Message(self._status(), b"offline", True)

    def hello(self, t: float) -> list[Message]:
        return [Message(self._status(), b"online", True)]

    def telemetry(self, t: float) -> list[Message]:
        document: dict[str, Any] = {}
        for spec in self.board.values:
            _put(document, spec.name, self.value(spec, t))
        return [Message(self.board.topic, _json(document))]


class PlainValues(CustomJson):
    """A home-made sketch publishing one bare value per topic: <topic>/<name> → `12.5`."""

    def topics(self) -> list[str]:
        return [f"{self.board.topic}/{v.name}" for v in self.board.values] + [self._status()]

    def telemetry(self, t: float) -> list[Message]:
        return [
            Message(f"{self.board.topic}/{spec.name}", _text(self.value(spec, t), spec.decimals))
            for spec in self.board.values
        ]


_SPARKPLUG_TYPES = {"float": "Double", "float32": "Float", "int": "Int64", "bool": "Boolean",
                    "string": "String"}  # fmt: skip


class Sparkplug(Firmware):
    """A Sparkplug B edge node with one device: NBIRTH/DBIRTH with names, aliases and data
    types, NDATA/DDATA by alias, seq 0–255, NDEATH (with bdSeq) as the will, DDEATH while the
    machine is off."""

    binary = True
    _REBIRTH, _UPTIME, _FIRST_DEVICE_ALIAS = 1, 2, 10

    def __init__(self, board: Board, model: MachineModel, zone: dt.tzinfo) -> None:
        super().__init__(board, model, zone)
        self.group, self.node, self.device = board.topic.split("/")
        self.bd_seq = 0
        self.seq = 0
        self.rebirths = 0  # rebirth requests answered
        self.device_alive = False

    def _topic(self, kind: str) -> str:
        if kind.startswith("N"):
            return f"spBv1.0/{self.group}/{kind}/{self.node}"
        return f"spBv1.0/{self.group}/{kind}/{self.node}/{self.device}"

    def topics(self) -> list[str]:
        kinds = ("NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH")
        return [self._topic(k) for k in kinds]

    def _next_seq(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def _bd_seq_metric(self) -> Metric:
        return Metric("Int64", self.bd_seq, name="bdSeq")

    def will(self) -> Message:
        return Message(self._topic("NDEATH"), encode_payload([self._bd_seq_metric()]), False)

    def commands(self) -> list[str]:
        return [f"spBv1.0/{self.group}/NCMD/{self.node}"]

    def command(self, topic: str, payload: bytes, t: float) -> list[Message]:
        # A host application that missed the births asks for them again with the metric
        # "Node Control/Rebirth" = true. Looking for the name in the bytes is enough for a
        # simulator and keeps it free of a protobuf reader.
        if b"Node Control/Rebirth" in payload:
            self.rebirths += 1
            return self.hello(t)
        return []

    def lost(self) -> None:
        self.bd_seq = (self.bd_seq + 1) % 256  # the next session's will and birth carry it
        self.device_alive = False

    def _uptime(self, t: float) -> int:
        return int(t - (self.boot or t))

    def hello(self, t: float) -> list[Message]:
        ms = int(t * 1000)
        self.seq = 0
        metrics = [
            self._bd_seq_metric(),
            Metric("Boolean", False, name="Node Control/Rebirth", alias=self._REBIRTH),
            Metric("Int64", self._uptime(t), name="Uptime", alias=self._UPTIME, timestamp=ms),
        ]
        out = [Message(self._topic("NBIRTH"), encode_payload(metrics, timestamp=ms, seq=0))]
        self.seq = 1
        self.device_alive = False
        if self.model.state_at(t) != "off":
            out.append(self._dbirth(t))
        return out

    def _device_metrics(self, t: float, *, named: bool) -> list[Metric]:
        ms = int(t * 1000)
        return [
            Metric(
                _SPARKPLUG_TYPES[spec.kind],
                self.value(spec, t),
                name=spec.name if named else None,
                alias=self._FIRST_DEVICE_ALIAS + index,
                timestamp=ms,
            )
            for index, spec in enumerate(self.board.values)
        ]

    def _dbirth(self, t: float) -> Message:
        self.device_alive = True
        metrics = self._device_metrics(t, named=True)
        payload = encode_payload(metrics, timestamp=int(t * 1000), seq=self._next_seq())
        return Message(self._topic("DBIRTH"), payload)

    def _ddeath(self, t: float) -> Message:
        self.device_alive = False
        payload = encode_payload([], timestamp=int(t * 1000), seq=self._next_seq())
        return Message(self._topic("DDEATH"), payload)

    def telemetry(self, t: float) -> list[Message]:
        ms = int(t * 1000)
        uptime = Metric("Int64", self._uptime(t), alias=self._UPTIME, timestamp=ms)
        ndata = encode_payload([uptime], timestamp=ms, seq=self._next_seq())
        out = [Message(self._topic("NDATA"), ndata)]
        off = self.model.state_at(t) == "off"
        if off and self.device_alive:
            out.append(self._ddeath(t))
        elif not off and not self.device_alive:
            out.append(self._dbirth(t))
        elif not off:
            metrics = self._device_metrics(t, named=False)
            payload = encode_payload(metrics, timestamp=ms, seq=self._next_seq())
            out.append(Message(self._topic("DDATA"), payload))
        return out

    def goodbye(self, t: float) -> list[Message]:
        out = [self._ddeath(t)] if self.device_alive else []
        return [*out, self.will()]

    def malformed(self, message: Message, n: int) -> Message:
        payload, variant = message.payload, n % 4
        if variant == 0:  # cut inside the first metric: a length that runs past the end
            garbage = payload[: max(len(payload) // 2, 1)]
        elif variant == 1:  # a Double metric carrying text
            bad = Metric("String", "n/a", alias=self._FIRST_DEVICE_ALIAS)
            raw = field_bytes(2, _with_datatype(bad, 10))
            garbage = payload + raw
        elif variant == 2:  # a metric name that is not UTF-8
            garbage = payload + encode_payload([Metric("Double", 1.0, name=b"\xff\xfe\xc3\x28")])
        else:
            garbage = payload + field_bytes(4, b"x" * OVERSIZE)  # uuid (field 4), far too big
        return message._replace(payload=garbage)


def _with_datatype(metric: Metric, datatype: int) -> bytes:
    body = encode_metric(metric)
    right = field_varint(4, 12)  # String
    return body.replace(right, field_varint(4, datatype), 1)


_FIRMWARES: dict[str, type[Firmware]] = {
    "tasmota": Tasmota,
    "esphome": ESPHome,
    "shelly": Shelly,
    "json": CustomJson,
    "plain": PlainValues,
    "sparkplug": Sparkplug,
}


def firmware_for(board: Board, model: MachineModel, zone: dt.tzinfo) -> Firmware:
    return _FIRMWARES[board.firmware](board, model, zone)


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _text(value: float | int | bool | str, decimals: int) -> bytes:
    if isinstance(value, bool):
        return b"ON" if value else b"OFF"
    if isinstance(value, float):
        return f"{value:.{decimals}f}".encode()
    return str(value).encode()


def _put(document: dict[str, Any], path: str, value: object) -> None:
    """Set `value` at a path like sensors[0].temp, creating objects and lists on the way."""
    tokens: list[str | int] = [key if key else int(index) for key, index in _TOKEN.findall(path)]
    node: Any = document
    for token, following in zip(tokens, [*tokens[1:], None], strict=True):
        last = following is None
        empty: object = value if last else ([] if isinstance(following, int) else {})
        if isinstance(token, int):
            while len(node) <= token:
                node.append(None)
            if node[token] is None or last:
                node[token] = empty
        elif token not in node or last:
            node[token] = empty
        node = node[token]


class LiveBoard:
    """One board's MQTT client on the event loop: connects, publishes on the simulated clock,
    and takes the faults `drop`, `malformed` and `burst`."""

    def __init__(
        self,
        firmware: Firmware,
        clock: SimClock,
        host: str,
        port: int,
        *,
        period: float,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.firmware = firmware
        self.board = firmware.board
        self.clock = clock
        self.host, self.port = host, port
        self.period = period
        self.keepalive = keepalive
        self.client_id = self.board.client_id or self.board.name
        self.connected = False
        self.dropped = False
        self.malformed: int | None = None  # messages left to spoil; -1: until cleared
        self.published = 0
        self.last: dict[str, bytes] = {}
        self.error: str | None = None
        self.on_fault_over: Callable[[str], None] = lambda name: None
        self._garbage_sent = 0
        self._next_due = 0.0
        self._socket_open = False
        self._answered = asyncio.Event()  # a CONNACK came (accepted or not)
        self._closed = asyncio.Event()  # no socket
        self._closed.set()
        self._acked = asyncio.Event()  # every message of a burst acknowledged
        self._pending: set[int] = set()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client = self._client
        if username is not None:
            client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    # -- paho's callbacks (all on the event loop's thread) --------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._socket_open = True
        self._closed.clear()
        self._loop.add_reader(sock, client.loop_read)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._socket_open = False
        self._closed.set()
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._answered.set()
        if reason.is_failure:
            self.error = f"broker refused {self.client_id}: {reason}"
            return
        self.connected, self.error = True, None
        self.firmware.connections += 1
        t = self.clock.now()
        if self.firmware.boot is None:
            self.firmware.boot = t
        for topic in self.firmware.commands():
            client.subscribe(topic, qos=0)
        for message in self.firmware.hello(t):
            self._publish(message)
        self._telemetry(t)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.connected:
            self.firmware.lost()
        self.connected = False
        self._acked.set()  # nothing more will be acknowledged on this link

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        for answer in self.firmware.command(
            message.topic, bytes(message.payload), self.clock.now()
        ):
            self._publish(answer)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._pending.discard(mid)
        if not self._pending:
            self._acked.set()

    # -- life -----------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection (a blocking TCP connect, instant on a LAN); raises OSError."""
        will = self.firmware.will()
        self._client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        self._answered.clear()
        self._client.connect(self.host, self.port, keepalive=self.keepalive)

    async def wait_connected(self, seconds: float) -> bool:
        """Whether the broker accepted the connection within `seconds`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._answered.wait()
        return self.connected

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"board {self.board.name}")

    async def _run(self) -> None:
        backoff, retry_at, misc_at = 0.5, 0.0, 0.0
        while True:
            wall = time.monotonic()
            if not self._socket_open and not self.dropped and wall >= retry_at:
                try:
                    self.connect()
                    backoff = 0.5
                except OSError:
                    retry_at, backoff = wall + backoff, min(backoff * 2, 5.0)
            if self._socket_open and wall >= misc_at:
                self._client.loop_misc()  # keepalive pings, and a dead link noticed
                misc_at = wall + 1.0
            t = self.clock.now()
            if self.connected and t >= self._next_due:
                self._telemetry(t)
            wait = 0.25
            if self.connected and not self.clock.frozen:
                wait = min(wait, max((self._next_due - t) / self.clock.speed, 0.002))
            await asyncio.sleep(wait)

    def _telemetry(self, t: float) -> None:
        for message in self.firmware.telemetry(t):
            if self.malformed is not None:
                message = self.firmware.malformed(message, self._garbage_sent)
                self._garbage_sent += 1
                if self.malformed > 0:
                    self.malformed -= 1
                    if self.malformed == 0:
                        self.malformed = None
                        self.on_fault_over(self.board.name)
            self._publish(message)
        following = self._next_due + self.period  # keeps the cadence without drifting
        self._next_due = following if t < following <= t + self.period else t + self.period

    def _publish(self, message: Message) -> mqtt.MQTTMessageInfo:
        info = self._client.publish(message.topic, message.payload, qos=1, retain=message.retain)
        self.published += 1
        self.last[message.topic] = message.payload
        return info

    # -- faults ---------------------------------------------------------------------------------

    def drop(self) -> None:
        """Vanish without a DISCONNECT (power cut, Wi-Fi gone): the broker publishes the will."""
        self.dropped = True
        sock = self._client.socket()
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        for _ in range(1000):  # read what is left, then EOF: paho closes and forgets the link
            if self._client.socket() is None:
                break
            self._client.loop_read()

    async def restore(self, seconds: float = 5.0) -> None:
        """Back from `drop`: reconnect now (online and births again); retried if it fails."""
        if not self.dropped:
            return
        self.dropped = False
        if not self._socket_open:
            try:
                self.connect()
            except OSError:
                return  # the run loop retries with backoff
        await self.wait_connected(seconds)

    async def burst(self, count: int, seconds: float = 30.0) -> None:
        """Publish `count` telemetry messages as fast as the link takes them, and wait for the
        broker's acknowledgements."""
        if not self.connected:
            raise ValueError(f"board {self.board.name} is not connected; no burst")
        t = self.clock.now()
        infos: list[mqtt.MQTTMessageInfo] = []
        while len(infos) < count:
            for message in self.firmware.telemetry(t)[: count - len(infos)]:
                infos.append(self._publish(message))
        await self._acknowledged(infos, seconds)

    async def _acknowledged(self, infos: list[mqtt.MQTTMessageInfo], seconds: float) -> None:
        """Wait until the broker has acknowledged these messages (or the link is gone)."""
        self._pending = {i.mid for i in infos if not i.is_published()}
        if not self._pending or not self.connected:
            return
        self._acked.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._acked.wait()
        self._pending = set()

    # -- end ------------------------------------------------------------------------------------

    async def close(self, seconds: float = 2.0) -> None:
        """Say goodbye (offline, deaths), DISCONNECT, and wait for the socket to close."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.connected:
            goodbye = [self._publish(m) for m in self.firmware.goodbye(self.clock.now())]
            # Closing with acknowledgements unread makes the kernel send a reset, and the broker
            # then drops the DISCONNECT behind it and publishes the will after all.
            await self._acknowledged(goodbye, seconds)
        if self._socket_open:
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._closed.wait()
        sock = self._client.socket()
        if sock is not None:  # the broker never answered: close it ourselves
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            sock.close()
            self._socket_open = False
        self.connected = False
