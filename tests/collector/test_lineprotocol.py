"""Line protocol encoding: known vectors, refusals, and a round trip through the real InfluxDB."""

from __future__ import annotations

import math

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import collector.lineprotocol as lineprotocol
from collector.lineprotocol import (
    InvalidPointError,
    decode_line,
    drop_nonfinite,
    encode_batch,
    encode_counting,
    encode_point,
    line_measurement,
    line_time_ms,
)
from collector.schema import FieldValue, Point
from tests.conftest import InfluxDBDatabase
from tests.services import quote_ident


def test_all_is_exported() -> None:
    defined = {
        name
        for name, obj in vars(lineprotocol).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == lineprotocol.__name__
    }
    assert sorted(lineprotocol.__all__) == sorted(defined)


@pytest.mark.parametrize(
    ("point", "line"),
    [
        (Point("m", {}, {"v": 1.5}, 1), "m v=1.5 1"),
        (Point("m", {}, {"v": 1.0}, 1), "m v=1.0 1"),
        (Point("m", {}, {"v": 0.1 + 0.2}, 1), "m v=0.30000000000000004 1"),
        (Point("m", {}, {"v": 1e16}, 1), "m v=1e+16 1"),
        (Point("m", {}, {"v": 123}, 1), "m v=123i 1"),
        (Point("m", {}, {"v": -(2**63)}, 1), "m v=-9223372036854775808i 1"),
        (Point("m", {}, {"on": True, "off": False}, 1), "m on=true,off=false 1"),
        (Point("m", {}, {"s": 'say "hi" \\o/'}, 1), 'm s="say \\"hi\\" \\\\o/" 1'),
        (Point("m", {}, {"s": "ends in \\"}, 1), 'm s="ends in \\\\" 1'),
        (Point("m", {}, {"s": "two\nlines"}, 1), 'm s="two\nlines" 1'),
        (Point("m", {"b": "2", "a": "1", "c": ""}, {"v": 1}, -5), "m,a=1,b=2 v=1i -5"),
        (Point("a b,c", {}, {"v": 1}, 1), "a\\ b\\,c v=1i 1"),
        (
            Point("a=b", {"k=, ": "v=, "}, {"f=, ": 1}, 1),
            "a=b,k\\=\\,\\ =v\\=\\,\\  f\\=\\,\\ =1i 1",
        ),
        (Point("m", {"t": "C:\\dir"}, {"v": 1}, 1), "m,t=C:\\dir v=1i 1"),
        (
            Point("Tornería nº 2", {"máquina": "🔥"}, {"v": 1}, 1),
            "Tornería\\ nº\\ 2,máquina=🔥 v=1i 1",
        ),
    ],
)
def test_encode_point(point: Point, line: str) -> None:
    assert encode_point(point) == line


def test_encode_batch_is_newline_terminated_utf8() -> None:
    points = [Point("m", {}, {"v": 1}, 1), Point("ñ", {}, {"v": 2}, 2)]
    assert encode_batch(points) == "m v=1i 1\nñ v=2i 2\n".encode()


def test_nonfinite_fields_are_left_out_and_counted() -> None:
    point = Point("m", {}, {"a": math.nan, "b": 1.0, "c": math.inf, "d": -math.inf}, 1)
    kept, dropped = drop_nonfinite(point)
    assert (kept.fields, dropped) == ({"b": 1.0}, 3)
    assert encode_point(point) == "m b=1.0 1"
    finite = Point("m", {}, {"a": 1.0}, 1)
    assert drop_nonfinite(finite) == (finite, 0)
    assert encode_counting(point) == ("m b=1.0 1", 3)
    assert encode_counting(finite) == ("m a=1.0 1", 0)
    # Nothing left but nothing wrong either: no line, and the count says why.
    assert encode_counting(Point("m", {}, {"a": math.nan, "b": math.inf}, 1)) == (None, 2)
    with pytest.raises(InvalidPointError, match="no field left"):
        encode_counting(Point("m", {}, {}, 1))


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        (
            Point("m", {}, {"v": math.nan}, 1),
            "no field left to store (NaN and ±inf cannot be stored)",
        ),
        (Point("m", {}, {}, 1), "no field left to store (NaN and ±inf cannot be stored)"),
        (Point("", {}, {"v": 1}, 1), "the measurement name is empty"),
        (Point("#m", {}, {"v": 1}, 1), "a measurement name cannot start with '#'"),
        (Point("m\nx", {}, {"v": 1}, 1), "the measurement 'm\\nx' contains a line break"),
        (
            Point("m", {"t": "a\r\nb"}, {"v": 1}, 1),
            "the tag value 'a\\r\\nb' contains a line break",
        ),
        (Point("m", {"": "x"}, {"v": 1}, 1), "a tag key is empty (value 'x')"),
        (Point("m", {}, {"": 1}, 1), "a field key is empty"),
        (Point("m", {}, {"v": 2**63}, 1), "integer 9223372036854775808 does not fit in 64 bits"),
        (Point("m", {}, {"v": None}, 1), "unsupported field value type NoneType"),  # type: ignore[dict-item]
        (Point("m", {}, {"v": 1}, 1.5), "time_ms must be an integer, not 1.5"),  # type: ignore[arg-type]
        (
            Point("m", {"t": "ends in \\"}, {"v": 1}, 1),
            "the tag value 'ends in \\\\' has a backslash at its end or before ', =', "
            "which InfluxDB cannot store",
        ),
        (
            Point("m", {}, {"a\\ b": 1}, 1),
            "the field key 'a\\\\ b' has a backslash at its end or before ', =', "
            "which InfluxDB cannot store",
        ),
    ],
)
def test_unwritable_points_are_refused(point: Point, reason: str) -> None:
    with pytest.raises(InvalidPointError) as caught:
        encode_point(point)
    assert caught.value.reason == reason
    assert str(caught.value) == f"point {point.measurement!r} at {point.time_ms} ms: {reason}"


