"""Payload parsers of the MQTT formats (plain, json, tasmota, esphome, shelly, sparkplug).

Any bytes go in; a `Parsed` or a `PayloadError` comes out, never another exception. A parser
compiles a `Reader` per topic kind and wanted selectors (paths parsed, kinds checked once): the
MQTT source calls readers on every message; `parse` is a reader called once.
"""

from __future__ import annotations

import json
import math
import re
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from collector.config import MqttSignal
from collector.sources.sparkplug import (
    SparkplugDecodeError,
    SparkplugMetric,
    decode_payload,
    integer_value,
)

__all__ = [
    "Parsed",
    "PayloadError",
    "PayloadParser",
    "Value",
    "coerce",
    "coercer",
    "make_parser",
    "plausible_time",
]

Scalar = bool | int | float | str

# unknown_alias: Sparkplug data naming metrics by an alias whose birth was not seen; the
# source then asks the edge node for a rebirth.
PAYLOAD_ERROR_KINDS = frozenset(
    {"invalid_utf8", "malformed", "wrong_type", "unsupported", "unknown_alias"}
)

# Real payloads nest 3 or 4 levels; the bound keeps a hostile one from exhausting the stack.
MAX_JSON_DEPTH = 64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: earlier means a clock never set
_FUTURE_SLACK_MS = 5 * 60 * 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = _EPOCH.toordinal()
_MILLISECOND = timedelta(milliseconds=1)
_BOM = b"\xef\xbb\xbf"

_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# Boards print these for a sensor without a reading.
_NO_READING = frozenset({"nan", "-nan", "+nan", "inf", "-inf", "+inf", "infinity", "-infinity"})
_ON_OFF = {"on": True, "off": False, "true": True, "false": False}
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


@dataclass(frozen=True, slots=True)
class Value:
    """One value found in a payload, under the selector that asked for it."""

    selector: str
    value: Scalar
    time_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one message says: values, and for availability messages whether the board is up."""

    values: tuple[Value, ...] = ()
    online: bool | None = None


class PayloadError(ValueError):
    """A payload that cannot be read; `kind` is one of invalid_utf8, malformed, wrong_type,
    unsupported (what the collector measurement counts)."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in PAYLOAD_ERROR_KINDS:
            raise ValueError(f"unknown payload error kind {kind!r}")
        super().__init__(message)
        self.kind = kind


Found = tuple[str, Scalar, int | None]
"""A value as readers give it: (selector, value, the payload's time in ms or None)."""

Read = tuple[Sequence[Found], bool | None]
"""What a reader finds in one message: its values, and whether the board is up (None: unsaid)."""

Reader = Callable[[str | None, bytes], Read]
"""A reader of one topic kind: called with the key the topic gives (see `topic_layout`) and the
payload; raises `PayloadError`."""

_NOTHING: Read = ((), None)
_ONLINE: Read = ((), True)
_OFFLINE: Read = ((), False)


class PayloadParser(Protocol):
    def reader(self, kind: str, wanted: Sequence[str]) -> Reader:
        """A reader of the wanted values in the messages of a topic kind (see `topic_layout`).

        A kind the format does not have gives a reader that raises PayloadError("unsupported").
        """
        ...

    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        """The wanted values in one message of a topic kind (see `topic_layout`)."""
        ...


class _Parser:
    def reader(self, kind: str, wanted: Sequence[str]) -> Reader:
        raise NotImplementedError

    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        values, online = self.reader(kind, wanted)(key, payload)
        return Parsed(tuple(Value(*found) for found in values), online)


def make_parser(payload_format: str, *, zone: zoneinfo.ZoneInfo) -> PayloadParser:
    """A parser for one subscription; Sparkplug's keeps the aliases of the births it has seen."""
    if payload_format == "plain":
        return _PlainParser()
    if payload_format == "json":
        return _JsonParser()
    if payload_format == "tasmota":
        return _TasmotaParser(zone)
    if payload_format == "esphome":
        return _EsphomeParser()
    if payload_format == "shelly":
        return _ShellyParser()
    if payload_format == "sparkplug":
        return _SparkplugParser()
    raise ValueError(f"unknown payload format {payload_format!r}")


def plausible_time(time_ms: int | None, received_ms: int) -> int:
    """The payload's own time stamp, unless absent or implausible (boards without NTP send
    1970; a clock far ahead would write into the future): then the arrival time."""
    if time_ms is None or time_ms < _EARLIEST_MS or time_ms > received_ms + _FUTURE_SLACK_MS:
        return received_ms
    return time_ms


