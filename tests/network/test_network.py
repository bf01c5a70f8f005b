"""Three plants and their network on one machine: each plant with its own InfluxDB, the network
with its own broker (TLS, a user and an ACL per plant) and InfluxDB. What each plant chose to
share arrives, the link cut and restored loses and doubles nothing, a plant cannot write for
another, and what a plant did not share is nowhere on the network's side."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.config import Config, parse_config
from collector.influxql import InfluxQL
from collector.mqtt_publish import BrokerLink, PublishError, publish_all
from collector.schema import Point
from network.config import NetworkConfig, parse_network
from network.ingest import MEASUREMENT, Ingester, alias_of
from network.rollup import CATEGORIES, COUNTS, HOUR_MS, SECONDS, plant_hours
from network.share import GRACE_MS, MqttPublisher, Sharer, topic_of
from tests.network.plants import Plant, history, write
from tests.services import InfluxDB, Mosquitto, TlsFiles

pytestmark = pytest.mark.integration

NETWORK = "red-sul"
PASSWORDS = {"coop-a": "a-secret", "coop-b": "b-secret", "coop-c": "c-secret", "red": "r-secret"}
PLANTS = [
    Plant(
        "coop-a",
        named=True,
        machines={
            "lathe-1": ("machining", "turning"),
            "lathe-2": ("machining", "turning"),
            "press-1": ("stamping", "pressing"),
            "saw-1": ("machining", None),  # no process: counted under its sector
        },
    ),
    Plant(
        "coop-b",
        share="machines",
        group_by="sector",
        revise_hours=3,  # an outage longer than this is caught up from the cursor alone
        machines={"press-7": ("stamping", "pressing"), "oven-2": ("heat", "baking")},
    ),
    Plant("coop-c", share="none", machines={"printer-1": ("print", "printing")}),
]
FIRST_HOUR = 1_767_225_600_000 - 40 * HOUR_MS  # 40 hours before 2026-01-01 00:00 UTC
HOURS = 30


@dataclass
class Network:
    config: NetworkConfig
    broker: Mosquitto
    server: InfluxDB
    ingester: Ingester


@dataclass
class PlantSide:
    plant: Plant
    config: Config
    server: InfluxDB
    db: InfluxQL
    sharer: Sharer


@pytest.fixture
async def network(
    start_broker: Callable[..., Mosquitto],
    start_influxdb: Callable[..., InfluxDB],
    tls_files: TlsFiles,
    tmp_path: Path,
) -> AsyncIterator[Network]:
    acls = {
        plant: [("publishClientSend", f"aguante/network/+/{plant}/hourly")]
        for plant in PASSWORDS
        if plant != "red"
    }
    acls["red"] = [("subscribePattern", "aguante/network/#")]
    broker = start_broker(tls=tls_files, users=PASSWORDS, acls=acls)
    server = start_influxdb()
    text = yaml.safe_dump(
        {
            "network": NETWORK,
            "timezone": "America/Sao_Paulo",
            "broker": {"url": broker.url, "tls": {"ca_file": str(tls_files.ca_file)}},
            "influxdb": {"url": server.url, "database": "network"},
            "partitions": 4,
            "plants": [
                {"id": "coop-a", "processes": ["turning", "pressing"]},
                {"id": "coop-b", "processes": ["pressing", "baking"]},
                {"id": "coop-c", "processes": ["printing"]},
            ],
        }
    )
    env = {"AGUANTE_NETWORK_USERNAME": "red", "AGUANTE_NETWORK_PASSWORD": PASSWORDS["red"]}
    config = parse_network(text, environ={})
    ingester = Ingester(config, env, retry_max=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(ingester.run(stop))
    try:
        async with asyncio.timeout(20):
            await ingester.subscribed()
        yield Network(config, broker, server, ingester)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def plants(
    network: Network,
    start_influxdb: Callable[..., InfluxDB],
    tls_files: TlsFiles,
    tmp_path: Path,
) -> AsyncIterator[dict[str, PlantSide]]:
    sides = {}
    for seed, plant in enumerate(PLANTS):
        server = start_influxdb()
        state = str(tmp_path / f"{plant.id}-network.json")
        tls = {"ca_file": str(tls_files.ca_file)}
        config = plant.config(server.url, network.broker.url, state, tls)
        await write(config, history(config, FIRST_HOUR, HOURS, seed))
        env = {"AGUANTE_NETWORK_PASSWORD": PASSWORDS[plant.id]}
        db = InfluxQL.from_config(config.influxdb)
        sharer = Sharer(config, db, MqttPublisher(config, env), Path(state), now_ms=_clock())
        sides[plant.id] = PlantSide(plant, config, server, db, sharer)
    try:
        yield sides
    finally:
        for side in sides.values():
            side.db.close()


_NOW = {"ms": FIRST_HOUR + HOURS * HOUR_MS + GRACE_MS + 1}


def _clock() -> Callable[[], int]:
    return lambda: _NOW["ms"]


def _shown(plant: PlantSide) -> str:
    return alias_of(NETWORK, plant.plant.id)  # every plant's key: named or not


def _name(plant: PlantSide) -> str:
    sharing = plant.config.network
    return (sharing.name or plant.config.factory) if sharing.named else ""


A = alias_of(NETWORK, "coop-a")
B = alias_of(NETWORK, "coop-b")


def _expected(plant: PlantSide, end_ms: int) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """What the network must hold of a plant: its rollups as the plant itself computes them."""
    if plant.config.network.share == "none":
        return {}
    expected = {}
    for hour in plant_hours(plant.db, plant.config, FIRST_HOUR, end_ms).values():
        for group in hour.groups:
            fields = {k: group.sums[k] for k in SECONDS + COUNTS}
            fields.update({f"lost_{c}_s": group.lost_s[c] for c in CATEGORIES})
            fields["machines"] = group.machines
            fields["name"] = _name(plant)
            expected[(_shown(plant), group.group, group.kind, hour.hour_ms)] = fields
    return expected


def _stored(network: Network) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    rows = network.server.query(
        f'SELECT * FROM "{MEASUREMENT}" GROUP BY "plant", "group", "kind"', database="network"
    )
    stored = {}
    for row in rows:
        key = (row["plant"], row["group"], row["kind"], _ms(row["time"]))
        stored[key] = {
            k: v
            for k, v in row.items()
            if k not in ("time", "plant", "group", "kind", "network", "_name")
        }
    return stored


def _ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return round(moment.timestamp() * 1000)


def _same(stored: dict[str, Any], expected: dict[str, Any]) -> bool:
    return set(stored) == set(expected) and all(
        stored[k] == v if isinstance(v, str) else math.isclose(float(stored[k]), v, abs_tol=0.01)
        for k, v in expected.items()
    )


async def _rounds(plants: dict[str, PlantSide]) -> None:
    for side in plants.values():
        await asyncio.to_thread(side.sharer.round)


async def _converged(network: Network, plants: dict[str, PlantSide], end_ms: int) -> None:
    expected: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for side in plants.values():
        expected.update(_expected(side, end_ms))
    stored: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    try:
        async with asyncio.timeout(30):
            while True:
                stored = _stored(network)
                if set(stored) == set(expected) and all(
                    _same(stored[k], v) for k, v in expected.items()
                ):
                    return
                await asyncio.sleep(0.3)
    except TimeoutError:
        missing = sorted(set(expected) - set(stored))[:3]
        extra = sorted(set(stored) - set(expected))[:3]
        differ = [(k, stored[k], expected[k]) for k in expected if k in stored][:0] + [
            (k, stored[k], expected[k])
            for k in sorted(set(expected) & set(stored))
            if not _same(stored[k], expected[k])
        ][:2]
        raise AssertionError(
            f"the network's view differs: {len(expected)} expected, {len(stored)} stored, "
            f"missing {missing}, extra {extra}, differing {differ}, "
            f"service {network.ingester.stats}"
        ) from None


async def test_what_each_plant_shares_arrives_whole(
    network: Network, plants: dict[str, PlantSide]
) -> None:
    await _rounds(plants)
    end = FIRST_HOUR + HOURS * HOUR_MS
    await _converged(network, plants, end)
    stored = _stored(network)
    assert len(stored) > 100
    kinds = {(plant, kind) for plant, _, kind, _ in stored}
    assert {kind for plant, kind in kinds if plant == A} == {"process"}  # saw-1: its sector
    assert (B, "machine") in kinds  # coop-b shares its machines too
    assert network.ingester.stats.bad == 0


async def test_a_cut_link_loses_nothing_and_doubles_nothing(
    network: Network, plants: dict[str, PlantSide]
) -> None:
    await _rounds(plants)
    end = FIRST_HOUR + HOURS * HOUR_MS
    await _converged(network, plants, end)
    network.broker.stop()
    # While the link is down: six more hours of work (longer than coop-b's revision window:
    # only its cursor brings them), and reasons given to yesterday's stops at coop-a.
    a, b = plants["coop-a"], plants["coop-b"]
    await write(a.config, history(a.config, end, 6, seed=99))
    await write(b.config, history(b.config, end, 6, seed=98))
    stops = a.server.query('SELECT * FROM "stop" WHERE "reason" = \'\'', database="coop_a")
    assert stops, "the seed left stops without a reason"
    late = [
        Point(
            "stop",
            {k: row[k] for k in ("factory", "sector", "machine")},
            {"reason": "no_orders"},
            _ms(row["time"]),
        )
        for row in stops[:5]
    ]
    await write(a.config, late)
    _NOW["ms"] += 6 * HOUR_MS
    cursor = a.sharer.state.cursor_ms
    with pytest.raises(PublishError):
        await asyncio.to_thread(a.sharer.round)
    assert a.sharer.state.cursor_ms == cursor  # nothing marked sent
    network.broker.start()
    try:
        await _rounds(plants)
        await _converged(network, plants, end + 6 * HOUR_MS)
        # A round that finds nothing new sends nothing, and the view stays whole.
        again = await asyncio.to_thread(a.sharer.round)
        assert again.sent == 0 and again.looked_at > 0
    finally:
        _NOW["ms"] -= 6 * HOUR_MS
    stored = _stored(network)
    hours = {key[3] for key in stored if key[0] == A}
    assert max(hours) == end + 5 * HOUR_MS


async def test_a_plant_cannot_write_for_another(
    network: Network, plants: dict[str, PlantSide], tls_files: TlsFiles
) -> None:
    forged_hour = FIRST_HOUR - 100 * HOUR_MS
    body = json.dumps(
        {
            "v": 1,
            "plant": "coop-b",
            "name": "Cooperativa B",
            "hour": forged_hour,
            "groups": [
                {
                    "group": "pressing",
                    "kind": "process",
                    "machines": 1,
                    **dict.fromkeys(SECONDS + COUNTS, 1.0),
                    "lost_s": dict.fromkeys(CATEGORIES, 0.0),
                }
            ],
        }
    ).encode()
    a_config = plants["coop-a"].config
    link = BrokerLink(
        network.broker.url,
        username="coop-a",
        password=PASSWORDS["coop-a"],
        tls=a_config.network.tls,
    )
    b_topic = topic_of(plants["coop-b"].config.network, "coop-b")
    a_topic = topic_of(a_config.network, "coop-a")
    # coop-b's topic with coop-a's login: the broker's ACL drops it; coop-b's id in coop-a's
    # own topic: the network service refuses it.
    await asyncio.to_thread(publish_all, link, [(b_topic, body), (a_topic, body)], timeout=10)
    async with asyncio.timeout(10):
        while network.ingester.stats.bad < 1:  # noqa: ASYNC110 - counted in the service
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # time for anything the broker let through to arrive
    assert network.ingester.stats.bad == 1  # only the one on coop-a's own topic got through
    rows = network.server.query(
        f'SELECT count(*) FROM "{MEASUREMENT}" WHERE time = {forged_hour}ms', database="network"
    )
    assert rows == []


async def test_what_a_plant_did_not_share_is_nowhere(
    network: Network, plants: dict[str, PlantSide]
) -> None:
    await _rounds(plants)
    await _converged(network, plants, FIRST_HOUR + HOURS * HOUR_MS)
    q = network.server.query
    measurements = {row["name"] for row in q("SHOW MEASUREMENTS", database="network")}
    assert measurements == {MEASUREMENT}
    tag_keys = {
        row["tagKey"] for row in q(f'SHOW TAG KEYS FROM "{MEASUREMENT}"', database="network")
    }
    assert tag_keys == {"network", "plant", "group", "kind"}
    field_keys = {
        row["fieldKey"] for row in q(f'SHOW FIELD KEYS FROM "{MEASUREMENT}"', database="network")
    }
    allowed = {*SECONDS, *COUNTS, "machines", "name", *(f"lost_{c}_s" for c in CATEGORIES)}
    assert field_keys == allowed  # no raw signal, no reason, no person
    values: dict[str, set[str]] = {}
    for key in ("plant", "group", "kind"):
        rows = q(f'SHOW TAG VALUES FROM "{MEASUREMENT}" WITH KEY = "{key}"', database="network")
        values[key] = {row["value"] for row in rows}
    # coop-c shares nothing; coop-b is under its alias, never its id; coop-a by its name.
    assert values["plant"] == {A, B}  # every plant under its alias
    names = {
        row["plant"]: row["last"]
        for row in q(
            f'SELECT last("name") FROM "{MEASUREMENT}" GROUP BY "plant"', database="network"
        )
    }
    assert names == {A: "Cooperativa COOP-A", B: ""}  # a name only for the plant that gave it
    every_text = " ".join(sorted(set().union(*values.values())))
    assert "coop-c" not in every_text and "printer" not in every_text
    assert "coop-b" not in every_text
    # coop-a shares groups only: no machine of it appears.
    a_groups = {
        row["group"]
        for row in q(
            f'SELECT * FROM "{MEASUREMENT}" WHERE "plant" = \'{A}\' GROUP BY "group"',
            database="network",
        )
    }
    assert a_groups == {"turning", "pressing", "machining"}


async def test_the_commands_share_store_and_show(
    start_broker: Callable[..., Mosquitto],
    start_influxdb: Callable[..., InfluxDB],
    tmp_path: Path,
) -> None:
    aguante = str(Path(sys.executable).parent / "aguante")
    broker = start_broker()
    network_db, plant_db = start_influxdb(), start_influxdb()
    network_file = tmp_path / "red.yaml"
    network_file.write_text(
        yaml.safe_dump(
            {
                "network": NETWORK,
                "language": "en",
                "broker": {"url": broker.url},
                "influxdb": {"url": network_db.url, "database": "red"},
                "plants": [{"id": "coop-a", "processes": ["turning", "pressing"]}],
            }
        )
    )
    check = await asyncio.create_subprocess_exec(
        aguante, "network", "check", str(network_file), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await check.communicate()
    assert check.returncode == 0 and b"ok" in out
    plant = PLANTS[0]
    config = plant.config(plant_db.url, broker.url, str(tmp_path / "state.json"), None)
    recent = (int(time.time() * 1000) // HOUR_MS - 30) * HOUR_MS
    await write(config, history(config, recent, 24, seed=5))
    factory = tmp_path / "factory.yaml"
    dumped = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    factory.write_text(yaml.safe_dump(dumped))
    service = await asyncio.create_subprocess_exec(
        aguante, "network", "run", str(network_file), stderr=asyncio.subprocess.PIPE
    )
    try:
        await asyncio.sleep(2)  # subscribed
        share = await asyncio.create_subprocess_exec(
            aguante,
            "share",
            str(factory),
            "--once",
            "--lang",
            "en",
            cwd=tmp_path,
            env={**os.environ, "AGUANTE_NETWORK_URL": broker.url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(share.communicate(), 60)
        assert share.returncode == 0, err.decode()
        assert "hour(s) sent" in out.decode()
        async with asyncio.timeout(20):
            while not network_db.query(f'SELECT count(*) FROM "{MEASUREMENT}"', database="red"):  # noqa: ASYNC110
                await asyncio.sleep(0.3)
    finally:
        service.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(service.communicate(), 30)
    assert service.returncode == 0, err.decode()
    assert b"Traceback" not in err
    show = await asyncio.create_subprocess_exec(
        aguante, "network", "show", str(network_file), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(show.communicate(), 60)
    text = out.decode()
    assert show.returncode == 0, text
    assert "Free capacity by process" in text and "Cooperativa COOP-A" in text


async def test_a_refused_publish_is_not_taken_for_sent(
    network: Network, plants: dict[str, PlantSide]
) -> None:
    # coop-a logs in as coop-b: the broker's ACL lets coop-b write only coop-b's topic, and says
    # so in its PUBACK (MQTT 5): nothing may be marked sent.
    a = plants["coop-a"]
    wrong = MqttPublisher(
        a.config,
        {"AGUANTE_NETWORK_USERNAME": "coop-b", "AGUANTE_NETWORK_PASSWORD": PASSWORDS["coop-b"]},
    )
    sharer = Sharer(a.config, a.db, wrong, a.sharer.state_path, now_ms=_clock())
    with pytest.raises(PublishError) as refused:
        await asyncio.to_thread(sharer.round)
    assert not refused.value.retryable and "refused" in str(refused.value)
    assert sharer.state.cursor_ms is None and not a.sharer.state_path.exists()
    assert _stored(network) == {}


async def test_a_renamed_process_and_a_lost_state_double_nothing(
    network: Network, plants: dict[str, PlantSide], tls_files: TlsFiles, tmp_path: Path
) -> None:
    a = plants["coop-a"]
    await _rounds(plants)
    end = FIRST_HOUR + HOURS * HOUR_MS
    await _converged(network, plants, end)
    # The plant renames a process (turning → torneado): the old group's hours are zeroed, so the
    # network's sums over coop-a stay what the plant itself has.
    data = a.config.model_dump(mode="json", by_alias=True, exclude_none=True)
    for machine in data["machines"]:
        if machine.get("process") == "turning":
            machine["process"] = "torneado"
    renamed = parse_config(yaml.safe_dump(data), environ={})
    state = a.sharer.state_path
    env = {"AGUANTE_NETWORK_PASSWORD": PASSWORDS["coop-a"]}
    sharer = Sharer(renamed, a.db, MqttPublisher(renamed, env), state, now_ms=_clock())
    await asyncio.to_thread(sharer.round)

    def planned(plant: str) -> float:
        rows = network.server.query(
            f'SELECT sum("planned_s") FROM "{MEASUREMENT}" WHERE "plant" = \'{plant}\'',
            database="network",
        )
        return float(rows[0]["sum"]) if rows else 0.0

    truth = sum(
        sum(g.sums["planned_s"] for g in hour.groups)
        for hour in plant_hours(a.db, renamed, FIRST_HOUR, end).values()
    )

    def renamed_hours() -> int:
        rows = network.server.query(
            f'SELECT count("planned_s") FROM "{MEASUREMENT}" WHERE "group" = \'torneado\'',
            database="network",
        )
        return int(rows[0]["count"]) if rows else 0

    expected_hours = sum(
        1
        for hour in plant_hours(a.db, renamed, FIRST_HOUR, end).values()
        for g in hour.groups
        if g.group == "torneado"
    )
    async with asyncio.timeout(20):
        while renamed_hours() < expected_hours:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # the rest of the batch
    # Without the zeros, turning's old hours would add to torneado's: twice the planned time.
    assert math.isclose(planned(A), truth, abs_tol=1)
    # The state file lost: the last days go again, and still nothing doubles.
    state.write_text("{damaged")
    again = Sharer(renamed, a.db, MqttPublisher(renamed, env), state, now_ms=_clock())
    result = await asyncio.to_thread(again.round)
    assert result.sent >= HOURS
    await asyncio.sleep(1.0)
    assert math.isclose(planned(A), truth, abs_tol=1)


async def test_a_long_stop_counts_in_every_hour_it_spans(
    network: Network, plants: dict[str, PlantSide]
) -> None:
    a = plants["coop-a"]
    start = FIRST_HOUR + 10 * HOUR_MS  # three whole hours of press-1 without orders
    long_stop = Point(
        "stop",
        {"factory": "coop-a", "sector": "stamping", "machine": "press-1"},
        {
            "duration_s": 3 * 3600.0,
            "lost_s": 3 * 3600.0,
            "state": "idle",
            "open": False,
            "micro": False,
            "reason": "no_orders",
        },
        start,
    )
    await write(a.config, [long_stop])
    await _rounds(plants)
    await _converged(network, plants, FIRST_HOUR + HOURS * HOUR_MS)
    rows = network.server.query(
        f'SELECT "lost_demand_s" FROM "{MEASUREMENT}" WHERE "plant" = \'{A}\''
        f" AND \"group\" = 'pressing' AND time >= {start}ms AND time < {start + 3 * HOUR_MS}ms",
        database="network",
    )
    assert len(rows) == 3 and all(row["lost_demand_s"] >= 3600 - 0.01 for row in rows)


async def test_the_network_service_stops_when_its_login_is_refused(
    start_broker: Callable[..., Mosquitto], start_influxdb: Callable[..., InfluxDB]
) -> None:
    broker = start_broker(users=PASSWORDS)
    server = start_influxdb()
    config = parse_network(
        yaml.safe_dump(
            {
                "network": NETWORK,
                "broker": {"url": broker.url},
                "influxdb": {"url": server.url, "database": "red"},
                "plants": [{"id": "coop-a"}],
            }
        ),
        environ={},
    )
    wrong = {"AGUANTE_NETWORK_USERNAME": "red", "AGUANTE_NETWORK_PASSWORD": "not-it"}
    ingester = Ingester(config, wrong)
    await asyncio.wait_for(ingester.run(asyncio.Event()), 20)  # ends by itself
    assert ingester.refused is not None and "refused" in ingester.refused


async def test_a_refused_password_shows_even_when_nothing_is_due(
    network: Network, plants: dict[str, PlantSide]
) -> None:
    a = plants["coop-a"]
    await asyncio.to_thread(a.sharer.round)
    again = await asyncio.to_thread(a.sharer.round)
    assert again.sent == 0  # nothing due
    wrong = MqttPublisher(a.config, {"AGUANTE_NETWORK_PASSWORD": "not-it"})
    sharer = Sharer(a.config, a.db, wrong, a.sharer.state_path, now_ms=_clock())
    with pytest.raises(PublishError) as refused:
        await asyncio.to_thread(sharer.round)
    assert not refused.value.retryable
