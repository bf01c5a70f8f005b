"""YAML text to Python data without holding the whole document's node graph.

`yaml.load` composes every node of a document (each scalar a node with two position marks)
before it builds the first value: for a plant's file of 100 devices × 60 signals (450 KiB) that
graph took 27 MiB, the collector's peak memory. `load_yaml` builds the same values straight
from the parser's events, each event garbage as soon as it is used, through PyYAML's own
resolver and scalar constructors, so a value is what `yaml.load` with the safe loader gives.
What it does not handle itself — anchors and aliases, merge keys (`<<`), explicit collection
tags (`!!set`, `!!omap`), mappings as keys, several documents — it hands to `yaml.load`, which
handles them or says what is wrong, with the line and column.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

__all__ = ["load_yaml"]

# libyaml's parser when PyYAML has it: a plant's file of thousands of signals loads in a
# fraction of the pure-Python parser's time.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
# The tags a scalar is built for here; any other (a collection's tag on a scalar, `!!merge`, an
# application's own) goes to yaml.load, which builds it or says what is wrong.
_SCALARS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("null", "bool", "int", "float", "binary", "timestamp", "str")
)


class _Unusual(Exception):
    """Something `yaml.load` handles and the event builder does not."""


def load_yaml(text: str) -> Any:
    """The document in `text` as `yaml.load(text, <safe loader>)` gives it; yaml.YAMLError as
    that raises it."""
    loader = _Loader(text)
    try:
        return _build(loader)
    except _Unusual:
        pass
    finally:
        loader.dispose()
    data: Any = yaml.load(text, Loader=_Loader)
    return data


def _build(loader: Any) -> Any:
    event = loader.get_event()
    assert isinstance(event, StreamStartEvent)
    if isinstance(loader.peek_event(), StreamEndEvent):
        return None  # an empty file, as yaml.load reads it
    start = loader.get_event()
    assert isinstance(start, DocumentStartEvent)
    data = _value(loader, loader.get_event())
    end = loader.get_event()
    assert isinstance(end, DocumentEndEvent)
    if not isinstance(loader.get_event(), StreamEndEvent):
        raise _Unusual  # a second document: yaml.load says so
    return data


def _value(loader: Any, event: Any) -> Any:
    """The value that starts with `event`; containers built with an explicit stack (a deeply
    nested file cannot exhaust Python's recursion)."""
    stack: list[tuple[dict[Any, Any] | list[Any], list[Any]]] = []
    while True:
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Unusual
        value: Any
        if isinstance(event, ScalarEvent):
            value = _scalar(loader, event)
        elif isinstance(event, MappingStartEvent):
            if _tag(loader, MappingNode, event, None) != _MAP:
                raise _Unusual
            stack.append(({}, []))
            event = loader.get_event()
            continue
        elif isinstance(event, SequenceStartEvent):
            if _tag(loader, SequenceNode, event, None) != _SEQ:
                raise _Unusual
            stack.append(([], []))
            event = loader.get_event()
            continue
        elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
            value, _ = stack.pop()
        else:  # pragma: no cover - the parser allows nothing else here
            raise _Unusual
        if not stack:
            return value
        container, pending_key = stack[-1]
        if isinstance(container, list):
            container.append(value)
        elif pending_key:
            container[pending_key.pop()] = value
        elif isinstance(value, (dict, list)):
            raise _Unusual  # a mapping or sequence as a key
        else:
            pending_key.append(value)
        event = loader.get_event()


def _tag(loader: Any, kind: type, event: Any, value: str | None) -> str:
    tag: str | None = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(kind, value, event.implicit)
    assert tag is not None
    return tag


def _scalar(loader: Any, event: Any) -> Any:
    tag = _tag(loader, ScalarNode, event, event.value)
    if tag not in _SCALARS:
        raise _Unusual
    node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        return loader.yaml_constructors[tag](loader, node)
    except Exception:
        # `!!int x`: yaml.load reads the whole document first, so a YAML error further on is
        # what it reports, as it should be.
        raise _Unusual from None
