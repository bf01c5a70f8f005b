"""Payload parsers of the MQTT formats (plain, json, tasmota, esphome, shelly, sparkplug).

Any bytes go in; a `Parsed` or a `PayloadError` comes out, never another exception.
"""

from __future__ import annotations

import json
import math
import re
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol

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


class PayloadParser(Protocol):
    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        """The wanted values in one message of a topic kind (see `topic_layout`)."""
        ...


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


def _availability(payload: bytes, online: str, offline: str) -> Parsed:
    text = _text(payload).strip()
    if not text:
        return Parsed()  # a retained message being cleared
    word = text.lower()
    if word == online.lower():
        return Parsed(online=True)
    if word == offline.lower():
        return Parsed(online=False)
    raise PayloadError("malformed", f"{_sample(text)} is neither {online} nor {offline}")


def _check_kind(kind: str, kinds: frozenset[str], payload_format: str) -> None:
    if kind not in kinds:
        raise PayloadError("unsupported", f"format {payload_format} has no topic kind {kind!r}")


def _scalar(node: object) -> Scalar | None:
    """A JSON node as a value; null, objects, arrays and non-finite numbers are no value."""
    if isinstance(node, bool | int | str):
        return node
    if isinstance(node, float) and math.isfinite(node):
        return node
    return None


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


class _PlainParser:
    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        _check_kind(kind, frozenset({"value"}), "plain")
        selector = key if key is not None else (wanted[0] if wanted else None)
        if selector is None or selector not in wanted:
            return Parsed()
        text = _text(payload).strip()
        value = _plain_value(text) if text else None
        return Parsed() if value is None else Parsed((Value(selector, value),))


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


def _lookup(document: object, steps: tuple[str | int, ...]) -> object:
    node = document
    for step in steps:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return _MISSING
            node = node[step]
        else:
            if not isinstance(node, dict):
                return _MISSING
            node = node.get(step, _MISSING)
            if node is _MISSING:
                return _MISSING
    return node


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


def _load_json(payload: bytes) -> object:
    try:
        text = payload.decode("utf-8-sig")  # a BOM is harmless; drop it
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_utf8", f"not UTF-8 at byte {exc.start}") from None
    if _too_deep(text):
        raise PayloadError("malformed", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except RecursionError:
        raise PayloadError("malformed", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise PayloadError("malformed", f"not JSON: {exc}") from None


def _values_at(
    document: object, wanted: Sequence[str], time_ms: int | None = None, on_off: bool = False
) -> tuple[Value, ...]:
    found = []
    for selector in wanted:
        value = _scalar(_lookup(document, _path(selector)))
        if value is None:
            continue
        if on_off and isinstance(value, str) and value in ("ON", "OFF"):
            value = value == "ON"
        found.append(Value(selector, value, time_ms))
    return tuple(found)


class _JsonParser:
    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        _check_kind(kind, frozenset({"value"}), "json")
        if not payload.strip():
            return Parsed()
        return Parsed(_values_at(_load_json(payload), wanted))


class _TasmotaParser:
    _KINDS = frozenset({"sensor", "state", "availability"})

    def __init__(self, zone: zoneinfo.ZoneInfo) -> None:
        self._zone = zone

    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        _check_kind(kind, self._KINDS, "tasmota")
        if kind == "availability":
            return _availability(payload, "Online", "Offline")
        if not payload.strip():
            return Parsed()
        document = _load_json(payload)
        time_ms = None
        if isinstance(document, dict):
            stamp = document.get("Time")
            if isinstance(stamp, str):
                time_ms = _device_time_ms(stamp, self._zone)
        return Parsed(_values_at(document, wanted, time_ms, on_off=True))


def _device_time_ms(stamp: str, zone: zoneinfo.ZoneInfo) -> int | None:
    """Tasmota's `Time`: the device's local time, unless it carries an offset."""
    if len(stamp) > 40:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        return (moment - _EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError):
        return None


class _EsphomeParser:
    _KINDS = frozenset({"sensor", "binary_sensor", "availability"})

    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        _check_kind(kind, self._KINDS, "esphome")
        if kind == "availability":
            return _availability(payload, "online", "offline")
        if key is None or key not in wanted:
            return Parsed()
        text = _text(payload).strip()
        if not text:
            return Parsed()
        if kind == "binary_sensor":
            if text.upper() not in ("ON", "OFF"):
                raise PayloadError(
                    "wrong_type", f"binary sensor {key}: {_sample(text)}, not ON/OFF"
                )
            return Parsed((Value(key, text.upper() == "ON"),))
        # ESPHome publishes "nan" while a sensor has no reading: that is no value, not an error.
        if text.lower() in _NO_READING:
            return Parsed()
        number = _number(text)
        if number is None:
            raise PayloadError("wrong_type", f"sensor {key}: {_sample(text)} is not a number")
        if isinstance(number, float) and not math.isfinite(number):
            return Parsed()
        return Parsed((Value(key, number),))


class _ShellyParser:
    _KINDS = frozenset({"status", "availability"})

    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        _check_kind(kind, self._KINDS, "shelly")
        if kind == "availability":
            return _availability(payload, "true", "false")
        if key is None:
            return Parsed()
        prefix = key + "."
        mine = [s for s in wanted if s.startswith(prefix) and len(s) > len(prefix)]
        if not mine or not payload.strip():
            return Parsed()
        document = _load_json(payload)
        found = []
        for selector in mine:
            value = _scalar(_lookup(document, _path(selector[len(prefix) :])))
            if value is not None:
                found.append(Value(selector, value))
        return Parsed(tuple(found))


# ---- sparkplug -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Birth:
    """What a birth certificate said: names behind aliases, and each metric's data type."""

    names: dict[int, str]
    datatypes: dict[str, int]
    bd_seq: int | None = None


_SPARKPLUG_KINDS = frozenset({"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"})


class _SparkplugParser:
    """Keeps the births seen per `key` (the edge node or device the caller routes by; None when
    the subscription names exactly one), so data messages that carry only aliases can be read."""

    def __init__(self) -> None:
        self._births: dict[tuple[str | None, str], _Birth] = {}

    def parse(self, kind: str, key: str | None, payload: bytes, wanted: Sequence[str]) -> Parsed:
        _check_kind(kind, _SPARKPLUG_KINDS, "sparkplug")
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
                return Parsed()  # the will of an earlier session, arriving after a new birth
            self._births.pop((key, "node"), None)
            self._births.pop((key, "device"), None)  # a node's death ends its devices
            return Parsed(online=False)
        if kind == "DDEATH":
            self._births.pop(scope, None)
            return Parsed(online=False)
        if kind.endswith("BIRTH"):
            birth = _Birth({}, {}, _bd_seq(decoded.metrics) if level == "node" else None)
            self._births[scope] = birth
            if level == "node":
                self._births.pop((key, "device"), None)  # devices must be born again too
        else:
            found_birth = self._births.get(scope)
            birth = found_birth if found_birth is not None else _Birth({}, {})
        wanted_set = frozenset(wanted)
        values = []
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
            if name not in wanted_set or metric.is_null:
                continue
            datatype = metric.datatype if metric.datatype is not None else birth.datatypes.get(name)
            value = _metric_value(datatype, metric)
            if value is None:
                continue
            time_ms = metric.timestamp if metric.timestamp is not None else decoded.timestamp
            values.append(Value(name, value, time_ms))
        online = True if kind.endswith("BIRTH") else None
        return Parsed(tuple(values), online)


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
