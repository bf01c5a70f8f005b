"""Payload parsers on payloads taken from each firmware's documentation, with hand-made answers."""

from __future__ import annotations

import zoneinfo
from pathlib import Path

import pytest

from collector.config import MqttSignal
from collector.sources import mqtt_formats
from collector.sources.mqtt_formats import (
    Parsed,
    PayloadError,
    Value,
    coerce,
    make_parser,
    plausible_time,
)
from collector.sources.sparkplug import (
    DATATYPES,
    SparkplugMetric,
    decode_payload,
    encode_payload,
)

SAMPLES = Path(__file__).parent / "samples"
PLANT = zoneinfo.ZoneInfo("America/Argentina/Buenos_Aires")  # UTC-3, no DST since 2009


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def values(parsed: Parsed) -> dict[str, object]:
    return {v.selector: v.value for v in parsed.values}


def times(parsed: Parsed) -> set[int | None]:
    return {v.time_ms for v in parsed.values}


def error_of(call: object) -> PayloadError:
    assert callable(call)
    with pytest.raises(PayloadError) as caught:
        call()
    return caught.value


def test_all_matches_the_public_names() -> None:
    public = {
        name
        for name, obj in vars(mqtt_formats).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == mqtt_formats.__name__
    }
    assert (
        set(mqtt_formats.__all__)
        == public
        == {
            "Parsed",
            "PayloadError",
            "PayloadParser",
            "Value",
            "coerce",
            "coercer",
            "make_parser",
            "plausible_time",
        }
    )


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown payload format 'xml'"):
        make_parser("xml", zone=PLANT)


@pytest.mark.parametrize("payload_format", ["plain", "json", "tasmota", "shelly", "sparkplug"])
def test_a_topic_kind_the_format_lacks_is_unsupported(payload_format: str) -> None:
    parser = make_parser(payload_format, zone=PLANT)
    error = error_of(lambda: parser.parse("weather", None, b"1", ["a"]))
    assert error.kind == "unsupported"
    assert str(error) == f"format {payload_format} has no topic kind 'weather'"


# ---- plain ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"12.5", 12.5),
        (b"-3", -3),
        (b"+7", 7),
        (b"1e3", 1000.0),
        (b" 42 \n", 42),
        (b"ON", True),
        (b"OFF", False),
        (b"true", True),
        (b"false", False),
        (b"on", True),
        (b"online", "online"),
        (b"Stopped: door open", "Stopped: door open"),
        ("Presión baja".encode(), "Presión baja"),
        (b"1_000", "1_000"),  # float() would take it; a board would not mean a number
        (b"0x10", "0x10"),
    ],
)
def test_plain_values(payload: bytes, expected: object) -> None:
    parsed = make_parser("plain", zone=PLANT).parse("value", None, payload, ["rpm"])
    assert parsed == Parsed((Value("rpm", expected),))  # type: ignore[arg-type]
    assert type(parsed.values[0].value) is type(expected)


@pytest.mark.parametrize("payload", [b"", b"  \n", b"nan", b"NaN", b"-inf", b"1e999"])
def test_plain_without_a_reading_gives_nothing(payload: bytes) -> None:
    assert make_parser("plain", zone=PLANT).parse("value", None, payload, ["rpm"]) == Parsed()


def test_plain_reads_the_signal_level_of_the_topic() -> None:
    parser = make_parser("plain", zone=PLANT)
    assert parser.parse("value", "temp", b"21.5", ["rpm", "temp"]).values == (Value("temp", 21.5),)
    assert parser.parse("value", "other", b"21.5", ["rpm", "temp"]) == Parsed()
    assert parser.parse("value", None, b"21.5", []) == Parsed()


def test_plain_invalid_utf8() -> None:
    parser = make_parser("plain", zone=PLANT)
    error = error_of(lambda: parser.parse("value", None, b"12\xff5", ["rpm"]))
    assert (error.kind, str(error)) == ("invalid_utf8", "not UTF-8 at byte 2")


# ---- json ----------------------------------------------------------------------------------

