"""`load_yaml` gives what `yaml.load` with the safe loader gives, for every YAML file of the
project, for the YAML features it hands back to `yaml.load`, and for generated documents."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import yamlfile
from collector.yamlfile import load_yaml

ROOT = Path(__file__).resolve().parents[2]
PROJECT_YAML = sorted(
    p
    for folder in ("examples", "tests", "simulators", "collector", "docs")
    for p in (ROOT / folder).rglob("*.y*ml")
)
SAFE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and types compared (1 is not True, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return _same(list(a), list(b)) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def test_the_project_has_yaml_files_to_compare() -> None:
    assert len(PROJECT_YAML) > 20


@pytest.mark.parametrize("path", PROJECT_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_of_the_project_loads_as_yaml_load_reads_it(path: Path) -> None:
    assert_loads_as_yaml_load(path.read_text(encoding="utf-8"))  # golden cases: broken files


def assert_loads_as_yaml_load(text: str) -> None:
    """The same value as yaml.load, or the same error: its type and its text (with the line
    and column)."""
    try:
        expected = yaml.load(text, Loader=SAFE)
    except Exception as exc:
        with pytest.raises(Exception) as raised:  # the very type and text, checked below
            load_yaml(text)
        assert type(raised.value) is type(exc)
        assert str(raised.value) == str(exc)
    else:
        assert _same(load_yaml(text), expected)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_a_factory_file_is_built_from_events_not_handed_back(path: Path) -> None:
    """The memory `load_yaml` saves is only saved if ordinary files never go to yaml.load."""
    loader = SAFE(path.read_text(encoding="utf-8"))
    try:
        data = yamlfile._build(loader)
    finally:
        loader.dispose()
    assert _same(data, yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE))


CASES = {
    "empty": "",
    "only a comment": "# nothing\n",
    "a scalar": "hello",
    "null document": "~",
    "scalars": (
        "a: 1\nb: 1.5\nc: true\nd: null\ne: '1'\nf: 0x1F\ng: 1_000\nh: .inf\ni: -.inf\n"
        "j: .nan\nk: 2026-11-26\nl: 2026-11-26 10:00:00+02:00\nm: !!binary aGVsbG8=\n"
        "n: !!str 12\no: !!float 3\np: ''\nq: yes\nr: 'ON'\ns: 012\nt: 1e3\nu: 0o17\n"
    ),
    "nesting": "a: [1, [2, [3, {b: [4, {c: d}]}]]]\ne: {}\nf: []\n",
    "keys of every kind": "1: int\n2.5: float\ntrue: bool\n~: null\n2026-01-01: date\n",
    "duplicate keys, the last wins": "a: 1\na: 2\n",
    "block styles": "text: |\n  two\n  lines\nfolded: >\n  one\n  line\n",
    "anchors and aliases": "base: &b {x: 1}\nuse: *b\nlist: [&n 3, *n]\n",
    "merge keys": "base: &b {x: 1, y: 2}\nitem:\n  <<: *b\n  y: 3\n",
    "a set": "s: !!set {a, b}\n",
    "an ordered map": "o: !!omap [a: 1, b: 2]\n",
    "pairs": "p: !!pairs [a: 1, a: 2]\n",
    "a sequence as a key": "? [a, b]\n: c\n",
    "a mapping as a key": "? {a: 1}\n: c\n",
    "an unknown tag": "a: !custom 1\n",
    "an unknown collection tag": "a: !custom {b: 1}\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "explicit document": "--- \na: 1\n...\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "unclosed flow": "a: [1, 2\n",
    "tab indentation": "a:\n\tb: 1\n",
    "a merge key as a value": "a: <<\n",
    "a mapping's tag on a scalar": "a: !!map ''\n",
    "a mapping's tag on nothing": "a: !!map\n",
    "a sequence's tag on a scalar": "sectors: !!seq x\n",
    "a set's tag on a scalar": "a: !!set x\n",
    "a value its tag cannot take": "a: !!int x\n",
    "a bad value before a YAML error": "a: !!int x\nb: [\n",
    "a bad value before a second document": "a: !!float x\n---\nb\n",
    "a bad boolean": "a: !!bool maybe\n",
    "the non-specific tag": "a: ! 12\nb: ! {c: 1}\nd: ! [1]\n",
    "deep nesting": "a: " + "[" * 200 + "1" + "]" * 200 + "\n",
}


@pytest.mark.parametrize("text", list(CASES.values()), ids=list(CASES))
def test_yaml_features_load_or_fail_as_yaml_load_does(text: str) -> None:
    assert_loads_as_yaml_load(text)


@pytest.mark.parametrize(
    "text",
    [
        "a: ! 12\nb: ! {c: 1}\nd: ! [1]\n",
        "x: !!str 12\ny: 'quoted'\nz: ~\n",
        "%YAML 1.1\n---\na: 1\n",
    ],
)
def test_tags_and_directives_a_factory_file_may_hold_are_built_from_events(text: str) -> None:
    loader = SAFE(text)
    try:
        data = yamlfile._build(loader)
    finally:
        loader.dispose()
    assert _same(data, yaml.load(text, Loader=SAFE))


def test_aliases_are_the_same_object_as_yaml_load_makes_them() -> None:
    data = load_yaml("base: &b {x: 1}\nuse: *b\n")
    assert data["use"] is data["base"]


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.dates().map(lambda d: d)
    | st.datetimes(timezones=st.just(dt.UTC))
    | st.binary(max_size=10)
)
_keys = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10)
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(data=_documents, flow=st.sampled_from([None, True, False]))
def test_generated_documents_load_as_yaml_load_reads_them(data: Any, flow: bool | None) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True, sort_keys=False)
    assert _same(load_yaml(text), yaml.load(text, Loader=SAFE))
