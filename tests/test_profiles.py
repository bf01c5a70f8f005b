"""Device profiles: each loads and validates; a machine's config merges its profile as the docs
say; and the collector polling a simulated device built from each profile reads back exactly
the values that device serves (the simulator encodes with its own code, not the collector's)."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
import yaml

from collector.config import ConfigError, parse_config
from collector.profiles import PROFILE_DEVICE_KEYS, load_profile, profile_ids
from collector.sources import Reading
from collector.sources.modbus import ModbusConnection
from simulators import Scenario, run_scenario
from tests.simulation import free_port_base

BASE = """
factory: f
sectors: [{id: s}]
machines:
  - id: m
    sector: s
    modbus:
      host: 127.0.0.1
      port: 502
"""


def _config(modbus_extra: str) -> Any:
    text = BASE + "".join(f"      {line}\n" for line in modbus_extra.strip("\n").splitlines())
    return parse_config(text, environ={})


def test_the_profiles_the_plants_need_are_there() -> None:
    ids = profile_ids()
    for wanted in ("eastron-sdm120", "eastron-sdm630", "novus-n1200", "novus-n1040"):
        assert wanted in ids
    assert "autonics-tk" in ids and "generic-plc" in ids
    assert any(i.startswith("weg-cfw") for i in ids)
    kinds = {load_profile(i).kind for i in ids}
    assert kinds == {"energy-meter", "temperature-controller", "drive", "plc"}


@pytest.mark.parametrize("profile_id", profile_ids())
def test_every_profile_loads_and_names_its_source(profile_id: str) -> None:
    profile = load_profile(profile_id)
    assert profile.id == profile_id
    assert profile.source.url.startswith(("https://", "http://")) or "aguante" in (
        profile.source.document.lower()
    )
    assert set(profile.notes) == {"es", "pt-BR", "en"}
    assert set(profile.device) <= PROFILE_DEVICE_KEYS
    # As a machine's whole device, it passes the config's own validation.
    device = _config(f"profile: {profile_id}").machines[0].modbus
    assert [s.name for s in device.signals] == profile.signal_names


def test_a_machine_changes_only_what_it_writes() -> None:
    device = (
        _config(
            """
profile: eastron-sdm630
baudrate: 19200
signals:
  - {name: voltage_l1, unit: kV, scale: 0.001}
  - {name: energy_total, register: 30345}
  - {name: cabinet_temp, table: input, address: 400, type: int16}