BOARD = b"""{
  "machine": {"state": "running", "rpm": 1450},
  "sensors": [{"temp": 41.5, "ok": true}, {"temp": null}],
  "matrix": [[1, 2], [3, 4], [5, 6]],
  "key.with.dot": 7,
  "outer": {"a.b": {"c": "deep"}},
  "nested": {"object": {"x": 1}},
  "big": 123456789012345678901234567890,
  "inf": 1e999,
  "nan": NaN
}"""


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("machine.state", "running"),
        ("machine.rpm", 1450),
        ("sensors[0].temp", 41.5),
        ("sensors[0].ok", True),
        ("matrix[2][1]", 6),
        ('["key.with.dot"]', 7),
        ("['key.with.dot']", 7),
        ('outer["a.b"].c', "deep"),
        ("big", 123456789012345678901234567890),
    ],
)
def test_json_paths(selector: str, expected: object) -> None:
    parsed = make_parser("json", zone=PLANT).parse("value", None, BOARD, [selector])
    assert parsed.values == (Value(selector, expected),)  # type: ignore[arg-type]
    assert parsed.values[0].time_ms is None  # json: arrival time


@pytest.mark.parametrize(
    "selector",
    [
        "machine.missing",
        "sensors[1].temp",  # null
        "sensors[5].temp",
        "sensors.temp",  # a list, not an object
        "machine[0]",  # an object, not a list
        "nested.object",  # an object is not a value
        "matrix",  # nor is a list
        "inf",  # 1e999 reads as infinity, which InfluxDB cannot store
        "nan",
        "machine..state",  # not a path: one literal key, which is absent
        "key.with.dot",  # written unquoted it means three levels
    ],
)
def test_json_selectors_without_a_value_are_absent(selector: str) -> None:
    assert make_parser("json", zone=PLANT).parse("value", None, BOARD, [selector]) == Parsed()


def test_json_several_signals_from_one_message() -> None:
    wanted = ["machine.rpm", "sensors[0].temp", "machine.missing", "matrix[0][0]"]
    parsed = make_parser("json", zone=PLANT).parse("value", None, BOARD, wanted)
    assert values(parsed) == {"machine.rpm": 1450, "sensors[0].temp": 41.5, "matrix[0][0]": 1}


def test_json_top_level_list_and_bom() -> None:
    parser = make_parser("json", zone=PLANT)
    assert parser.parse("value", None, b"[10, 20]", ["[1]"]).values == (Value("[1]", 20),)
    assert parser.parse("value", None, b'\xef\xbb\xbf{"a": 1}', ["a"]).values == (Value("a", 1),)


@pytest.mark.parametrize(
    ("payload", "kind", "message"),
    [
        (b'{"a": 1', "malformed", "not JSON: Expecting ',' delimiter: line 1 column 8 (char 7)"),
        (b"12.5 volts", "malformed", "not JSON: Extra data: line 1 column 6 (char 5)"),
        (b'{"a": "\xc3\x28"}', "invalid_utf8", "not UTF-8 at byte 7"),
        (b"[" * 65 + b"]" * 65, "malformed", "JSON nested deeper than 64 levels"),
        (b'{"a":' * 100_000, "malformed", "JSON nested deeper than 64 levels"),
        (b"9" * 5000, "malformed", None),  # past Python's int digit limit
    ],
)
def test_json_bad_payloads(payload: bytes, kind: str, message: str | None) -> None:
    parser = make_parser("json", zone=PLANT)
    error = error_of(lambda: parser.parse("value", None, payload, ["a"]))
    assert error.kind == kind
    if message is not None:
        assert str(error) == message


def test_json_nesting_within_the_bound_is_read() -> None:
    payload = b'{"a":' * 64 + b"1" + b"}" * 64
    selector = ".".join(["a"] * 64)
    parsed = make_parser("json", zone=PLANT).parse("value", None, payload, [selector])
    assert parsed.values == (Value(selector, 1),)


def test_json_brackets_inside_strings_do_not_count_as_nesting() -> None:
    payload = b'{"log": "' + b"[{" * 200 + b'", "v": 3}'
    assert make_parser("json", zone=PLANT).parse("value", None, payload, ["v"]).values == (
        Value("v", 3),
    )


# ---- tasmota -------------------------------------------------------------------------------