HOSTILE = [
    "Tornería nº 2",
    "comma,space =equals",
    'double "quotes"',
    "back\\slash",
    "🔥 emoji ⚙️",
    "tab\there",
    "=starts with equals",
]


@pytest.mark.integration
def test_hostile_names_and_strings_round_trip(influxdb: InfluxDBDatabase) -> None:
    influxdb.create()
    points = [
        Point(
            name,
            {"factory": name, f"{name} tag": "x", "empty": ""},
            {
                f"{name} field": f"{name} \\ ends in backslash\\",
                "quote": 'a"b\\"c\\\\',
                "lines": "one\ntwo",
                "f": 0.1 + 0.2,
                "big": 2**62,
                "ok": True,
            },
            1_700_000_000_000 + i,
        )
        for i, name in enumerate(HOSTILE)
    ]
    response = httpx.post(
        f"{influxdb.url}/write",
        params={"db": influxdb.database, "precision": "ms"},
        content=encode_batch(points),
    )
    assert response.status_code == 204, response.text
    for point in points:
        rows = influxdb.select_all(point.measurement)
        assert len(rows) == 1, point.measurement
        tags = {k: v for k, v in point.tags.items() if v}  # an empty tag is not stored
        assert rows[0] == {
            "_name": point.measurement,
            "time": point.time_ms,
            **tags,
            **point.fields,
        }
        tag_values = influxdb.query(
            f"SHOW TAG VALUES FROM {quote_ident(point.measurement)} "
            f"WITH KEY = {quote_ident(point.measurement + ' tag')}"
        )
        assert [r["value"] for r in tag_values] == ["x"]


# Names the encoder accepts: no line breaks, no backslash before a special character or at the end.
_names = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"),
    min_size=1,
    max_size=12,
).filter(lambda name: not name.startswith("#") and not _unwritable(name))


def _unwritable(name: str) -> bool:
    return any(
        c == "\\" and (i + 1 == len(name) or name[i + 1] in ", =") for i, c in enumerate(name)
    )


_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20),
)


@given(
    measurement=_names,
    tags=st.dictionaries(_names, _names, max_size=4),
    fields=st.dictionaries(_names, _values, min_size=1, max_size=5),
    time_ms=st.integers(min_value=0, max_value=4_102_444_800_000),
)
def test_decoding_a_line_gives_back_the_point(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], time_ms: int
) -> None:
    point = Point(measurement, tags, fields, time_ms)
    line = encode_point(point)
    assert decode_line(line) == point
    assert line_measurement(line) == measurement
    assert line_time_ms(line) == time_ms


@pytest.mark.parametrize("line", ["", "m", "m v=1", "m v= 1", 'm v="open 1', "m v=nan 1"])
def test_what_is_not_a_line_is_refused_by_name(line: str) -> None:
    with pytest.raises(ValueError, match="not a line of line protocol"):
        decode_line(line)


_numbers = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),  # past int64 too: refused, not mangled
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(
    keys=st.lists(_names, min_size=1, max_size=6, unique=True),
    rounds=st.lists(st.lists(_numbers, min_size=6, max_size=6), min_size=1, max_size=4),
)
def test_numbers_encode_alike_whether_their_keys_were_met_before_or_not(
    keys: list[str], rounds: list[list[float]]
) -> None:
    # The same keys again and again, as a machine's readings: the first point of a shape, the
    # ones after it (a template, when only ints and floats), and a change of a field's type.
    for numbers in rounds:
        fields: dict[str, FieldValue] = dict(zip(keys, numbers, strict=False))
        point = Point("m", {}, fields, 1)
        expected = []
        for key, value in fields.items():
            name = key.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
            if isinstance(value, float):
                if math.isfinite(value):
                    expected.append(f"{name}={value!r}")
            elif -(2**63) <= value < 2**63:
                expected.append(f"{name}={value}i")
            else:
                with pytest.raises(InvalidPointError, match="does not fit in 64 bits"):
                    encode_counting(point)
                break
        else:
            left_out = len(fields) - len(expected)
            line = f"m {','.join(expected)} 1" if expected else None
            assert encode_counting(point) == (line, left_out)


def test_an_integer_past_a_floats_range_next_to_a_float_is_refused_not_a_crash() -> None:
    for _ in range(2):  # the second time through the template of these keys and types
        with pytest.raises(InvalidPointError, match="does not fit in 64 bits"):
            encode_counting(Point("m", {}, {"a": 1.0, "b": 10**400}, 1))
        assert encode_counting(Point("m", {}, {"a": 1.0, "b": 2}, 1)) == ("m a=1.0,b=2i 1", 0)


def test_a_percent_sign_in_a_field_key_is_not_a_format() -> None:
    for _ in range(2):
        assert encode_point(Point("m", {}, {"%d": 1, "a%%": 2.5}, 1)) == "m %d=1i,a%%=2.5 1"