def coerce(value: Scalar, signal: MqttSignal) -> Scalar:
    """The InfluxDB field value of a payload value for a signal: its type, scale and offset.

    Numbers written as text are read ("12.5"); a bool is never a number. Raises
    PayloadError("wrong_type") naming the signal and the value.
    """
    kind = signal.field_kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in (*_ON_OFF, "0", "1"):
            text = value.strip().lower()
            return _ON_OFF.get(text, text == "1")
        raise _wrong(signal, value, "is not a boolean (ON/OFF, true/false, 1/0)")
    if kind == "str":
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else repr(value)
    number = _as_number(value, signal)
    if kind == "float":
        try:
            result = float(number) * signal.scale + signal.offset
        except OverflowError:
            raise _wrong(signal, value, "is too large for a float") from None
        if not math.isfinite(result):
            raise _wrong(signal, value, "is not a finite number")
        return result
    if isinstance(number, float):
        if not number.is_integer():
            raise _wrong(signal, value, "is not a whole number (give the signal type float)")
        number = int(number)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _wrong(signal, value, "is out of the 64-bit integer range")
    return number


Coercer = Callable[[Scalar], Scalar]


def coercer(signal: MqttSignal) -> Coercer:
    """`coerce` bound to one signal, with its usual case (a JSON number for a float signal, the
    exact type otherwise) decided without the general checks: the same results and errors."""
    kind = signal.field_kind
    if kind == "float":
        scale, offset, isfinite = signal.scale, signal.offset, math.isfinite

        def to_float(value: Scalar) -> Scalar:
            if type(value) is float or type(value) is int:
                try:
                    result = float(value) * scale + offset
                except OverflowError:
                    return coerce(value, signal)
                if isfinite(result):
                    return result
            return coerce(value, signal)

        return to_float
    if kind == "int":

        def to_int(value: Scalar) -> Scalar:
            if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
                return value
            return coerce(value, signal)

        return to_int
    exact = bool if kind == "bool" else str

    def to_exact(value: Scalar) -> Scalar:
        return value if type(value) is exact else coerce(value, signal)

    return to_exact


def _as_number(value: Scalar, signal: MqttSignal) -> int | float:
    if isinstance(value, bool):
        raise _wrong(signal, value, f"is a boolean, not a number (type {signal.type})")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise _wrong(signal, value, "is not a finite number")
        return value
    number = _number(value.strip())
    if number is None:
        raise _wrong(signal, value, f"is not a number (type {signal.type})")
    if isinstance(number, float) and not math.isfinite(number):
        raise _wrong(signal, value, "is not a finite number")
    return number


def _wrong(signal: MqttSignal, value: Scalar, why: str) -> PayloadError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return PayloadError("wrong_type", f"{signal.name}: {shown} {why}")


def _number(text: str) -> int | float | None:
    """The number a text spells (int or float), None if it spells none."""
    if len(text) > 400:  # no reading of a sensor is that long; it keeps int() cheap
        return None
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    return None


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_utf8", f"not UTF-8 at byte {exc.start}") from None