def test_tasmota_energy_plug() -> None:
    wanted = ["ENERGY.Power", "ENERGY.Total", "ENERGY.Factor", "ENERGY.Voltage", "ENERGY.Current"]
    parsed = make_parser("tasmota", zone=PLANT).parse(
        "sensor", None, sample("tasmota/sensor_energy.json"), wanted
    )
    assert values(parsed) == {
        "ENERGY.Power": 5,
        "ENERGY.Total": 3.705,
        "ENERGY.Factor": 1.0,
        "ENERGY.Voltage": 233,
        "ENERGY.Current": 0.021,
    }
    # 2022-01-11T21:57:38 in Buenos Aires (UTC-3) is 2022-01-12T00:57:38Z.
    assert times(parsed) == {1_641_949_058_000}


def test_tasmota_ds18b20() -> None:
    parsed = make_parser("tasmota", zone=PLANT).parse(
        "sensor", None, sample("tasmota/sensor_ds18b20.json"), ["DS18B20.Temperature", "TempUnit"]
    )
    assert values(parsed) == {"DS18B20.Temperature": 49.7, "TempUnit": "C"}
    assert times(parsed) == {1_546_311_600_000}  # 2019-01-01T03:00:00Z


def test_tasmota_counter() -> None:
    parsed = make_parser("tasmota", zone=PLANT).parse(
        "sensor", None, sample("tasmota/sensor_counter.json"), ["COUNTER.C1", "COUNTER.C2"]
    )
    assert parsed.values == (Value("COUNTER.C1", 3, 1_640_954_399_000),)


def test_tasmota_two_channels_give_arrays() -> None:
    wanted = ["ENERGY.Power[0]", "ENERGY.Power[1]", "ENERGY.Total[1]", "ENERGY.BL09XX.Temperature"]
    parsed = make_parser("tasmota", zone=PLANT).parse(
        "sensor", None, sample("tasmota/sensor_dual_meter.json"), wanted
    )
    assert values(parsed) == {
        "ENERGY.Power[0]": 52,
        "ENERGY.Power[1]": 5,
        "ENERGY.Total[1]": 0.254,
        "ENERGY.BL09XX.Temperature": 46.5,
    }


def test_tasmota_time_in_a_zone_with_summer_time() -> None:
    parsed = make_parser("tasmota", zone=zoneinfo.ZoneInfo("Europe/Berlin")).parse(
        "sensor",
        None,
        sample("tasmota/sensor_ct_dht11.json"),
        ["ANALOG.CTEnergy.Power", "DHT11.Temperature"],
    )
    assert values(parsed) == {"ANALOG.CTEnergy.Power": 2068, "DHT11.Temperature": 23.0}
    assert times(parsed) == {1_623_560_392_000}  # 06:59:52 CEST = 04:59:52Z


def test_tasmota_state_power_is_a_bool() -> None:
    parser = make_parser("tasmota", zone=PLANT)
    parsed = parser.parse("state", None, sample("tasmota/state.json"), ["POWER", "Wifi.RSSI"])
    assert values(parsed) == {"POWER": True, "Wifi.RSSI": 30}
    assert times(parsed) == {1_623_578_392_000}  # 2021-06-13T06:59:52-03:00
    off = parser.parse("state", None, sample("tasmota/state_off.json"), ["POWER", "POWER1"])
    assert off.values == (Value("POWER", False, 1_708_824_038_000),)


def test_tasmota_time_with_an_offset_is_taken_as_written() -> None:
    parsed = make_parser("tasmota", zone=PLANT).parse(
        "state", None, sample("tasmota/state_offset.json"), ["POWER"]
    )
    assert parsed.values == (Value("POWER", True, 1_624_799_024_000),)  # 13:03:44Z


@pytest.mark.parametrize(
    ("stamp", "time_ms"),
    [
        ('"1970-01-01T00:00:18"', 10_818_000),  # no NTP yet: plausible_time drops it
        ('"2018.02.15 01:00:50"', None),  # an old firmware's format: arrival time
        ('"not a time"', None),
        ("12345", None),
        ('"0001-01-01T00:00:00+14:00"', -62_135_647_200_000),  # far past: dropped later too
    ],
)
def test_tasmota_odd_time_stamps(stamp: str, time_ms: int | None) -> None:
    payload = b'{"Time":' + stamp.encode() + b',"COUNTER":{"C1":1}}'
    parsed = make_parser("tasmota", zone=PLANT).parse("sensor", None, payload, ["COUNTER.C1"])
    assert parsed.values == (Value("COUNTER.C1", 1, time_ms),)