"""
        )
        .machines[0]
        .modbus
    )
    by_name = {s.name: s for s in device.signals}
    assert device.baudrate == 19200  # the machine's own setting wins
    assert device.max_registers_per_request == 50  # the profile's, not the default 125
    assert (by_name["voltage_l1"].type, by_name["voltage_l1"].address) == ("float32", 0)
    assert (by_name["voltage_l1"].scale, by_name["voltage_l1"].unit) == (0.001, "kV")
    assert (by_name["energy_total"].table, by_name["energy_total"].address) == ("input", 344)
    assert by_name["cabinet_temp"].type == "int16"
    assert [s.name for s in device.signals[:3]] == ["voltage_l1", "energy_total", "cabinet_temp"]
    assert len(device.signals) == len(load_profile("eastron-sdm630").signals) + 1


def test_an_override_of_one_key_keeps_the_others() -> None:
    profile = {s["name"]: s for s in load_profile("eastron-sdm630").signals}
    assert profile["voltage_l1"]["table"] == "input"
    moved = _config("profile: eastron-sdm630\nsignals: [{name: voltage_l1, address: 100}]")
    signal = {s.name: s for s in moved.machines[0].modbus.signals}["voltage_l1"]
    assert (signal.table, signal.address, signal.type) == ("input", 100, "float32")
    other_table = _config("profile: eastron-sdm630\nsignals: [{name: voltage_l1, table: holding}]")
    signal = {s.name: s for s in other_table.machines[0].modbus.signals}["voltage_l1"]
    assert (signal.table, signal.address) == ("holding", 0)
    # Half of an order: the word order of a CDAB profile signal stays, its bytes swap.
    swapped = _config("profile: delta-dvp\nsignals: [{name: part_count, byte_order: little}]")
    parts = {s.name: s for s in swapped.machines[0].modbus.signals}["part_count"]
    assert parts.orders == ("little", "little")


def test_profile_signals_keeps_only_those() -> None:
    device = _config("profile: eastron-sdm120\nprofile_signals: [power, energy_import]")
    names = [s.name for s in device.machines[0].modbus.signals]
    assert sorted(names) == ["energy_import", "power"]


@pytest.mark.parametrize(
    ("extra", "path", "words"),
    [
        ("profile: eastron-sdm999", "machines[0].modbus.profile", "eastron-sdm120"),
        (
            "profile: eastron-sdm120\nprofile_signals: [power, voltage_l9]",
            "machines[0].modbus.profile_signals",
            "voltage_l9",
        ),
        (
            "profile_signals: [power]\nsignals: [{name: a, table: holding, address: 0}]",
            "machines[0].modbus.profile_signals",
            "only with a `profile`",
        ),
        (
            "profile: eastron-sdm120\nprofile_signals: [{name: power}]",
            "machines[0].modbus.profile_signals",
            "signal names",
        ),
        (
            "profile: eastron-sdm120\nsignals: [{name: voltage, scael: 2}]",
            "machines[0].modbus.signals[0].scael",
            "scale",
        ),
        (
            "profile: eastron-sdm120\nsignals: [{name: clash, table: input, address: 1}]",
            "machines[0].modbus.signals",
            "overlaps",
        ),
    ],
)
def test_a_wrong_profile_use_names_the_field(extra: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(extra)
    text = str(caught.value)
    assert path in text and words in text, text


# -- against a simulated device built from each profile -------------------------------------------


def _served_value(entry: dict[str, Any], rng: random.Random) -> float | int | bool:
    """A value the device could show, exactly representable through its type and scale."""
    kind = entry.get("type", "uint16")
    scale = float(entry.get("scale", 1.0))
    if kind == "bool":
        return rng.random() < 0.5
    if kind.startswith("float"):
        return round(rng.uniform(-500, 500), 2)
    bits = {"int16": 15, "uint16": 16, "int32": 31, "uint32": 32, "int64": 40, "uint64": 40}[kind]
    low = -(2**bits) if kind.startswith("int") else 0
    raw = rng.randrange(low, 2**bits - 1 if kind.startswith("int") else 2**bits)
    return raw * scale if scale != 1.0 else raw


def _scenario(values: dict[str, dict[str, Any]]) -> Scenario:
    devices = []
    for offset, profile_id in enumerate(profile_ids()):
        signals = []
        for entry in load_profile(profile_id).signals:
            sim = {k: entry[k] for k in ("name", "table", "address", "bit", "count") if k in entry}
            sim["type"] = entry.get("type", "uint16")
            if "order" in entry:
                sim["order"] = entry["order"]
            if "scale" in entry:
                sim["scale"] = entry["scale"]
            value = values[profile_id][entry["name"]]
            sim["value"] = {"constant": int(value) if isinstance(value, bool) else value}
            signals.append(sim)
        devices.append(
            {
                "name": f"{profile_id}-device",
                "transport": "tcp",
                "offset": offset,
                "machines": [{"id": profile_id, "kind": "x", "unit": 1, "signals": signals}],
            }
        )
    return Scenario.model_validate({"name": "profiles", "timezone": "UTC", "devices": devices})


@pytest.mark.integration
async def test_the_collector_reads_what_a_device_built_from_each_profile_serves() -> None:
    rng = random.Random(20261126)
    values = {
        pid: {e["name"]: _served_value(e, rng) for e in load_profile(pid).signals}
        for pid in profile_ids()
    }
    scenario = _scenario(values)
    port_base = free_port_base(len(profile_ids()) + 1)
    machines = "\n".join(
        f"  - id: {pid}\n    sector: s\n    modbus: {{host: 127.0.0.1, port: {port_base + i}, "
        f"unit: 1, transport: tcp, profile: {pid}}}"
        for i, pid in enumerate(profile_ids())
    )
    config = parse_config(f"factory: f\nsectors: [{{id: s}}]\nmachines:\n{machines}\n", environ={})
    async with run_scenario(scenario, port_base=port_base, frozen=True):
        for machine in config.machines:
            connection = ModbusConnection([machine])
            reading = await _first_reading(connection)
            expected = values[machine.id]
            assert set(reading.values) == set(expected), machine.id
            for name, served in expected.items():
                got = reading.values[name]
                if isinstance(served, bool):
                    assert got is served, (machine.id, name)
                elif isinstance(served, int):
                    assert got == served, (machine.id, name)
                else:
                    assert math.isclose(float(got), served, rel_tol=1e-6, abs_tol=1e-9), (
                        machine.id,
                        name,
                        got,
                        served,
                    )


async def _first_reading(connection: ModbusConnection) -> Reading:
    async with asyncio.timeout(10), connection:
        async for reading in connection:
            return reading
    raise AssertionError("no reading")


def test_profile_files_are_plain_yaml_with_ids_matching_names() -> None:
    from collector.profiles import DIRECTORY

    for path in sorted(DIRECTORY.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["id"] == path.stem


def test_a_signal_name_keeps_one_type_across_profiles() -> None:
    # A plant with a Novus and an Autonics controller has both `pv` fields in one measurement:
    # InfluxDB keeps one type per field name, so the profiles agree on it.
    from collector.config import Signal

    kinds: dict[str, set[str]] = {}
    for profile_id in profile_ids():
        for entry in load_profile(profile_id).signals:
            kinds.setdefault(entry["name"], set()).add(Signal.model_validate(entry).field_kind)
    assert {name: k for name, k in kinds.items() if len(k) > 1} == {}


def test_the_json_schema_takes_a_machine_that_only_names_its_profile() -> None:
    import jsonschema

    from collector.config import json_schema

    schema = json_schema()
    with_profile = yaml.safe_load(
        BASE + "      profile: eastron-sdm120\n      signals: [{name: voltage, unit: kV}]\n"
    )
    jsonschema.validate(with_profile, schema)
    neither = yaml.safe_load(BASE)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(neither, schema)
