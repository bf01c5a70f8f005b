"""Property-based fuzzing of every payload parser: whatever arrives, only PayloadError escapes.

Each (format, topic kind) gets its share of generated payloads (well over 10,000 in all); after
each one the same parser must still read a good message, as the subscription would go on.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import zoneinfo
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import MqttSignal
from collector.sources.mqtt_formats import (
    Parsed,
    PayloadError,
    PayloadParser,
    coerce,
    coercer,
    make_parser,
    plausible_time,
)
from collector.sources.sparkplug import SparkplugMetric, encode_payload

SAMPLES = Path(__file__).parent / "samples"
ZONE = zoneinfo.ZoneInfo("America/Argentina/Buenos_Aires")
KINDS_OF_ERROR = {"invalid_utf8", "malformed", "wrong_type", "unsupported", "unknown_alias"}

EXAMPLES_PER_KIND = 700  # x 16 kinds = 11,200 payloads a run, about 30 s on 2 cores
FUZZ = settings(
    max_examples=EXAMPLES_PER_KIND,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# What each (format, kind) is asked for, with the key its topic would give.
WANTED: dict[str, list[str]] = {
    "plain": ["rpm"],
    "json": ["a", "a.b", "a.b.c", "sensors[0].temp", "m[2][1]", '["k.d"]', "x", "0"],
    "tasmota": [
        "ENERGY.Power",
        "ENERGY.Total",
        "COUNTER.C1",
        "DS18B20.Temperature",
        "POWER",
        "POWER1",
        "ENERGY.Power[1]",
        "Time",
    ],
    "esphome": ["temperature", "door"],
    "shelly": [
        "switch:0.apower",
        "switch:0.aenergy.total",
        "switch:0.output",
        "switch:0.aenergy.by_minute[0]",
        "switch:0.temperature.tC",
        "pm1:0.apower",
    ],
    "sparkplug": [
        "Temperatures/Oven 1",
        "Door/Open",
        "Counters/Parts",
        "Trim/Offset",
        "Recipe",
        "bdSeq",
        "a",
        "",
    ],
}
CASES: list[tuple[str, str, str | None]] = [
    ("plain", "value", None),
    ("plain", "value", "rpm"),
    ("json", "value", None),
    ("tasmota", "sensor", None),
    ("tasmota", "state", None),
    ("tasmota", "availability", None),
    ("esphome", "sensor", "temperature"),
    ("esphome", "binary_sensor", "door"),
    ("esphome", "availability", None),
    ("shelly", "status", "switch:0"),
    ("shelly", "availability", None),
    ("sparkplug", "NBIRTH", None),
    ("sparkplug", "NDATA", None),
    ("sparkplug", "NDEATH", None),
    ("sparkplug", "DBIRTH", None),
    ("sparkplug", "DDATA", None),
]
# DDEATH shares NDEATH's code path but is fuzzed too, through the sparkplug cases' extra kinds.
SPARKPLUG_KINDS = ["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"]

SIGNALS = [
    MqttSignal(name="f"),
    MqttSignal(name="i", type="int"),
    MqttSignal(name="b", type="bool"),
    MqttSignal(name="s", type="string"),
    MqttSignal(name="scaled", type="int", scale=0.001, offset=-40),
]


# ---- generators ------------------------------------------------------------------------------

NASTY_NUMBERS = [
    "1e999",
    "-1e999",
    "1e-999",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "0e0",
    "1.",
    ".5",
    "9" * 400,
    "9" * 5000,
    "1" + "0" * 30,
    "-9223372036854775809",
    "18446744073709551616",
    "4.9e-324",
    "1.7976931348623157e308",
    "0x1F",
    "1_000",
    "+1",
]
WORDS = [
    "ON",
    "OFF",
    "on",
    "Online",
    "Offline",
    "online",
    "offline",
    "true",
    "false",
    "True",
    "nan",
    "-nan",
    "inf",
    "null",
    "",
    " ",
    "\x00",
    "\ufeff",
    "switch:0",
    "ÿ",
]

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(WORDS),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.text(max_size=6),
                st.sampled_from(
                    [
                        "a",
                        "b",
                        "c",
                        "ENERGY",
                        "Power",
                        "Time",
                        "POWER",
                        "sensors",
                        "temp",
                        "k.d",
                        "m",
                        "COUNTER",
                        "C1",
                        "apower",
                        "aenergy",
                        "total",
                        "output",
                        "temperature",
                        "tC",
                    ]
                ),
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


def _dumps(value: object) -> bytes:
    # allow_nan writes the NaN/Infinity literals strict JSON forbids; boards send them anyway.
    return json.dumps(value, allow_nan=True).encode()


def _wrong_types_at(paths: list[str]) -> st.SearchStrategy[bytes]:
    """Documents that have every selected path, with anything at its end."""

    def build(leaves: list[object]) -> bytes:
        doc: dict[str, object] = {}
        for path, leaf in zip(paths, leaves, strict=False):
            steps = path.replace("[", ".").replace("]", "").replace('"', "").split(".")
            node: dict[str, object] = doc
            for step in steps[:-1]:
                child = node.setdefault(step, {})
                if not isinstance(child, dict):
                    break
                node = child
            else:
                node[steps[-1]] = leaf
        return _dumps(doc)

    return st.lists(json_values, min_size=len(paths), max_size=len(paths)).map(build)


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for op, where, byte in edits:
        at = where % (len(out) + 1)
        if op == 0 and out:  # flip bits
            out[at % len(out)] ^= byte or 1
        elif op == 1:  # cut the tail
            del out[at:]
        elif op == 2:  # insert a byte
            out[at:at] = bytes([byte])
        elif op == 3 and out:  # drop a byte
            del out[at % len(out)]
        elif op == 4:  # repeat a slice
            out[at:at] = out[at : at + byte]
    return bytes(out)


edits = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 2**16), st.integers(0, 255)), max_size=5
)


def _mutated(bases: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(_mutate, st.sampled_from(bases), edits)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, body: bytes | int) -> bytes:
    tag = _varint((number << 3) | wire)
    if wire == 0:
        return tag + _varint(int(body) if isinstance(body, int) else len(body))
    if wire == 1:
        return tag + (body if isinstance(body, bytes) else b"")[:8].ljust(8, b"\x00")
    if wire == 5:
        return tag + (body if isinstance(body, bytes) else b"")[:4].ljust(4, b"\x00")
    if wire in (3, 4):  # group start/end: obsolete, and a classic decoder trap
        return tag
    data = body if isinstance(body, bytes) else b""
    return tag + _varint(len(data)) + data


protobufish = st.recursive(
    st.binary(max_size=12),
    lambda inner: st.lists(
        st.builds(
            _field,
            st.integers(1, 20),
            st.sampled_from([0, 1, 2, 2, 2, 3, 4, 5]),
            st.one_of(inner, st.integers(0, 2**64 - 1)),
        ),
        max_size=6,
    ).map(b"".join),
    max_leaves=20,
)

spark_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 2**64 - 1),
    st.floats(width=32),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=6),
)
VALUE_FIELDS = [
    "int_value",
    "long_value",
    "float_value",
    "double_value",
    "boolean_value",
    "string_value",
    "bytes_value",
    "dataset_value",
    "template_value",
]


def _spark_metric(
    name: str | None,
    alias: int | None,
    datatype: int | None,
    value: object,
    field: str,
    timestamp: int | None,
    is_null: bool,
) -> SparkplugMetric | None:
    ok = {
        "int_value": isinstance(value, int) and not isinstance(value, bool) and value < 2**32,
        "long_value": isinstance(value, int) and not isinstance(value, bool),
        "float_value": isinstance(value, float),
        "double_value": isinstance(value, float),
        "boolean_value": isinstance(value, bool),
        "string_value": isinstance(value, str),
    }.get(field, isinstance(value, bytes))
    if not ok:
        value = None
    return SparkplugMetric(name, alias, timestamp, datatype, is_null, field, value)  # type: ignore[arg-type]


spark_metrics = st.builds(
    _spark_metric,
    st.one_of(st.none(), st.sampled_from(WANTED["sparkplug"]), st.text(max_size=8)),
    st.one_of(st.none(), st.integers(0, 8), st.integers(0, 2**64 - 1)),
    st.one_of(st.none(), st.integers(0, 40), st.integers(0, 2**32 - 1)),
    spark_values,
    st.sampled_from(VALUE_FIELDS),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.booleans(),
)
valid_sparkplug = st.builds(
    lambda metrics, ts, seq: encode_payload(
        [m for m in metrics if m is not None], timestamp=ts, seq=seq
    ),
    st.lists(spark_metrics, max_size=8),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.one_of(st.none(), st.integers(0, 255)),
)


def _good_sparkplug() -> tuple[bytes, bytes]:
    return (SAMPLES / "sparkplug/nbirth.bin").read_bytes(), (
        SAMPLES / "sparkplug/ndata.bin"
    ).read_bytes()


def _samples(payload_format: str) -> list[bytes]:
    folder = SAMPLES / payload_format
    found = [p.read_bytes() for p in sorted(folder.glob("*")) if p.suffix != ".md"]
    return found or [b'{"a": {"b": {"c": 1}}, "sensors": [{"temp": 1.5}]}', b"12.5", b"ON"]


deep = st.builds(
    lambda n, opener, closer, tail: opener * n + tail + closer * n,
    st.integers(1, 4000),
    st.sampled_from([b"[", b'{"a":', b'{"ENERGY":', b'{"":']),
    st.sampled_from([b"]", b"}"]),
    st.sampled_from([b"1", b"", b"NaN", b'"x"', b"[", b"{"]),
)
invalid_utf8 = st.builds(
    lambda head, bad, tail: head + bad + tail,
    st.binary(max_size=8),
    st.sampled_from(
        [
            b"\xff",
            b"\xc3\x28",
            b"\xe2\x82",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\x80",
        ]
    ),
    st.binary(max_size=8),
)


def payloads(payload_format: str, kind: str) -> st.SearchStrategy[bytes]:
    text_like = st.one_of(
        st.sampled_from(WORDS + NASTY_NUMBERS).map(str.encode),
        st.text(max_size=20).map(str.encode),
        st.builds(
            lambda a, b: f"{a}{b}".encode(),
            st.sampled_from(NASTY_NUMBERS + WORDS),
            st.sampled_from(["", " ", "\n", "\t", " V", "e5", ".0"]),
        ),
    )
    paths = WANTED[payload_format]
    if payload_format == "shelly":  # the topic names the component; the payload is its status
        paths = [p.split(".", 1)[1] for p in paths]
    common = [
        st.binary(max_size=64),
        text_like,
        json_values.map(_dumps),
        _mutated([*_samples(payload_format), *(_dumps(v) for v in ([1], {"a": 1}, "x"))]),
        _wrong_types_at(paths),
        deep,
        invalid_utf8,
        st.sampled_from(NASTY_NUMBERS).map(
            lambda n: f'{{"a": {n}, "ENERGY": {{"Power": {n}}}}}'.encode()
        ),
    ]
    if payload_format == "sparkplug":
        common += [protobufish, valid_sparkplug, valid_sparkplug, _mutated(list(_good_sparkplug()))]
    return st.one_of(*common)


# ---- checks ----------------------------------------------------------------------------------


def _well_typed(parsed: object, wanted: list[str]) -> None:
    assert isinstance(parsed, Parsed)
    assert parsed.online is None or isinstance(parsed.online, bool)
    assert isinstance(parsed.values, tuple)
    for value in parsed.values:
        assert value.selector in wanted
        assert isinstance(value.value, bool | int | float | str)
        if isinstance(value.value, float):
            assert math.isfinite(value.value)
        assert value.time_ms is None or (
            isinstance(value.time_ms, int) and not isinstance(value.time_ms, bool)
        )
        stamp = plausible_time(value.time_ms, 1_795_600_800_000)
        assert isinstance(stamp, int)
        for signal in SIGNALS:
            try:
                stored = coerce(value.value, signal)
            except PayloadError as exc:
                assert exc.kind == "wrong_type" and signal.name in str(exc)
                continue
            expected = {"bool": bool, "int": int, "float": float, "str": str}[signal.field_kind]
            assert type(stored) is expected
            if isinstance(stored, float):
                assert math.isfinite(stored)


def _parse_once(
    parser: PayloadParser, kind: str, key: str | None, payload: bytes, wanted: list[str]
) -> None:
    try:
        parsed = parser.parse(kind, key, payload, wanted)
    except PayloadError as exc:
        assert exc.kind in KINDS_OF_ERROR
        assert str(exc)
        return
    _well_typed(parsed, wanted)


def _still_works(payload_format: str, kind: str, key: str | None, parser: PayloadParser) -> None:
    """The parser answers a good message right after whatever came before."""
    wanted = WANTED[payload_format]
    if payload_format == "sparkplug":
        birth, data = _good_sparkplug()
        parser.parse("NBIRTH", key, birth, wanted)
        got = parser.parse("NDATA", key, data, wanted)
        assert {v.selector: v.value for v in got.values} == {
            "Temperatures/Oven 1": 815.0,
            "Door/Open": True,
            "Counters/Parts": 4_000_000_001,
            "Trim/Offset": -4,
        }
    elif kind == "availability":
        word = {"tasmota": b"Offline", "esphome": b"offline", "shelly": b"false"}[payload_format]
        assert parser.parse(kind, key, word, wanted).online is False
    elif payload_format == "esphome":
        good = b"21.5" if kind == "sensor" else b"ON"
        assert len(parser.parse(kind, key, good, wanted).values) == 1
    elif payload_format == "shelly":
        got = parser.parse(kind, key, b'{"apower": 1.5}', wanted)
        assert [(v.selector, v.value) for v in got.values] == [("switch:0.apower", 1.5)]
    elif payload_format == "plain":
        assert parser.parse(kind, key, b"7", wanted).values[0].value == 7
    else:
        got = parser.parse(kind, key, b'{"a": {"b": {"c": 2}}, "POWER": "ON"}', wanted)
        assert got.values


@pytest.mark.parametrize(("payload_format", "kind", "key"), CASES)
def test_any_payload_gives_parsed_or_payload_error(
    payload_format: str, kind: str, key: str | None
) -> None:
    parser = make_parser(payload_format, zone=ZONE)  # one parser through all: state carries over
    wanted = WANTED[payload_format]

    @FUZZ
    @given(payload=payloads(payload_format, kind), other=st.sampled_from(SPARKPLUG_KINDS))
    def fuzz(payload: bytes, other: str) -> None:
        _parse_once(parser, kind, key, payload, wanted)
        if payload_format == "sparkplug":
            _parse_once(parser, other, key, payload, wanted)
        _still_works(payload_format, kind, key, parser)

    fuzz()


@FUZZ
@given(
    selectors=st.lists(
        st.one_of(st.text(max_size=12), st.text(alphabet="ab.[]\"'0123", max_size=12)),
        max_size=4,
    ),
    payload=json_values.map(_dumps),
)
def test_any_selector_is_safe(selectors: list[str], payload: bytes) -> None:
    for payload_format, kind, key in (("json", "value", None), ("shelly", "status", "switch:0")):
        _parse_once(make_parser(payload_format, zone=ZONE), kind, key, payload, selectors)


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(
    time_ms=st.one_of(st.none(), st.integers(-(2**64), 2**64)),
    received=st.integers(0, 2**45),
)
def test_plausible_time_is_the_payload_time_or_arrival(time_ms: int | None, received: int) -> None:
    stamp = plausible_time(time_ms, received)
    assert stamp in (time_ms, received)
    assert stamp == received or 946_684_800_000 <= stamp <= received + 300_000


def _outcome(call: Callable[[], object]) -> tuple[str, object]:
    try:
        value = call()
    except PayloadError as exc:
        return ("error", (exc.kind, str(exc)))
    return (type(value).__name__, repr(value))  # repr: -0.0 and 0.0 differ, NaN equals itself


@settings(max_examples=3000, deadline=None, derandomize=True, database=None)
@given(
    value=st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**400, -(10**400)]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["1", " 2.5 ", "-0", "1e999", "9" * 500, "ON", "off", "x", *NASTY_NUMBERS]),
        st.text(max_size=8),
    ),
    signal=st.sampled_from(
        [
            *SIGNALS,
            MqttSignal(name="k", scale=1e308),
            MqttSignal(name="t", scale=-1.0, offset=0.0),
            MqttSignal(name="c", type="float", offset=-273.15),
        ]
    ),
)
def test_a_signals_coercer_stores_what_coerce_stores(
    value: bool | int | float | str, signal: MqttSignal
) -> None:
    assert _outcome(lambda: coercer(signal)(value)) == _outcome(lambda: coerce(value, signal))


ZONES = ["UTC", "America/Argentina/Buenos_Aires", "America/Sao_Paulo", "America/Montevideo"]
ZONES += ["Europe/Dublin", "Asia/Kathmandu", "Australia/Lord_Howe", "America/New_York"]


@settings(max_examples=3000, deadline=None, derandomize=True, database=None)
@given(
    moment=st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    zone=st.sampled_from(ZONES),
    timespec=st.sampled_from(["seconds", "milliseconds", "microseconds"]),
)
def test_tasmota_local_time_is_the_zones_utc_millisecond(
    moment: dt.datetime, zone: str, timespec: str
) -> None:
    stamp = moment.isoformat(timespec=timespec)
    local = dt.datetime.fromisoformat(stamp).replace(tzinfo=zoneinfo.ZoneInfo(zone))
    try:
        expected: int | None = (local - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
            milliseconds=1
        )
    except OverflowError:
        expected = None
    payload = json.dumps({"Time": stamp, "COUNTER": {"C1": 1}}).encode()
    parser = make_parser("tasmota", zone=zoneinfo.ZoneInfo(zone))
    (value,) = parser.parse("sensor", None, payload, ["COUNTER.C1"]).values
    assert value.time_ms == expected