def test_tasmota_lwt() -> None:
    parser = make_parser("tasmota", zone=PLANT)
    online = parser.parse("availability", None, sample("tasmota/lwt_online.txt"), ["POWER"])
    offline = parser.parse("availability", None, sample("tasmota/lwt_offline.txt"), ["POWER"])
    assert (online, offline) == (Parsed(online=True), Parsed(online=False))
    assert parser.parse("availability", None, b"", ["POWER"]) == Parsed()  # retained cleared
    error = error_of(lambda: parser.parse("availability", None, b"Sleeping", ["POWER"]))
    assert (error.kind, str(error)) == ("malformed", "'Sleeping' is neither Online nor Offline")


# ---- esphome -------------------------------------------------------------------------------


def test_esphome_sensor() -> None:
    parser = make_parser("esphome", zone=PLANT)
    wanted = ["temperature", "vibration"]
    temperature = parser.parse(
        "sensor", "temperature", sample("esphome/sensor_temperature.txt"), wanted
    )
    vibration = parser.parse("sensor", "vibration", sample("esphome/sensor_vibration.txt"), wanted)
    assert temperature == Parsed((Value("temperature", 23.5),))
    assert vibration == Parsed((Value("vibration", 0.84),))
    assert parser.parse("sensor", "humidity", b"40", wanted) == Parsed()  # not a signal


def test_esphome_nan_is_no_reading_not_an_error() -> None:
    parser = make_parser("esphome", zone=PLANT)
    nan = sample("esphome/sensor_nan.txt")
    assert parser.parse("sensor", "temperature", nan, ["temperature"]) == Parsed()


def test_esphome_binary_sensor_and_status() -> None:
    parser = make_parser("esphome", zone=PLANT)
    on = parser.parse("binary_sensor", "door", sample("esphome/binary_sensor_on.txt"), ["door"])
    off = parser.parse("binary_sensor", "door", sample("esphome/binary_sensor_off.txt"), ["door"])
    assert (on.values, off.values) == ((Value("door", True),), (Value("door", False),))
    online = parser.parse("availability", None, sample("esphome/status_online.txt"), ["door"])
    offline = parser.parse("availability", None, sample("esphome/status_offline.txt"), ["door"])
    assert (online.online, offline.online) == (True, False)


def test_esphome_wrong_payloads() -> None:
    parser = make_parser("esphome", zone=PLANT)
    error = error_of(lambda: parser.parse("sensor", "temperature", b"warm", ["temperature"]))
    assert (error.kind, str(error)) == ("wrong_type", "sensor temperature: 'warm' is not a number")
    error = error_of(lambda: parser.parse("binary_sensor", "door", b"1", ["door"]))
    assert (error.kind, str(error)) == ("wrong_type", "binary sensor door: '1', not ON/OFF")


# ---- shelly --------------------------------------------------------------------------------

SHELLY_WANTED = [
    "switch:0.apower",
    "switch:0.voltage",
    "switch:0.aenergy.total",
    "switch:0.aenergy.by_minute[2]",
    "switch:0.temperature.tC",
    "switch:0.output",
    "switch:0.current",  # not in this model's status
    "switch:1.apower",
    "pm1:0.apower",
]


def test_shelly_switch_status() -> None:
    parsed = make_parser("shelly", zone=PLANT).parse(
        "status", "switch:0", sample("shelly/switch_status.json"), SHELLY_WANTED
    )
    assert values(parsed) == {
        "switch:0.apower": 8.9,
        "switch:0.voltage": 237.5,
        "switch:0.aenergy.total": 6.532,
        "switch:0.aenergy.by_minute[2]": 88.397,
        "switch:0.temperature.tC": 23.5,
        "switch:0.output": True,
    }
    assert times(parsed) == {None}


