"""The scenario's retrofit boards against a real Mosquitto, watched by a plain paho subscriber:
topics and payload shapes per firmware, retained availability, wills on `drop`, `malformed`,
`burst`, Sparkplug births/deaths/seq, simulated-clock periods, the control endpoint and the
collector example's view of the same topics."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators import Scenario, ScenarioError, Simulator, load_scenario, run_scenario
from tests.services import Mosquitto
from tests.simulation import MONDAY_MORNING
from tests.simulators.test_running import REPO, http
from tests.simulators.test_sparkplug_encoding import sparkplug_payload_class

Payload = sparkplug_payload_class()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float


@dataclass
class Listener:
    """A plain paho subscriber to '#' (its own thread, stopped by the fixture)."""

    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    async def wait_for(self, topic: str, count: int = 1, seconds: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + seconds
        # Messages arrive on paho's thread: polling is simpler than a cross-thread event.
        while len(self.on(topic)) < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        found = self.on(topic)
        assert len(found) >= count, f"{topic}: {len(found)} of {count} messages"
        return found


def listen(broker: Mosquitto, client_id: str = "test-listener") -> Listener:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    listener = Listener(client)
    subscribed = threading.Event()

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with listener.lock:
            listener.messages.append(
                Received(message.topic, message.payload, bool(message.retain), time.monotonic())
            )

    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.subscribe("#", qos=1)
    client.loop_start()
    assert subscribed.wait(5)
    return listener


def stop(listener: Listener) -> None:
    listener.client.disconnect()
    listener.client.loop_stop()


@pytest.fixture
def listener(mosquitto: Mosquitto) -> Iterator[Listener]:
    found = listen(mosquitto)
    try:
        yield found
    finally:
        stop(found)


@pytest.fixture
async def boards(
    metalworks: Scenario, port_base: int, mosquitto: Mosquitto, listener: Listener
) -> AsyncIterator[Simulator]:
    """Metalworks at MONDAY_MORNING with every board publishing every 0.2 simulated seconds."""
    async with run_scenario(
        metalworks,
        port_base=port_base,
        seed=1,
        start=MONDAY_MORNING,
        control_port=port_base - 1,
        mqtt_url=mosquitto.url,
        board_period=0.2,
    ) as simulator:
        yield simulator


def document(message: Received) -> Any:
    return json.loads(message.payload)


async def test_each_firmware_publishes_its_shapes(boards: Simulator, listener: Listener) -> None:
    sensor = document((await listener.wait_for("tele/drill-1-plug/SENSOR", 2))[-1])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", sensor["Time"])  # local, no offset
    assert sensor["Time"].startswith("2025-03-03T09:00")
    energy = sensor["ENERGY"]
    assert list(energy) == [
        "TotalStartTime", "Total", "Yesterday", "Today", "Period", "Power", "ApparentPower",
        "ReactivePower", "Factor", "Voltage", "Current",
    ]  # fmt: skip
    assert isinstance(energy["Power"], int) and isinstance(energy["Voltage"], int)
    assert energy["Total"] >= 1523.4 and 215 <= energy["Voltage"] <= 232
    state = document((await listener.wait_for("tele/drill-1-plug/STATE"))[-1])
    assert state["POWER"] in ("ON", "OFF") and state["MqttCount"] == 1 and "Uptime" in state
    assert (await listener.wait_for("tele/drill-1-plug/LWT"))[0].payload == b"Online"

    vibration = (await listener.wait_for("grinder-monitor/sensor/vibration/state"))[-1]
    assert re.fullmatch(rb"\d+\.\d\d", vibration.payload)
    assert re.fullmatch(
        rb"\d+\.\d", listener.on("grinder-monitor/sensor/bearing_temp/state")[-1].payload
    )
    assert listener.on("grinder-monitor/binary_sensor/motor/state")[-1].payload in (b"ON", b"OFF")
    assert listener.on("grinder-monitor/status")[0].payload == b"online"

    shelly = document((await listener.wait_for("shellyplus1pm-a8032ab1c2d4/status/switch:0"))[-1])
    assert set(shelly) == {"id", "source", "output", "apower", "voltage", "current", "aenergy",
                           "temperature"}  # fmt: skip
    assert shelly["id"] == 0 and isinstance(shelly["output"], bool)
    assert set(shelly["aenergy"]) == {"total", "by_minute", "minute_ts"}
    assert len(shelly["aenergy"]["by_minute"]) == 3 and shelly["aenergy"]["minute_ts"] % 60 == 0
    assert shelly["temperature"]["tF"] == pytest.approx(
        shelly["temperature"]["tC"] * 1.8 + 32, abs=0.1
    )
    assert listener.on("shellyplus1pm-a8032ab1c2d4/online")[0].payload == b"true"

    datos = document((await listener.wait_for("planta/bender-1/datos"))[-1])
    assert set(datos) == {"count", "sensors", "running"}
    assert isinstance(datos["count"], int) and isinstance(datos["sensors"][0]["temp"], float)
    assert float((await listener.wait_for("sensores/saw-1/current"))[-1].payload) >= 0
    assert listener.on("sensores/saw-1/motor_on")[-1].payload in (b"ON", b"OFF")
    assert float((await listener.wait_for("sensores/bender-1/current"))[-1].payload) >= 0
    assert listener.on("estado/bender-1-esp32")[0].payload == b"online"

    # What the simulator says it sent is what arrived.
    assert boards.published("bender-1-esp32")["estado/bender-1-esp32"] == b"online"
    assert boards.publish_count("drill-1-plug") >= 5


async def test_sparkplug_births_data_and_seq(boards: Simulator, listener: Listener) -> None:
    nbirth = Payload.FromString(
        (await listener.wait_for("spBv1.0/metalworks/NBIRTH/paint-line"))[0].payload
    )
    assert nbirth.seq == 0
    assert 0 <= nbirth.timestamp - MONDAY_MORNING_TS * 1000 < 2000  # ms, UTC, simulated time
    metrics = {m.name: m for m in nbirth.metrics}
    assert metrics["bdSeq"].datatype == 4 and metrics["bdSeq"].long_value == 0
    assert metrics["Node Control/Rebirth"].datatype == 11
    dbirth = Payload.FromString(
        (await listener.wait_for("spBv1.0/metalworks/DBIRTH/paint-line/booth-1"))[0].payload
    )
    assert dbirth.seq == 1
    born = {m.name: (m.alias, m.datatype) for m in dbirth.metrics}
    assert born == {
        "Booth/Temperature": (10, 10), "Booth/Humidity": (11, 9), "Fan/Running": (12, 11),
        "Parts/Count": (13, 4),
    }  # fmt: skip
    ddata = [
        Payload.FromString(m.payload)
        for m in await listener.wait_for("spBv1.0/metalworks/DDATA/paint-line/booth-1", 2)
    ]
    assert all(not m.name and m.alias in (10, 11, 12, 13) for p in ddata for m in p.metrics)
    node = [
        m for m in listener.messages if m.topic.startswith("spBv1.0/") and "DEATH" not in m.topic
    ]
    assert [Payload.FromString(m.payload).seq for m in node] == list(range(len(node)))
    # Wrap past 255: a burst of 600 messages (NDATA + DDATA pairs).
    await boards.set_fault("paint-line-node", "burst", 600)
    await asyncio.sleep(0.3)
    all_seqs = [
        Payload.FromString(m.payload).seq
        for m in listener.messages
        if m.topic.startswith(("spBv1.0/metalworks/NDATA", "spBv1.0/metalworks/DDATA"))
    ]
    assert max(all_seqs) == 255 and all_seqs.count(0) >= 2
    assert all(b == (a + 1) % 256 for a, b in itertools.pairwise(all_seqs))


MONDAY_MORNING_TS = MONDAY_MORNING.replace(tzinfo=load_scenario("metalworks").zone).timestamp()


async def test_drop_publishes_the_will_and_clearing_reconnects(
    boards: Simulator, listener: Listener
) -> None:
    await listener.wait_for("tele/drill-1-plug/LWT")
    await listener.wait_for("spBv1.0/metalworks/NBIRTH/paint-line")
    await boards.set_fault("drill-1-plug", "drop")
    await boards.set_fault("paint-line-node", "drop")
    assert not boards.board_online("drill-1-plug")
    lwt = await listener.wait_for("tele/drill-1-plug/LWT", 2)
    assert lwt[-1].payload == b"Offline"  # the broker's doing: the board sent nothing
    death = Payload.FromString(
        (await listener.wait_for("spBv1.0/metalworks/NDEATH/paint-line"))[0].payload
    )
    assert [(m.name, m.long_value) for m in death.metrics] == [("bdSeq", 0)]
    count = boards.publish_count("drill-1-plug")
    await asyncio.sleep(0.5)
    assert boards.publish_count("drill-1-plug") == count  # silent while dropped
    assert boards.faults()["drill-1-plug"].kind == "drop"

    states_before = len(listener.on("tele/drill-1-plug/STATE"))
    await boards.clear_fault("drill-1-plug")
    await boards.clear_fault("paint-line-node")
    assert boards.board_online("drill-1-plug")
    assert (await listener.wait_for("tele/drill-1-plug/LWT", 3))[-1].payload == b"Online"
    # The STATE from before the drop may be the newest one until the board publishes again.
    states = await listener.wait_for("tele/drill-1-plug/STATE", states_before + 1)
    assert document(states[-1])["MqttCount"] == 2
    births = await listener.wait_for("spBv1.0/metalworks/NBIRTH/paint-line", 2)
    reborn = Payload.FromString(births[-1].payload)
    assert reborn.seq == 0 and {m.name: m.long_value for m in reborn.metrics}["bdSeq"] == 1
    await listener.wait_for("spBv1.0/metalworks/DBIRTH/paint-line/booth-1", 2)


async def test_availability_is_retained_and_says_offline_after_exit(
    metalworks: Scenario, port_base: int, mosquitto: Mosquitto
) -> None:
    availability = {
        "tele/drill-1-plug/LWT": (b"Online", b"Offline"),
        "grinder-monitor/status": (b"online", b"offline"),
        "shellyplus1pm-a8032ab1c2d4/online": (b"true", b"false"),
        "estado/bender-1-esp32": (b"online", b"offline"),
    }
    async with run_scenario(
        metalworks, port_base=port_base, start=MONDAY_MORNING, mqtt_url=mosquitto.url
    ):
        late = listen(mosquitto, "late-comer")  # subscribes after the boards said hello
        try:
            for topic, (online, _) in availability.items():
                message = (await late.wait_for(topic))[0]
                assert (message.payload, message.retain) == (online, True)
            # ESPHome retains states too; Tasmota's telemetry is not retained.
            assert (await late.wait_for("grinder-monitor/sensor/vibration/state"))[0].retain
        finally:
            stop(late)
    after = listen(mosquitto, "after-exit")
    try:
        for topic, (_, offline) in availability.items():
            message = (await after.wait_for(topic))[0]
            assert (message.payload, message.retain) == (offline, True)
        assert not after.on("tele/drill-1-plug/SENSOR")
    finally:
        stop(after)


async def test_malformed_payloads_then_clean_again(boards: Simulator, listener: Listener) -> None:
    await listener.wait_for("planta/bender-1/datos")
    await boards.set_fault("bender-1-esp32", "malformed", 4)
    assert boards.faults()["bender-1-esp32"].describe() == "malformed:4"
    listener.clear()
    spoiled = await listener.wait_for("planta/bender-1/datos", 5)
    truncated, text, not_utf8, oversize, clean = (m.payload for m in spoiled[:5])
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated)
    assert '"n/a"' in json.loads(text).__repr__() or b'"n/a"' in text
    with pytest.raises(UnicodeDecodeError):
        not_utf8.decode("utf-8")
    assert len(oversize) > 65536 and json.loads(oversize)["count"] >= 0
    assert set(json.loads(clean)) == {"count", "sensors", "running"}
    assert "bender-1-esp32" not in boards.faults()  # over after its 4 messages

    # Until cleared, on text and Sparkplug boards too.
    await boards.set_fault("grinder-monitor", "malformed")
    await boards.set_fault("paint-line-node", "malformed")
    listener.clear()
    texts = [
        m.payload for m in await listener.wait_for("grinder-monitor/sensor/vibration/state", 4)
    ]
    assert any(
        t == b"ERROR" or t.startswith(b"\xff") or len(t) > 65536 or t == b"12.5.3" for t in texts
    )
    broken = 0
    for message in await listener.wait_for("spBv1.0/metalworks/DDATA/paint-line/booth-1", 4):
        try:
            decoded = Payload.FromString(message.payload)
        except Exception:
            broken += 1
        else:
            broken += (
                len(message.payload) > 65536
                or any(m.datatype == 10 and m.HasField("string_value") for m in decoded.metrics)
                or any(
                    m.name.startswith("\ufffd") or not m.name.isprintable()
                    for m in decoded.metrics
                    if m.name
                )
            )
    assert broken >= 3
    await boards.clear_fault("all")
    listener.clear()
    for message in await listener.wait_for("grinder-monitor/sensor/vibration/state", 2):
        float(message.payload)


async def test_burst(boards: Simulator, listener: Listener) -> None:
    await listener.wait_for("sensores/saw-1/current")
    before = boards.publish_count("saw-1-clamp")
    listener.clear()
    started = time.monotonic()
    await boards.set_fault("saw-1-clamp", "burst", 400)  # returns once the broker has them all
    assert time.monotonic() - started < 5
    assert boards.publish_count("saw-1-clamp") >= before + 400
    arrived = await listener.wait_for("sensores/saw-1/current", 200)
    assert len(arrived) + len(listener.on("sensores/saw-1/motor_on")) >= 400
    assert "saw-1-clamp" not in boards.faults()


async def test_boards_publish_on_the_simulated_clock(
    metalworks: Scenario, port_base: int, mosquitto: Mosquitto, listener: Listener
) -> None:
    # Each board's own period (Tasmota TelePeriod 10 s) at 50x: a SENSOR every 0.2 s of real time.
    async with run_scenario(
        metalworks, port_base=port_base, start=MONDAY_MORNING, speed=50, mqtt_url=mosquitto.url
    ) as sim:
        sensors = await listener.wait_for("tele/drill-1-plug/SENSOR", 4)
        times = [document(m)["Time"] for m in sensors[:4]]
        seconds = [int(t[-2:]) + 60 * int(t[-5:-3]) for t in times]
        assert [b - a for a, b in itertools.pairwise(seconds)] in (
            [10, 10, 10], [10, 10, 11], [10, 11, 10], [11, 10, 10], [9, 10, 10], [10, 9, 10],
            [10, 10, 9], [11, 9, 10], [10, 11, 9], [9, 11, 10], [10, 9, 11], [11, 10, 9],
        )  # fmt: skip
        gaps = [b.at - a.at for a, b in itertools.pairwise(sensors)]
        assert 0.1 < sum(gaps) / len(gaps) < 0.35
        # Frozen: no telemetry at all.
        sim.freeze()
        await asyncio.sleep(0.1)
        count = sim.publish_count("drill-1-plug")
        await asyncio.sleep(0.5)
        assert sim.publish_count("drill-1-plug") == count


async def test_sparkplug_device_dies_when_its_machine_is_off(
    boards: Simulator, listener: Listener
) -> None:
    await listener.wait_for("spBv1.0/metalworks/DBIRTH/paint-line/booth-1")
    boards.advance(14 * 3600)  # 23:00: outside every shift, the booth is off
    death = await listener.wait_for("spBv1.0/metalworks/DDEATH/paint-line/booth-1")
    assert not Payload.FromString(death[0].payload).metrics
    assert boards.machine_state("booth-1") == "off"
    boards.advance(8 * 3600)  # Tuesday 07:00: back on
    await listener.wait_for("spBv1.0/metalworks/DBIRTH/paint-line/booth-1", 2)


async def test_control_endpoint_reaches_boards(
    boards: Simulator, listener: Listener, port_base: int
) -> None:
    port = port_base - 1
    status, found = await http(port, "GET", "/boards")
    assert status == 200 and [b["board"] for b in found][:2] == ["drill-1-plug", "grinder-monitor"]
    assert found[0]["online"] and found[0]["topics"][0] == "tele/drill-1-plug/SENSOR"
    assert await http(port, "POST", "/faults", {"device": "grinder-monitor", "kind": "drop"})
    assert (await listener.wait_for("grinder-monitor/status", 2))[-1].payload == b"offline"
    assert (await http(port, "GET", "/faults")) == (200, {"grinder-monitor": "drop"})
    status, error = await http(
        port, "POST", "/faults", {"device": "grinder-monitor", "kind": "slow"}
    )
    assert (
        status == 400
        and "grinder-monitor is an MQTT board: its faults are drop, malformed, burst"
        in error["error"]
    )
    status, error = await http(port, "POST", "/faults", {"device": "press-plc", "kind": "burst"})
    assert status == 400 and "press-plc is a Modbus device or machine" in error["error"]
    status, error = await http(port, "POST", "/faults", {"device": "drill-1", "kind": "drop"})
    assert status == 400 and "drill-1 has no PLC; fault its board: drill-1-plug" in error["error"]
    assert (await http(port, "DELETE", "/faults/grinder-monitor"))[0] == 200
    assert (await listener.wait_for("grinder-monitor/status", 3))[-1].payload == b"online"


async def test_faults_given_at_start(
    metalworks: Scenario, port_base: int, mosquitto: Mosquitto, listener: Listener
) -> None:
    async with run_scenario(
        metalworks,
        port_base=port_base,
        start=MONDAY_MORNING,
        mqtt_url=mosquitto.url,
        board_period=0.2,
        faults=["drill-1-plug=drop", "saw-1-clamp=burst:50", "bender-1-esp32=malformed"],
    ) as sim:
        assert (await listener.wait_for("tele/drill-1-plug/LWT", 2))[-1].payload == b"Offline"
        assert len(await listener.wait_for("sensores/saw-1/current", 25)) >= 25
        # Its documents from before the fault was set (the burst above may have taken a few
        # periods) are whole; from here on each is spoilt, the four kinds of garbage in turn
        # (cut short and not UTF-8 among them, which no JSON parser takes). One more is skipped
        # in case it was on its way while we counted.
        seen = len(await listener.wait_for("planta/bender-1/datos", 1))
        later = (await listener.wait_for("planta/bender-1/datos", seen + 4))[seen + 1 :]
        unreadable = 0
        for message in later:
            try:
                json.loads(message.payload)
            except ValueError:
                unreadable += 1
        assert unreadable >= 1
        assert set(sim.faults()) == {"drill-1-plug", "bender-1-esp32"}


async def test_no_broker_is_a_clear_error(metalworks: Scenario, port_base: int) -> None:
    nobody = port_base - 1  # free: no control endpoint here
    with pytest.raises(OSError, match=rf"MQTT broker 127.0.0.1:{nobody}: .*refused"):
        async with run_scenario(
            metalworks, port_base=port_base, mqtt_url=f"mqtt://127.0.0.1:{nobody}"
        ):
            pass
    with pytest.raises(
        ValueError, match=re.escape("MQTT URL 'http://x': expected mqtt://[user:password@]host")
    ):
        run_scenario(metalworks, mqtt_url="http://x")


@pytest.mark.parametrize("where", ["arguments", "url"])
async def test_boards_log_in_where_the_broker_wants_a_password(
    where: str, metalworks: Scenario, port_base: int, start_broker: Any
) -> None:
    # docker-compose.yml's broker lets nobody in anonymously, the demo's boards included.
    broker: Mosquitto = start_broker(users={"simulators": "s3cret@/"})
    login: dict[str, Any] = {"mqtt_username": "simulators", "mqtt_password": "s3cret@/"}
    url = broker.url
    if where == "url":
        login = {}
        url = f"mqtt://simulators:s3cret%40%2F@127.0.0.1:{broker.port}"
    async with run_scenario(
        metalworks, port_base=port_base, start=MONDAY_MORNING, mqtt_url=url, **login
    ) as sim:
        assert sim.mqtt_url == broker.url  # shown without the password
    with pytest.raises(OSError, match="Not authorized"):
        async with run_scenario(metalworks, port_base=port_base, mqtt_url=broker.url):
            pass


async def test_boards_need_a_broker(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="runs only with an MQTT broker"):
        await sim.set_fault("drill-1-plug", "drop")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["boards"][0]["values"].pop(0),
            "boards[0](drill-1-plug): Value error, drill-1-plug: a tasmota board meters factor, "
            "power, total, voltage (and optionally relay); missing power",
        ),
        (
            lambda d: d["boards"][1].update(machine="grinder-9"),
            "Value error, board grinder-monitor: no machine 'grinder-9'",
        ),
        (
            lambda d: d["boards"].pop(2),
            "Value error, machine furnace-2 has no PLC and no board: give it a board",
        ),
        (
            lambda d: d["boards"][6].update(topic="metalworks/paint-line"),
            "paint-line-node: a sparkplug topic is group/edge_node/device",
        ),
        (
            lambda d: d["boards"][3]["values"][1].update(name="sensors[0]..temp"),
            "bender-1-esp32: 'sensors[0]..temp' is not a path like sensors[0].temp",
        ),
        (
            lambda d: d["boards"][4].update(name="press-plc"),
            "device/machine names used twice: press-plc",
        ),
    ],
)
def test_board_errors_name_the_key(tmp_path: Path, change: Any, message: str) -> None:
    import yaml

    data = load_scenario("metalworks").model_dump(mode="json")
    change(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert message in str(info.value)


async def test_example_collector_config_reads_these_boards(
    metalworks: Scenario, port_base: int, mosquitto: Mosquitto, listener: Listener
) -> None:
    """Every MQTT signal of examples/metalworks.yaml is found in what the boards publish, and
    every board is read by the example."""
    from collector.config import load_config
    from collector.topics import TopicPattern, topic_layout

    config = load_config(REPO / "examples" / "metalworks.yaml", environ={})
    assert config.mqtt.url == "mqtt://127.0.0.1:1883"
    async with run_scenario(
        metalworks, port_base=port_base, start=MONDAY_MORNING, mqtt_url=mosquitto.url,
        board_period=0.2,
    ) as sim:  # fmt: skip
        await listener.wait_for("spBv1.0/metalworks/DBIRTH/paint-line/booth-1")
        await asyncio.sleep(0.5)
        board_topics = {b.name: set(sim.board_topics(b.name)) for b in metalworks.boards}
    last = {m.topic: m.payload for m in listener.messages}
    machine_of = {topic: b.machine for b in metalworks.boards for topic in board_topics[b.name]}
    read: set[str] = set()

    subscriptions = [(m.id, s) for m in config.machines for s in m.mqtt]
    subscriptions += [(None, s) for s in config.mqtt.subscriptions]
    for machine, subscription in subscriptions:
        layout = {
            kind: TopicPattern.compile(template)
            for kind, template in topic_layout(subscription.format, subscription.topic).items()
        }
        for signal in subscription.signals:
            found = []
            for topic, payload in last.items():
                for pattern in layout.values():
                    groups = pattern.match(topic)
                    if groups is None or machine_of.get(topic) not in (
                        machine,
                        groups.get("machine"),
                    ):
                        continue
                    if groups.get("machine") not in (None, machine_of[topic]):
                        continue
                    if _carries(subscription.format, topic, payload, signal.selector, groups):
                        found.append(topic)
            assert found, f"{machine or 'subscription'} {subscription.topic}: {signal.selector}"
            read.update(found)
    value_topics = {t for topics in board_topics.values() for t in topics if not re.search(
        r"/(LWT|status|online)$|^estado/|DEATH|NBIRTH|NDATA|DDATA|/STATE$", t)}  # fmt: skip
    assert value_topics <= read, sorted(value_topics - read)


def _carries(fmt: str, topic: str, payload: bytes, selector: str, groups: dict[str, str]) -> bool:
    if fmt == "plain":
        return groups.get("signal", selector) == selector
    if fmt == "esphome":
        return groups.get("key") == selector
    if fmt == "sparkplug":
        if "DBIRTH" not in topic:
            return False
        return selector in {m.name for m in Payload.FromString(payload).metrics}
    if fmt == "shelly":
        component, _, selector = selector.partition(".")
        if groups.get("key") != component:
            return False
    try:
        node: Any = json.loads(payload)
    except ValueError:
        return False
    for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", selector):
        try:
            node = node[int(index)] if index else node[key]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def test_a_login_without_its_password_is_refused_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from collector.cli import main

    monkeypatch.setenv("AGUANTE_SIMULATOR_MQTT_USERNAME", "aguante-simulators")
    monkeypatch.setenv("AGUANTE_SIMULATOR_MQTT_PASSWORD", "")
    assert main(["simulate", "metalworks", "--mqtt", "mqtt://127.0.0.1:1"]) == 2
    assert capsys.readouterr().err == (
        "aguante simulate: AGUANTE_SIMULATOR_MQTT_USERNAME is 'aguante-simulators' but "
        "AGUANTE_SIMULATOR_MQTT_PASSWORD is empty: set it (in .env for docker compose's demo)\n"
    )
