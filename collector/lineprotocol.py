"""Encode points as InfluxDB line protocol, escaped the way InfluxDB 1.x, 2.x and 3.x all parse it.

Names that no server can read back exactly are refused with `InvalidPointError` rather than sent
mangled; NaN and ±inf cannot be stored at all: those fields are left out (`drop_nonfinite` counts).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import cast

from collector.schema import FieldValue, Point

__all__ = [
    "InvalidPointError",
    "decode_line",
    "drop_nonfinite",
    "encode_batch",
    "encode_counting",
    "encode_point",
    "line_measurement",
    "line_time_ms",
]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_MEASUREMENT_SPECIAL = ", "  # comma and space
_NAME_SPECIAL = ", ="  # tag keys, tag values and field keys


# Field keys, escaped and with their "=", by the config's signal names (a bounded set met in
# every point): a dict lookup is the cheapest way past escaping them each time.
_FIELD_KEYS: dict[str, str] = {}
# A line's measurement and tags, escaped, by (measurement, tags as given): the same few recur in
# every point of a machine. Past the bound, the rest are escaped point by point.
_MAX_PREFIXES = 4096
_PREFIXES: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
# The fields of points made of ints and floats only, as a %-template ("count=%di,temp=%r") by
# their keys, with the types it was made for: the readings of a machine repeat the same keys
# every poll, and one `%` formats them all at C speed (half the time of the loop over fields).
_MAX_TEMPLATES = 4096
_TEMPLATES: dict[tuple[str, ...], tuple[tuple[type, ...], str, bool, bool]] = {}


class InvalidPointError(ValueError):
    """A point that can never be written: a name InfluxDB cannot hold, or no storable field left."""

    def __init__(self, point: Point, reason: str) -> None:
        super().__init__(f"point {point.measurement!r} at {point.time_ms} ms: {reason}")
        self.point = point
        self.reason = reason


def drop_nonfinite(point: Point) -> tuple[Point, int]:
    """The point without its NaN/±inf float fields, and how many were left out."""
    isfinite = math.isfinite
    for value in point.fields.values():
        if isinstance(value, float) and not isfinite(value):
            break
    else:
        return point, 0  # the usual case, without building a new point
    finite = {k: v for k, v in point.fields.items() if not _nonfinite(v)}
    return Point(point.measurement, point.tags, finite, point.time_ms), len(point.fields) - len(
        finite
    )


def encode_point(point: Point) -> str:
    """One line, without its newline. Non-finite float fields are left out; tags sorted by key,
    empty tag values omitted. Raises `InvalidPointError` if the point cannot be written."""
    line, _ = encode_counting(point)
    if line is None:
        raise InvalidPointError(point, "no field left to store (NaN and ±inf cannot be stored)")
    return line


def encode_counting(point: Point) -> tuple[str | None, int]:
    """`encode_point` in one pass that also counts the non-finite fields it left out: the line
    is None when they were all its fields (nothing to store, nothing wrong with the point)."""
    tags = (point.measurement, tuple(point.tags.items()))
    prefix = _PREFIXES.get(tags)
    if prefix is None:
        prefix = _prefix(point)
        if len(_PREFIXES) < _MAX_PREFIXES:
            _PREFIXES[tags] = prefix
    time_ms = point.time_ms
    if type(time_ms) is not int and (isinstance(time_ms, bool) or not isinstance(time_ms, int)):
        raise InvalidPointError(point, f"time_ms must be an integer, not {time_ms!r}")
    text = _fields_by_template(point)
    if text is not None:
        return f"{prefix} {text} {time_ms}", 0
    fields = []
    left_out = 0
    isfinite = math.isfinite
    keys = _FIELD_KEYS
    for key, value in point.fields.items():
        kind = type(value)  # exact types first: this loop runs for every value collected
        if kind is int and _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            text = f"{value}i"
        elif kind is float:
            if not isfinite(value):  # type: ignore[arg-type]
                left_out += 1
                continue
            text = repr(value)
        else:
            if _nonfinite(value):
                left_out += 1
                continue
            text = _value(point, value)
        escaped = keys.get(key)
        if escaped is None:
            if key == "":
                raise InvalidPointError(point, "a field key is empty")
            escaped = keys[key] = _escape(point, "field key", key, _NAME_SPECIAL) + "="
        fields.append(escaped + text)
    if not fields:
        if left_out:
            return None, left_out
        raise InvalidPointError(point, "no field left to store (NaN and ±inf cannot be stored)")
    return f"{prefix} {','.join(fields)} {time_ms}", left_out


def _fields_by_template(point: Point) -> str | None:
    """The fields' text in one C call, for a point of only finite floats and 64-bit ints whose
    keys and types were met before (a machine's readings, every poll); None for any other."""
    fields = point.fields
    keys = tuple(fields)
    # Only ints and floats get past the types check below.
    values = cast("tuple[float, ...]", tuple(fields.values()))
    types = tuple(map(type, values))
    known = _TEMPLATES.get(keys)
    if known is None or known[0] != types:
        known = _template(point, keys, types)
        if known is None:
            return None
        if len(_TEMPLATES) < _MAX_TEMPLATES or keys in _TEMPLATES:
            _TEMPLATES[keys] = known
    _, template, floats, ints = known
    # Ints first: isfinite() of an int past a float's range raises OverflowError.
    if ints and not (min(values) >= _INT64_MIN and max(values) <= _INT64_MAX):
        return None  # the slow path names the integer that does not fit
    if floats and not all(map(math.isfinite, values)):
        return None  # the slow path leaves the NaN out and counts it
    return template % values


def _template(
    point: Point, keys: tuple[str, ...], types: tuple[type, ...]
) -> tuple[tuple[type, ...], str, bool, bool] | None:
    if not keys or not set(types) <= {int, float} or "" in keys:
        return None
    try:
        escaped = [_escape(point, "field key", key, _NAME_SPECIAL) for key in keys]
    except InvalidPointError:
        return None  # the slow path raises it
    parts = [
        key.replace("%", "%%") + ("=%di" if kind is int else "=%r")
        for key, kind in zip(escaped, types, strict=True)
    ]
    return types, ",".join(parts), float in types, int in types


def _prefix(point: Point) -> str:
    """The measurement and the tags of a point's line, escaped."""
    name = point.measurement
    if not name:
        raise InvalidPointError(point, "the measurement name is empty")
    if name.startswith("#"):
        # InfluxDB reads such a line as a comment and answers 204 without storing anything.
        raise InvalidPointError(point, "a measurement name cannot start with '#'")
    parts = [_escape(point, "measurement", name, _MEASUREMENT_SPECIAL)]
    for key in sorted(point.tags):
        tag_value = point.tags[key]
        if tag_value == "":
            continue
        if key == "":
            raise InvalidPointError(point, f"a tag key is empty (value {tag_value!r})")
        parts.append(
            f",{_escape(point, 'tag key', key, _NAME_SPECIAL)}"
            f"={_escape(point, 'tag value', tag_value, _NAME_SPECIAL)}"
        )
    return "".join(parts)


def encode_batch(points: Iterable[Point]) -> bytes:
    """Newline-terminated lines in UTF-8, for one POST /write?precision=ms."""
    return "".join(encode_point(p) + "\n" for p in points).encode()


def _nonfinite(value: FieldValue) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _escape(point: Point, what: str, text: str, special: str) -> str:
    try:
        return _escaped(text, special)
    except _Unwritable as exc:
        raise InvalidPointError(point, f"the {what} {text!r} {exc}") from None


class _Unwritable(ValueError):
    pass


@functools.lru_cache(maxsize=8192)
def _escaped(text: str, special: str) -> str:
    # Cached: the same machine, tag and signal names recur in every point.
    if "\n" in text or "\r" in text:
        raise _Unwritable("contains a line break")
    # Servers keep a backslash literally unless it precedes a special character, and none of
    # them unescapes "\\" in names: a backslash before a special character or at the end
    # cannot be written so that it reads back unchanged.
    for i, char in enumerate(text):
        if char == "\\" and (i + 1 == len(text) or text[i + 1] in special):
            raise _Unwritable(
                f"has a backslash at its end or before {special!r}, which InfluxDB cannot store"
            )
    for char in special:
        text = text.replace(char, "\\" + char)
    return text


def _value(point: Point, value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidPointError(point, f"integer {value} does not fit in 64 bits")
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back as the same double
    if isinstance(value, str):
        # Line breaks are legal inside a quoted string field value.
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise InvalidPointError(point, f"unsupported field value type {type(value).__name__}")


# Reading lines back: the buffer keeps lines, and a few places (the sink's routing by measurement,
# `aguante buffer`, the in-memory sink of the tests) need to look into them again.


def line_measurement(line: str) -> str:
    """The measurement of a line this module encoded, unescaped."""
    end = _unescaped_index(line, ", ", 0)
    return line[:end].replace("\\,", ",").replace("\\ ", " ")


def line_time_ms(line: str) -> int:
    """The time stamp (ms) of a line this module encoded: always its last word."""
    return int(line[line.rindex(" ") + 1 :])


def decode_line(line: str) -> Point:
    """The point a line encoded by `encode_point` stands for (the inverse of `encode_point`).

    Raises `ValueError` naming the problem for a line that is not such a line.
    """
    try:
        return _decode(line)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not a line of line protocol ({exc}): {line[:200]!r}") from None


def _decode(line: str) -> Point:
    end = _unescaped_index(line, ", ", 0)
    measurement = line[:end].replace("\\,", ",").replace("\\ ", " ")
    tags: dict[str, str] = {}
    position = end
    while line[position] == ",":
        equals = _unescaped_index(line, "=", position + 1)
        stop = _unescaped_index(line, ", ", equals + 1)
        tags[_unescape(line[position + 1 : equals])] = _unescape(line[equals + 1 : stop])
        position = stop
    fields: dict[str, FieldValue] = {}
    position += 1  # the space before the fields
    while True:
        equals = _unescaped_index(line, "=", position)
        key = _unescape(line[position:equals])
        start = equals + 1
        if line[start] == '"':
            stop, value = _string_value(line, start)
            fields[key] = value
        else:
            stop = _unescaped_index(line, ", ", start)
            fields[key] = _number_value(line[start:stop])
        position = stop + 1
        if line[stop] == " ":
            break
    time_ms = int(line[position:])
    return Point(measurement, tags, fields, time_ms)


def _unescaped_index(line: str, chars: str, start: int) -> int:
    """Index of the first of `chars` at or after `start` that no backslash escapes."""
    position = start
    while True:
        if position >= len(line):
            raise ValueError(f"expected one of {chars!r} after column {start}")
        char = line[position]
        if char == "\\" and position + 1 < len(line) and line[position + 1] in ", =":
            position += 2
            continue
        if char in chars:
            return position
        position += 1


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return text.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")


def _string_value(line: str, start: int) -> tuple[int, str]:
    chars = []
    position = start + 1
    while True:
        char = line[position]
        if char == "\\" and line[position + 1] in '"\\':
            chars.append(line[position + 1])
            position += 2
        elif char == '"':
            return position + 1, "".join(chars)
        else:
            chars.append(char)
            position += 1


def _number_value(text: str) -> FieldValue:
    if text.endswith("i"):
        return int(text[:-1])
    if text in ("true", "false"):
        return text == "true"
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is no storable number")
    return value