def test_shelly_answers_only_the_component_of_the_topic() -> None:
    parser = make_parser("shelly", zone=PLANT)
    payload = sample("shelly/switch_status.json")
    assert parser.parse("status", "switch:1", payload, SHELLY_WANTED).values == (
        Value("switch:1.apower", 8.9),
    )
    assert parser.parse("status", "input:0", payload, SHELLY_WANTED) == Parsed()
    assert parser.parse("status", "switch:0", b"not json", ["pm1:0.apower"]) == Parsed()


def test_shelly_online() -> None:
    parser = make_parser("shelly", zone=PLANT)
    assert parser.parse("availability", None, sample("shelly/online_true.txt"), []).online
    assert parser.parse("availability", None, sample("shelly/online_false.txt"), []).online is False


# ---- sparkplug -----------------------------------------------------------------------------

T_BIRTH = 1_795_600_800_000  # 2026-11-25T10:00:00Z
T_DATA = T_BIRTH + 60_000


def _m(
    name: str | None,
    alias: int | None,
    datatype: str | int | None,
    value: object = None,
    **extra: object,
) -> SparkplugMetric:
    return SparkplugMetric(
        name=name,
        alias=alias,
        datatype=DATATYPES[datatype] if isinstance(datatype, str) else datatype,
        value=value,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


NBIRTH_METRICS = [
    _m("bdSeq", None, "Int64", 3),
    _m("Node Control/Rebirth", None, "Boolean", False),
    _m("Temperatures/Oven 1", 1, "Float", 812.5),
    _m("Temperatures/Oven 2", 2, "Double", 799.25),
    _m("Door/Open", 3, "Boolean", False),
    _m("Counters/Parts", 4, "UInt32", 4_000_000_000),
    _m("Trim/Offset", 5, "Int8", -3),
    _m("Energy/Balance", 6, "Int64", -1_500),
    _m("Recipe", 7, "String", "A-17 acero"),
    _m("Last/Service", 8, "DateTime", 1_790_000_000_000),
    _m("Table", 9, 16, b"\x00", value_field="dataset_value"),  # a DataSet: not stored
]
NDATA_METRICS = [
    _m(None, 1, None, 815.0, value_field="float_value", timestamp=T_DATA + 500),
    _m(None, 3, None, True, value_field="boolean_value"),
    _m(None, 4, None, 4_000_000_001, value_field="long_value"),
    _m(None, 5, None, -4, value_field="int_value"),
    _m(None, 2, None, None, is_null=True),
]
WANTED = [
    "Temperatures/Oven 1",
    "Temperatures/Oven 2",
    "Door/Open",
    "Counters/Parts",
    "Trim/Offset",
    "Energy/Balance",
    "Recipe",
    "Last/Service",
    "Table",
]


def test_sparkplug_samples_are_what_the_encoder_writes() -> None:
    assert sample("sparkplug/nbirth.bin") == encode_payload(
        NBIRTH_METRICS, timestamp=T_BIRTH, seq=0
    )
    assert sample("sparkplug/ndata.bin") == encode_payload(NDATA_METRICS, timestamp=T_DATA, seq=1)


def test_sparkplug_birth_then_data_by_alias() -> None:
    parser = make_parser("sparkplug", zone=PLANT)
    birth = parser.parse("NBIRTH", None, sample("sparkplug/nbirth.bin"), WANTED)
    assert birth.online is True
    assert values(birth) == {
        "Temperatures/Oven 1": 812.5,
        "Temperatures/Oven 2": 799.25,
        "Door/Open": False,
        "Counters/Parts": 4_000_000_000,
        "Trim/Offset": -3,
        "Energy/Balance": -1_500,
        "Recipe": "A-17 acero",
        "Last/Service": 1_790_000_000_000,
    }
    assert times(birth) == {T_BIRTH}
    data = parser.parse("NDATA", None, sample("sparkplug/ndata.bin"), WANTED)
    assert data.online is None
    assert data.values == (
        Value("Temperatures/Oven 1", 815.0, T_DATA + 500),  # the metric's own time stamp
        Value("Door/Open", True, T_DATA),
        Value("Counters/Parts", 4_000_000_001, T_DATA),
        Value("Trim/Offset", -4, T_DATA),
    )  # Oven 2 is null: no value


def test_sparkplug_data_before_any_birth_waits_for_a_rebirth() -> None:
    parser = make_parser("sparkplug", zone=PLANT)
    error = error_of(lambda: parser.parse("NDATA", None, sample("sparkplug/ndata.bin"), WANTED))
    assert error.kind == "unknown_alias"
    assert str(error) == (
        "NDATA: alias 1 was not in a birth certificate seen since the collector started; "
        "wait for a rebirth"
    )


def test_sparkplug_death_forgets_the_birth() -> None:
    parser = make_parser("sparkplug", zone=PLANT)
    parser.parse("NBIRTH", None, sample("sparkplug/nbirth.bin"), WANTED)
    stale = encode_payload([_m("bdSeq", None, "Int64", 2)])
    assert parser.parse("NDEATH", None, stale, WANTED) == Parsed()  # an older session's will
    death = encode_payload([_m("bdSeq", None, "Int64", 3)])
    assert parser.parse("NDEATH", None, death, WANTED) == Parsed(online=False)
    with pytest.raises(PayloadError, match="wait for a rebirth"):
        parser.parse("NDATA", None, sample("sparkplug/ndata.bin"), WANTED)


def test_sparkplug_births_are_kept_per_key() -> None:
    parser = make_parser("sparkplug", zone=PLANT)
    parser.parse("NBIRTH", "oven-1", sample("sparkplug/nbirth.bin"), WANTED)
    assert parser.parse("NDATA", "oven-1", sample("sparkplug/ndata.bin"), WANTED).values
    with pytest.raises(PayloadError, match="wait for a rebirth"):
        parser.parse("NDATA", "oven-2", sample("sparkplug/ndata.bin"), WANTED)


def test_sparkplug_device_birth_data_death() -> None:
    parser = make_parser("sparkplug", zone=PLANT)
    birth = encode_payload(
        [_m("Vibration/RMS", 10, "Float", 0.5), _m("Motor/Running", 11, "Boolean", True)],
        timestamp=T_BIRTH,
    )
    assert parser.parse("DBIRTH", None, birth, ["Vibration/RMS"]) == Parsed(
        (Value("Vibration/RMS", 0.5, T_BIRTH),), online=True
    )
    data = encode_payload([_m(None, 10, None, 0.75, value_field="float_value", timestamp=T_DATA)])
    assert parser.parse("DDATA", None, data, ["Vibration/RMS"]).values == (
        Value("Vibration/RMS", 0.75, T_DATA),
    )
    assert parser.parse("DDEATH", None, encode_payload([]), ["Vibration/RMS"]) == Parsed(
        online=False
    )


def test_sparkplug_signed_integers_as_tahu_writes_them() -> None:
    # Tahu sign-extends an Int8 to 32 bits: -1 arrives as 0xFFFFFFFF in int_value.
    raw = encode_payload(
        [
            _m("i8", None, 1, 0xFFFFFFFF, value_field="int_value"),
            _m("i8short", None, 1, 0xFF, value_field="int_value"),
            _m("i16", None, 2, 0xFFFF8000, value_field="int_value"),
            _m("i32", None, 3, 0x80000000, value_field="int_value"),
            _m("i64", None, 4, 2**64 - 2, value_field="long_value"),
            _m("u32long", None, 7, 4_294_967_295, value_field="long_value"),
            _m("u64", None, 8, 2**64 - 1, value_field="long_value"),
        ]
    )
    wanted = ["i8", "i8short", "i16", "i32", "i64", "u32long", "u64"]
    parsed = make_parser("sparkplug", zone=PLANT).parse("NBIRTH", None, raw, wanted)
    assert values(parsed) == {
        "i8": -1,
        "i8short": -1,
        "i16": -32768,
        "i32": -(2**31),
        "i64": -2,
        "u32long": 4_294_967_295,
        "u64": 2**64 - 1,
    }


def test_sparkplug_skips_values_that_contradict_their_type() -> None:
    raw = encode_payload(
        [
            _m("float_as_string", None, 9, "hot", value_field="string_value"),
            _m("nan", None, "Double", float("nan")),
            _m("array", None, 22, b"\x01\x02", value_field="bytes_value"),
        ]
    )
    parser = make_parser("sparkplug", zone=PLANT)
    assert parser.parse("NBIRTH", None, raw, ["float_as_string", "nan", "array"]) == Parsed(
        online=True
    )


def test_sparkplug_bad_bytes() -> None:
    parser = make_parser("sparkplug", zone=PLANT)
    error = error_of(lambda: parser.parse("NDATA", None, b"\xff\xff\xff", WANTED))
    assert error.kind == "malformed"
    assert str(error).startswith("not a Sparkplug B payload: ")
    bad_name = b"\x12\x03\x0a\x01\xff"  # metrics { name: b"\xff" }
    error = error_of(lambda: parser.parse("NBIRTH", None, bad_name, WANTED))
    assert (error.kind, str(error)) == ("invalid_utf8", "metric 0: its name is not UTF-8")
    assert decode_payload(b"").metrics == ()


# ---- coerce and plausible_time --------------------------------------------------------------


def signal(type_: str = "float", **extra: object) -> MqttSignal:
    return MqttSignal.model_validate({"name": "oven_temp", "type": type_, **extra})


@pytest.mark.parametrize(
    ("value", "sig", "expected"),
    [
        (12, signal(), 12.0),
        (12.5, signal(), 12.5),
        ("12.5", signal(), 12.5),
        (" -3 ", signal(), -3.0),
        (100, signal(scale=0.1, offset=-5), 5.0),
        (42, signal("int"), 42),
        (42.0, signal("int"), 42),
        ("42", signal("int"), 42),
        (2**63 - 1, signal("int"), 2**63 - 1),
        (7, signal("int", scale=2), 14.0),  # scaled: stored as float
        (True, signal("bool"), True),
        (0, signal("bool"), False),
        ("ON", signal("bool"), True),
        ("off", signal("bool"), False),
        ("1", signal("bool"), True),
        ("A-17", signal("string"), "A-17"),
        (True, signal("string"), "true"),
        (12.5, signal("string"), "12.5"),
    ],
)
def test_coerce(value: object, sig: MqttSignal, expected: object) -> None:
    result = coerce(value, sig)  # type: ignore[arg-type]
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "sig", "message"),
    [
        ("abc", signal(), "oven_temp: 'abc' is not a number (type float)"),
        (True, signal(), "oven_temp: True is a boolean, not a number (type float)"),
        (float("inf"), signal(), "oven_temp: inf is not a finite number"),
        (10**400, signal(), "oven_temp: 1" + "0" * 56 + "... is too large for a float"),
        (1e308, signal(scale=10), "oven_temp: 1e+308 is not a finite number"),
        (12.5, signal("int"), "oven_temp: 12.5 is not a whole number (give the signal type float)"),
        (2**63, signal("int"), "oven_temp: 9223372036854775808 is out of the 64-bit integer range"),
        ("maybe", signal("bool"), "oven_temp: 'maybe' is not a boolean (ON/OFF, true/false, 1/0)"),
        (2, signal("bool"), "oven_temp: 2 is not a boolean (ON/OFF, true/false, 1/0)"),
    ],
)
def test_coerce_refuses_with_the_signal_and_value(
    value: object, sig: MqttSignal, message: str
) -> None:
    error = error_of(lambda: coerce(value, sig))  # type: ignore[arg-type]
    assert (error.kind, str(error)) == ("wrong_type", message)


NOW = 1_795_600_800_000  # 2026-11-25T10:00:00Z


@pytest.mark.parametrize(
    ("time_ms", "expected"),
    [
        (None, NOW),
        (NOW - 3_600_000, NOW - 3_600_000),  # an hour late (a queued QoS 1 message): kept
        (946_684_800_000, 946_684_800_000),  # 2000-01-01 exactly
        (946_684_799_999, NOW),  # before 2000: a clock never set
        (18_000, NOW),  # 1970, no NTP
        (NOW + 300_000, NOW + 300_000),  # 5 minutes ahead: kept
        (NOW + 300_001, NOW),
        (2**64 - 1, NOW),
    ],
)
def test_plausible_time(time_ms: int | None, expected: int) -> None:
    assert plausible_time(time_ms, NOW) == expected


def test_payload_error_kinds_are_fixed() -> None:
    with pytest.raises(ValueError, match="unknown payload error kind 'oops'"):
        PayloadError("oops", "x")
