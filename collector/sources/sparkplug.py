"""Sparkplug B (spBv1.0) payloads: the protobuf schema built at import, without protoc.

The dynamic protobuf classes are untyped; everything leaving this module is a plain dataclass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    message,
    message_factory,
)

__all__ = [
    "DATATYPES",
    "SparkplugDecodeError",
    "SparkplugMetric",
    "SparkplugPayload",
    "decode_payload",
    "encode_payload",
    "integer_value",
]

# Sparkplug B DataType codes this collector can store; the rest (arrays, DataSet, Template,
# PropertySet…) are skipped.
DATATYPES: dict[str, int] = {
    "Int8": 1,
    "Int16": 2,
    "Int32": 3,
    "Int64": 4,
    "UInt8": 5,
    "UInt16": 6,
    "UInt32": 7,
    "UInt64": 8,
    "Float": 9,
    "Double": 10,
    "Boolean": 11,
    "String": 12,
    "DateTime": 13,
    "Text": 14,
}

_PACKAGE = "org.eclipse.tahu.protobuf"
_F = descriptor_pb2.FieldDescriptorProto


def _build_classes() -> tuple[Any, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="aguante/sparkplug_b.proto", package=_PACKAGE, syntax="proto2"
    )
    payload = file.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")

    def field(
        owner: Any,
        name: str,
        number: int,
        kind: int,
        *,
        repeated: bool = False,
        type_name: str | None = None,
        oneof: bool = False,
    ) -> None:
        added = owner.field.add(
            name=name,
            number=number,
            type=kind,
            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
        )
        if type_name is not None:
            added.type_name = type_name
        if oneof:
            added.oneof_index = 0

    field(payload, "timestamp", 1, _F.TYPE_UINT64)
    field(
        payload,
        "metrics",
        2,
        _F.TYPE_MESSAGE,
        repeated=True,
        type_name=f".{_PACKAGE}.Payload.Metric",
    )
    field(payload, "seq", 3, _F.TYPE_UINT64)
    # Text fields are declared as bytes (the same wire type) so that invalid UTF-8 from a
    # device reaches our own check instead of surprising the protobuf runtime.
    field(payload, "uuid", 4, _F.TYPE_BYTES)
    field(payload, "body", 5, _F.TYPE_BYTES)
    field(metric, "name", 1, _F.TYPE_BYTES)
    field(metric, "alias", 2, _F.TYPE_UINT64)
    field(metric, "timestamp", 3, _F.TYPE_UINT64)
    field(metric, "datatype", 4, _F.TYPE_UINT32)
    field(metric, "is_historical", 5, _F.TYPE_BOOL)
    field(metric, "is_transient", 6, _F.TYPE_BOOL)
    field(metric, "is_null", 7, _F.TYPE_BOOL)
    # MetaData, PropertySet, DataSet, Template and extensions are kept as opaque bytes: they
    # carry nothing stored here, and opaque bytes cannot nest deeply.
    field(metric, "metadata", 8, _F.TYPE_BYTES)
    field(metric, "properties", 9, _F.TYPE_BYTES)
    for name, number, kind in (
        ("int_value", 10, _F.TYPE_UINT32),
        ("long_value", 11, _F.TYPE_UINT64),
        ("float_value", 12, _F.TYPE_FLOAT),
        ("double_value", 13, _F.TYPE_DOUBLE),
        ("boolean_value", 14, _F.TYPE_BOOL),
        ("string_value", 15, _F.TYPE_BYTES),
        ("bytes_value", 16, _F.TYPE_BYTES),
        ("dataset_value", 17, _F.TYPE_BYTES),
        ("template_value", 18, _F.TYPE_BYTES),
        ("extension_value", 19, _F.TYPE_BYTES),
    ):
        field(metric, name, number, kind, oneof=True)

    # A pool of our own, so the schema never clashes with another copy in the default pool.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    payload_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{_PACKAGE}.Payload")
    )
    metric_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{_PACKAGE}.Payload.Metric")
    )
    return payload_class, metric_class


_Payload, _Metric = _build_classes()

MetricValue = bool | int | float | str | bytes


class SparkplugDecodeError(ValueError):
    """A payload that is not a Sparkplug B message; `kind` is "malformed" or "invalid_utf8"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class SparkplugMetric:
    """One metric as sent: the value field that was set (if any) and its raw content."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    is_null: bool = False
    value_field: str | None = None  # "int_value", "long_value", "float_value", …
    value: MetricValue | None = None


@dataclass(frozen=True, slots=True)
class SparkplugPayload:
    timestamp: int | None = None
    seq: int | None = None
    metrics: tuple[SparkplugMetric, ...] = ()


def decode_payload(data: bytes) -> SparkplugPayload:
    """Decode a Sparkplug B payload; raises SparkplugDecodeError for anything else."""
    decoded = _Payload()
    try:
        decoded.ParseFromString(data)
    except (message.DecodeError, RecursionError, ValueError) as exc:
        # protobuf's text names our message type before the reason; the reason is what helps.
        reason = str(exc).rsplit(": ", 1)[-1] or type(exc).__name__
        raise SparkplugDecodeError("malformed", f"not a Sparkplug B payload: {reason}") from None
    metrics = tuple(_metric(m, index) for index, m in enumerate(decoded.metrics))
    return SparkplugPayload(
        timestamp=int(decoded.timestamp) if decoded.HasField("timestamp") else None,
        seq=int(decoded.seq) if decoded.HasField("seq") else None,
        metrics=metrics,
    )


def _metric(raw: Any, index: int) -> SparkplugMetric:
    name: str | None = None
    if raw.HasField("name"):
        try:
            name = bytes(raw.name).decode("utf-8")
        except UnicodeDecodeError:
            raise SparkplugDecodeError(
                "invalid_utf8", f"metric {index}: its name is not UTF-8"
            ) from None
    value_field = raw.WhichOneof("value")
    value: MetricValue | None = None
    if value_field is not None:
        raw_value = getattr(raw, value_field)
        if value_field == "string_value":
            try:
                value = bytes(raw_value).decode("utf-8")
            except UnicodeDecodeError:
                raise SparkplugDecodeError(
                    "invalid_utf8", f"metric {name or index}: its string value is not UTF-8"
                ) from None
        elif value_field in ("float_value", "double_value"):
            value = float(raw_value)
        elif value_field == "boolean_value":
            value = bool(raw_value)
        elif value_field in ("int_value", "long_value"):
            value = int(raw_value)
        else:
            value = bytes(raw_value)
    return SparkplugMetric(
        name=name,
        alias=int(raw.alias) if raw.HasField("alias") else None,
        timestamp=int(raw.timestamp) if raw.HasField("timestamp") else None,
        datatype=int(raw.datatype) if raw.HasField("datatype") else None,
        is_null=bool(raw.is_null),
        value_field=value_field,
        value=value,
    )


_VALUE_FIELD_OF = {
    1: "int_value",
    2: "int_value",
    3: "int_value",
    4: "long_value",
    5: "int_value",
    6: "int_value",
    7: "int_value",
    8: "long_value",
    9: "float_value",
    10: "double_value",
    11: "boolean_value",
    12: "string_value",
    13: "long_value",
    14: "string_value",
}
_WIDTH = {1: 8, 2: 16, 3: 32, 4: 64, 5: 8, 6: 16, 7: 32, 8: 64}


def encode_payload(
    metrics: Iterable[SparkplugMetric], *, timestamp: int | None = None, seq: int | None = None
) -> bytes:
    """Encode a payload as an edge node would (for tests and tools); signed integers are written
    two's complement, as the Sparkplug B specification says."""
    out = _Payload()
    if timestamp is not None:
        out.timestamp = timestamp
    if seq is not None:
        out.seq = seq
    for metric in metrics:
        raw = out.metrics.add()
        if metric.name is not None:
            raw.name = metric.name.encode("utf-8")
        if metric.alias is not None:
            raw.alias = metric.alias
        if metric.timestamp is not None:
            raw.timestamp = metric.timestamp
        if metric.datatype is not None:
            raw.datatype = metric.datatype
        if metric.is_null:
            raw.is_null = True
            continue
        if metric.value is None:
            continue
        value_field = metric.value_field or _VALUE_FIELD_OF.get(metric.datatype or 0)
        if value_field is None:
            raise ValueError(f"metric {metric.name!r}: give value_field or a known datatype")
        value: Any = metric.value
        if value_field in ("int_value", "long_value") and isinstance(value, int):
            bits = 32 if value_field == "int_value" else 64
            value &= (1 << bits) - 1
        elif value_field == "string_value" and isinstance(value, str):
            value = value.encode("utf-8")
        elif value_field in ("float_value", "double_value") and not isinstance(value, float):
            value = float(value)
        setattr(raw, value_field, value)
    result: bytes = out.SerializeToString()
    return result


def integer_value(datatype: int, raw: int) -> int:
    """A Sparkplug integer as the device meant it: signed types come two's complement in an
    unsigned field (Int8 may arrive sign-extended to 32 bits or not; both read the same)."""
    width = _WIDTH[datatype]
    raw &= (1 << width) - 1
    if datatype <= 4 and raw >= 1 << (width - 1):
        raw -= 1 << width
    return raw