def _sample(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _availability(online: str, offline: str) -> Reader:
    online_word, offline_word = online.lower(), offline.lower()

    def read(key: str | None, payload: bytes) -> Read:
        text = _text(payload).strip()
        if not text:
            return _NOTHING  # a retained message being cleared
        word = text.lower()
        if word == online_word:
            return _ONLINE
        if word == offline_word:
            return _OFFLINE
        raise PayloadError("malformed", f"{_sample(text)} is neither {online} nor {offline}")

    return read


def _unsupported(kind: str, payload_format: str) -> Reader:
    def read(key: str | None, payload: bytes) -> Read:
        raise PayloadError("unsupported", f"format {payload_format} has no topic kind {kind!r}")

    return read


# ---- plain -------------------------------------------------------------------------------


def _plain_value(text: str) -> Scalar | None:
    word = text.lower()
    if word in _ON_OFF:
        return _ON_OFF[word]
    if word in _NO_READING:
        return None
    number = _number(text)
    if number is None:
        return text
    if isinstance(number, float) and not math.isfinite(number):
        return None
    return number


class _PlainParser(_Parser):
    def reader(self, kind: str, wanted: Sequence[str]) -> Reader:
        if kind != "value":
            return _unsupported(kind, "plain")
        wanted_set = frozenset(wanted)
        first = wanted[0] if wanted else None

        def read(key: str | None, payload: bytes) -> Read:
            selector = key if key is not None else first
            if selector is None or selector not in wanted_set:
                return _NOTHING
            text = _text(payload).strip()
            value = _plain_value(text) if text else None
            return _NOTHING if value is None else (((selector, value, None),), None)

        return read


# ---- json and the formats built on it ------------------------------------------------------


@lru_cache(maxsize=4096)
def _path(selector: str) -> tuple[str | int, ...]:
    """`a.b[2]["key.with.dot"]` → ("a", "b", 2, "key.with.dot"); a selector that is not such a
    path is one literal key."""
    try:
        return _parse_path(selector)
    except ValueError:
        return (selector,)


def _parse_path(selector: str) -> tuple[str | int, ...]:
    steps: list[str | int] = []
    i, n = 0, len(selector)
    need_step = True  # at the start and after a dot, a name or a bracket must follow
    while i < n:
        char = selector[i]
        if char == "[":
            if selector[i + 1 : i + 2] in ('"', "'"):
                # A quoted key may hold dots and brackets: it ends at its own closing quote.
                quote = selector[i + 1]
                end = selector.find(quote, i + 2)
                if end < 0 or selector[end + 1 : end + 2] != "]":
                    raise ValueError(selector)
                steps.append(selector[i + 2 : end])
                i = end + 2
            else:
                close = selector.find("]", i)
                inner = selector[i + 1 : close] if close > 0 else ""
                if not (inner.isdigit() and inner.isascii()):
                    raise ValueError(selector)
                steps.append(int(inner))
                i = close + 1
            need_step = False
        elif char == ".":
            if need_step or i == n - 1:
                raise ValueError(selector)
            need_step = True
            i += 1
        else:
            if not need_step:
                raise ValueError(selector)
            end = i
            while end < n and selector[end] not in ".[":
                end += 1
            steps.append(selector[i:end])
            i = end
            need_step = False
    if not steps:
        raise ValueError(selector)
    return tuple(steps)


_MISSING = object()


def _too_deep(text: str) -> bool:
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # cannot nest deeper than it has brackets: the usual, cheap answer
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        char = token.group()
        if char in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif char in ("]", "}"):
            depth -= 1
    return False


_DECODER = json.JSONDecoder()


def _load_json(payload: bytes) -> object:
    if payload[:3] == _BOM:
        payload = payload[3:]  # a BOM is harmless; drop it (as the utf-8-sig codec does)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_utf8", f"not UTF-8 at byte {exc.start}") from None
    if _too_deep(text):
        raise PayloadError("malformed", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        # json.loads without its argument checks; it alone words a second BOM's refusal.
        return json.loads(text) if text[:1] == "\ufeff" else _DECODER.decode(text)
    except RecursionError:
        raise PayloadError("malformed", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise PayloadError("malformed", f"not JSON: {exc}") from None


_Paths = tuple[tuple[str, tuple[str | int, ...]], ...]  # (selector, its steps into a document)


def _paths(selectors: Sequence[str]) -> _Paths:
    return tuple((selector, _path(selector)) for selector in selectors)


def _values_at(
    document: object, paths: _Paths, time_ms: int | None = None, on_off: bool = False
) -> list[Found]:
    """The scalars at the paths of a document from `_load_json`; null, objects, arrays and
    non-finite numbers are no value. Exact types are compared: json makes no subclasses."""
    found: list[Found] = []
    append = found.append
    isfinite = math.isfinite
    for selector, steps in paths:
        node: Any = document
        for step in steps:
            if step.__class__ is int:
                if node.__class__ is not list or step >= len(node):
                    break
                node = node[step]
            else:
                if node.__class__ is not dict:
                    break
                node = node.get(step, _MISSING)
                if node is _MISSING:
                    break
        else:
            kind = node.__class__
            if kind is float:
                if isfinite(node):
                    append((selector, node, time_ms))
            elif kind is int or kind is bool:
                append((selector, node, time_ms))
            elif kind is str:
                if on_off and node in ("ON", "OFF"):
                    append((selector, node == "ON", time_ms))
                else:
                    append((selector, node, time_ms))
    return found


class _JsonParser(_Parser):
    def reader(self, kind: str, wanted: Sequence[str]) -> Reader:
        if kind != "value":
            return _unsupported(kind, "json")
        paths = _paths(wanted)

        def read(key: str | None, payload: bytes) -> Read:
            if not payload.strip():
                return _NOTHING
            return _values_at(_load_json(payload), paths), None

        return read


class _TasmotaParser(_Parser):
    _KINDS = frozenset({"sensor", "state", "availability"})

    def __init__(self, zone: zoneinfo.ZoneInfo) -> None:
        self._zone = zone

    def reader(self, kind: str, wanted: Sequence[str]) -> Reader:
        if kind not in self._KINDS:
            return _unsupported(kind, "tasmota")
        if kind == "availability":
            return _availability("Online", "Offline")
        paths, zone = _paths(wanted), self._zone

        def read(key: str | None, payload: bytes) -> Read:
            if not payload.strip():
                return _NOTHING
            document = _load_json(payload)
            time_ms = None
            if isinstance(document, dict):
                stamp = document.get("Time")
                if isinstance(stamp, str):
                    time_ms = _device_time_ms(stamp, zone)
            return _values_at(document, paths, time_ms, on_off=True), None

        return read


def _device_time_ms(stamp: str, zone: zoneinfo.ZoneInfo) -> int | None:
    """Tasmota's `Time`: the device's local time, unless it carries an offset."""
    if len(stamp) > 40:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
        offset = zone.utcoffset(moment) if moment.tzinfo is None else None
        if offset is not None and 1 < moment.year < 9999:
            # As (moment.replace(tzinfo=zone) - _EPOCH) // _MILLISECOND, in integers: a
            # datetime built per message costs more than the rest of the arithmetic.
            seconds = (
                (moment.toordinal() - _EPOCH_DAY) * 86400
                + moment.hour * 3600
                + moment.minute * 60
                + moment.second
                - offset.days * 86400
                - offset.seconds
            )
            return (seconds * 1_000_000 + moment.microsecond - offset.microseconds) // 1000
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)  # years 1 and 9999 may overflow: no time
        return (moment - _EPOCH) // _MILLISECOND
    except (ValueError, OverflowError):
        return None


class _EsphomeParser(_Parser):
    _KINDS = frozenset({"sensor", "binary_sensor", "availability"})

    def reader(self, kind: str, wanted: Sequence[str]) -> Reader:
        if kind not in self._KINDS:
            return _unsupported(kind, "esphome")
        if kind == "availability":
            return _availability("online", "offline")
        wanted_set = frozenset(wanted)
        binary = kind == "binary_sensor"

        def read(key: str | None, payload: bytes) -> Read:
            if key is None or key not in wanted_set:
                return _NOTHING
            text = _text(payload).strip()
            if not text:
                return _NOTHING
            if binary:
                if text.upper() not in ("ON", "OFF"):
                    raise PayloadError(
                        "wrong_type", f"binary sensor {key}: {_sample(text)}, not ON/OFF"
                    )
                return ((key, text.upper() == "ON", None),), None
            # ESPHome publishes "nan" while a sensor has no reading: no value, not an error.
            if text.lower() in _NO_READING:
                return _NOTHING
            number = _number(text)
            if number is None:
                raise PayloadError("wrong_type", f"sensor {key}: {_sample(text)} is not a number")
            if isinstance(number, float) and not math.isfinite(number):
                return _NOTHING
            return ((key, number, None),), None

        return read


_SHELLY_KEYS = 256  # components whose wanted paths a reader keeps worked out


class _ShellyParser(_Parser):
    _KINDS = frozenset({"status", "availability"})

    def reader(self, kind: str, wanted: Sequence[str]) -> Reader:
        if kind not in self._KINDS:
            return _unsupported(kind, "shelly")
        if kind == "availability":
            return _availability("true", "false")
        by_key: dict[str, _Paths] = {}

        def mine(key: str) -> _Paths:
            # The wanted paths into this component's status, under their whole selectors.
            found = by_key.get(key)
            if found is None:
                prefix = key + "."
                found = tuple(
                    (s, _path(s[len(prefix) :]))
                    for s in wanted
                    if s.startswith(prefix) and len(s) > len(prefix)
                )
                if len(by_key) < _SHELLY_KEYS:
                    by_key[key] = found
            return found

        def read(key: str | None, payload: bytes) -> Read:
            if key is None:
                return _NOTHING
            paths = mine(key)
            if not paths or not payload.strip():
                return _NOTHING
            return _values_at(_load_json(payload), paths), None

        return read


# ---- sparkplug -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Birth:
    """What a birth certificate said: names behind aliases, and each metric's data type."""

    names: dict[int, str]
    datatypes: dict[str, int]
    bd_seq: int | None = None


_SPARKPLUG_KINDS = frozenset({"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"})


class _SparkplugParser(_Parser):
    """Keeps the births seen per `key` (the edge node or device the caller routes by; None when
    the subscription names exactly one), so data messages that carry only aliases can be read."""

    def __init__(self) -> None:
        self._births: dict[tuple[str | None, str], _Birth] = {}

    def reader(self, kind: str, wanted: Sequence[str]) -> Reader:
        if kind not in _SPARKPLUG_KINDS:
            return _unsupported(kind, "sparkplug")
        wanted_set = frozenset(wanted)

        def read(key: str | None, payload: bytes) -> Read:
            return self._read(kind, key, payload, wanted_set)

        return read

    def _read(self, kind: str, key: str | None, payload: bytes, wanted: frozenset[str]) -> Read:
        try:
            decoded = decode_payload(payload)
        except SparkplugDecodeError as exc:
            raise PayloadError(exc.kind, str(exc)) from None
        level = "node" if kind[0] == "N" else "device"
        scope = (key, level)
        if kind == "NDEATH":
            birth = self._births.get((key, "node"))
            bd_seq = _bd_seq(decoded.metrics)
            if birth is not None and None not in (birth.bd_seq, bd_seq) and birth.bd_seq != bd_seq:
                return _NOTHING  # the will of an earlier session, arriving after a new birth
            self._births.pop((key, "node"), None)
            self._births.pop((key, "device"), None)  # a node's death ends its devices
            return _OFFLINE
        if kind == "DDEATH":
            self._births.pop(scope, None)
            return _OFFLINE
        if kind.endswith("BIRTH"):
            birth = _Birth({}, {}, _bd_seq(decoded.metrics) if level == "node" else None)
            self._births[scope] = birth
            if level == "node":
                self._births.pop((key, "device"), None)  # devices must be born again too
        else:
            found_birth = self._births.get(scope)
            birth = found_birth if found_birth is not None else _Birth({}, {})
        values: list[Found] = []
        for metric in decoded.metrics:
            name = metric.name
            if name is None:
                if metric.alias is None:
                    continue
                name = birth.names.get(metric.alias)
                if name is None:
                    raise PayloadError(
                        "unknown_alias",
                        f"{kind}: alias {metric.alias} was not in a birth certificate seen "
                        "since the collector started; wait for a rebirth",
                    )
            elif kind.endswith("BIRTH"):
                if metric.alias is not None:
                    birth.names[metric.alias] = name
                if metric.datatype is not None:
                    birth.datatypes[name] = metric.datatype
            if name not in wanted or metric.is_null:
                continue
            datatype = metric.datatype if metric.datatype is not None else birth.datatypes.get(name)
            value = _metric_value(datatype, metric)
            if value is None:
                continue
            time_ms = metric.timestamp if metric.timestamp is not None else decoded.timestamp
            values.append((name, value, time_ms))
        return values, (True if kind.endswith("BIRTH") else None)


def _bd_seq(metrics: tuple[SparkplugMetric, ...]) -> int | None:
    for metric in metrics:
        if metric.name == "bdSeq" and isinstance(metric.value, int):
            return metric.value
    return None


_INTEGER_TYPES = frozenset(range(1, 9))


def _metric_value(datatype: int | None, metric: SparkplugMetric) -> Scalar | None:
    """A metric's value as its data type says; None for types not stored (arrays, DataSet,
    Template…) and for a value field that contradicts the data type."""
    field, raw = metric.value_field, metric.value
    if raw is None or isinstance(raw, bytes):
        return None
    if datatype is None:  # no birth seen for it: read the field as it is
        if isinstance(raw, float) and not math.isfinite(raw):
            return None
        return raw
    if datatype in _INTEGER_TYPES:
        if field in ("int_value", "long_value") and isinstance(raw, int):
            return integer_value(datatype, raw)
        return None
    if datatype in (9, 10):
        if field in ("float_value", "double_value") and isinstance(raw, float):
            return raw if math.isfinite(raw) else None
        return None
    if datatype == 11:
        return raw if field == "boolean_value" else None
    if datatype in (12, 14):
        return raw if field == "string_value" else None
    if datatype == 13:  # DateTime: ms since the epoch
        return raw if field == "long_value" and isinstance(raw, int) else None
    return None
