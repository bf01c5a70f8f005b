"""The factory config: golden cases of real mistakes, environment overrides, the JSON Schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import (
    ConfigError,
    config_warnings,
    json_schema,
    load_config,
    parse_config,
)

GOLDEN = Path(__file__).parent.parent / "golden" / "config"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    """Each folder holds a config and the exact problems a user is shown (or `ok`)."""
    folder = GOLDEN / case
    expected = (folder / "expected.txt").read_text(encoding="utf-8").strip()
    try:
        config = load_config(folder / "config.yaml", environ={})
    except ConfigError as exc:
        assert "\n".join(str(p) for p in exc.problems) == expected
    else:
        warnings = [f"warning: {w}" for w in config_warnings(config)]
        assert "\n".join(["ok", *warnings]) == expected


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_are_valid(example: Path) -> None:
    config = load_config(example, environ={})
    assert config.machines


MINIMAL = """
factory: coop
influxdb: {url: "http://127.0.0.1:8086", database: from_file}
sectors: [{id: press}]
machines:
  - id: press-1
    sector: press
    modbus:
      host: 127.0.0.1
      port: 5020
      signals: [{name: pressure, register: 40010, type: int16, scale: 0.1}]
"""


def test_environment_overrides_the_file_and_brings_secrets() -> None:
    environ = {
        "AGUANTE_INFLUXDB_URL": "https://influx.example:8086/",
        "AGUANTE_INFLUXDB_DATABASE": "planta",
        "AGUANTE_INFLUXDB_USERNAME": "collector",
        "AGUANTE_INFLUXDB_PASSWORD": "s3cret",
        "AGUANTE_INFLUXDB_TOKEN": "tok",
    }
    config = parse_config(MINIMAL, environ=environ)
    influx = config.influxdb
    assert (influx.url, influx.database) == ("https://influx.example:8086", "planta")
    assert (influx.username, influx.password, influx.token) == ("collector", "s3cret", "tok")
    assert parse_config(MINIMAL, environ={}).influxdb.database == "from_file"


def test_text_repeated_in_the_file_is_one_object_in_the_models() -> None:
    """A plant's file repeats units, types and names thousands of times; the models keep one
    copy of each (the collector's memory for 100 devices depends on it)."""
    text = MINIMAL.replace(
        "signals: [{name: pressure, register: 40010, type: int16, scale: 0.1}]",
        "signals: [{name: pressure, table: input, address: 1, unit: bar},"
        " {name: oil, table: input, address: 2, unit: bar}]",
    )
    first, second = parse_config(text, environ={}).machines[0].modbus.signals  # type: ignore[union-attr]
    assert first.unit == second.unit == "bar"
    assert first.unit is second.unit


def test_modicon_register_is_one_based_and_explicit() -> None:
    signal = parse_config(MINIMAL, environ={}).machines[0].modbus.signals[0]  # type: ignore[union-attr]
    assert (signal.wire_table, signal.wire_address) == ("holding", 9)


def test_all_problems_are_reported_together() -> None:
    text = MINIMAL.replace("factory: coop", "factory: coop\npoll: 1").replace(
        "type: int16", "type: int17"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="plant.yaml", environ={})
    assert str(caught.value).splitlines() == [
        "plant.yaml: 2 problem(s)",
        "  machines[0].modbus.signals[0].type: 'int17' is not allowed; expected 'bool', 'int16', "
        "'uint16', 'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64' or 'string'",
        "  poll: unknown key (hint: known keys: factory, timezone, influxdb, mqtt, "
        "stats_interval, language, state_file, buffer, calendar, stop_reasons, maintenance, "
        "network, sectors, machines)",
    ]


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file: No such file or directory"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_json_schema_describes_the_file() -> None:
    schema = json_schema()
    assert schema["title"] == "aguante factory config"
    assert set(schema["required"]) == {"factory", "sectors", "machines"}
    signal = schema["$defs"]["Signal"]["properties"]
    assert "register" in signal and "modicon" not in signal
    assert schema["$defs"]["Signal"]["additionalProperties"] is False


def test_an_empty_influxdb_section_still_takes_the_environment() -> None:
    text = "influxdb:\n" + MINIMAL.replace(
        'influxdb: {url: "http://127.0.0.1:8086", database: from_file}\n', ""
    )
    config = parse_config(text, environ={"AGUANTE_INFLUXDB_URL": "http://influx.local:8086"})
    assert config.influxdb.url == "http://influx.local:8086"


def test_capacity_settings_are_read_as_a_plant_writes_them() -> None:
    config = load_config(GOLDEN / "capacity-valid" / "config.yaml", environ={})
    morning, night = config.calendar.shifts
    # YAML reads an unquoted 06:00 as the base-60 number 360: it must still be six o'clock.
    assert (morning.start.hour, morning.start.minute, morning.end.hour) == (6, 0, 14)
    assert morning.days == ["mon", "tue", "wed", "thu", "fri"]
    assert night.length_minutes == 8 * 60
    assert config.calendar.changes[0].note == "segundo turno"
    assert config.language == "pt-BR"
    gas, breakdown = config.stop_reasons
    assert gas.name("pt-BR") == "Falta de gás" and gas.name("es") == "Falta de gás"
    assert breakdown.name("es") == "Rotura"  # a default id keeps its default names
    (press,) = config.machines
    assert press.state is not None and press.state.running.clear_below == 3
    assert press.counters.produced is not None and press.counters.produced.wrap is None


def test_the_default_stop_reasons_are_named_in_every_language() -> None:
    config = parse_config(MINIMAL, environ={})
    assert len(config.stop_reasons) == 10
    for reason in config.stop_reasons:
        assert set(reason.label) == {"es", "pt-BR", "en"}
