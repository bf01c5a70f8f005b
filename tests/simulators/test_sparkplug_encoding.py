"""The hand-written Sparkplug B encoder against vectors worked out by hand, and against the
protobuf package's own decoding of a schema written here (not the collector's)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from simulators.sparkplug import Metric, encode_metric, encode_payload, varint


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16384, "808001"),
        (2**64 - 1, "ffffffffffffffffff01"),
        (-1, "ffffffffffffffffff01"),  # an int64 of -1 takes ten bytes
    ],
)
def test_varints(value: int, wire: str) -> None:
    assert varint(value).hex() == wire


def test_metric_vectors() -> None:
    # name "t" (0a 01 74), alias 10 (10 0a), datatype Double (20 0a), double 21.5 (69 + LE bytes)
    assert (
        encode_metric(Metric("Double", 21.5, name="t", alias=10)).hex()
        == "0a0174" + "100a" + "200a" + "69" + "0000000000803540"
    )
    # by alias only; Float 1.5 is fixed32 (65 + 0000c03f)
    assert encode_metric(Metric("Float", 1.5, alias=3)).hex() == "1003" + "2009" + "65" + "0000c03f"
    assert encode_metric(Metric("Boolean", True, alias=1)).hex() == "1001" + "200b" + "7001"
    assert encode_metric(Metric("Int64", -2, alias=2)).hex() == (
        "1002" + "2004" + "58" + "feffffffffffffffff01"
    )
    assert encode_metric(Metric("String", "ok", name="s")).hex() == "0a0173" + "200c" + "7a026f6b"


def test_payload_vector() -> None:
    # timestamp 1741003200000 ms = 2025-03-03T12:00Z; one metric; seq 255
    payload = encode_payload([Metric("Int64", 7, name="bdSeq")], timestamp=1741003200000, seq=255)
    metric = "0a05" + b"bdSeq".hex() + "2004" + "5807"
    assert payload.hex() == (
        "08" + varint(1741003200000).hex() + "12" + f"{len(metric) // 2:02x}" + metric + "18ff01"
    )
    # 1741003200000 in 7-bit groups, low first: 0000000 0101100 0000010 1011111 1010101 0110010
    assert varint(1741003200000).hex() == "80ac82dfd532"


def sparkplug_payload_class() -> Any:
    """Payload and Metric from Eclipse Tahu's sparkplug_b.proto (the fields the boards use)."""
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="spb_test.proto", package="spb_test")
    payload = file.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")

    def field(
        message: Any, name: str, number: int, kind: int, label: int = 1, of: str = ""
    ) -> None:
        message.field.add(name=name, number=number, type=kind, label=label, type_name=of or None)

    field(payload, "timestamp", 1, F.TYPE_UINT64)
    field(payload, "metrics", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".spb_test.Payload.Metric")
    field(payload, "seq", 3, F.TYPE_UINT64)
    field(payload, "uuid", 4, F.TYPE_STRING)
    for name, number, kind in [
        ("name", 1, F.TYPE_STRING), ("alias", 2, F.TYPE_UINT64),
        ("timestamp", 3, F.TYPE_UINT64), ("datatype", 4, F.TYPE_UINT32),
        ("is_null", 7, F.TYPE_BOOL), ("int_value", 10, F.TYPE_UINT32),
        ("long_value", 11, F.TYPE_UINT64), ("float_value", 12, F.TYPE_FLOAT),
        ("double_value", 13, F.TYPE_DOUBLE), ("boolean_value", 14, F.TYPE_BOOL),
        ("string_value", 15, F.TYPE_STRING),
    ]:  # fmt: skip
        field(metric, name, number, kind)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("spb_test.Payload"))


def test_protobuf_reads_what_the_encoder_writes() -> None:
    Payload = sparkplug_payload_class()
    raw = encode_payload(
        [
            Metric("Double", 58.25, name="Booth/Temperature", alias=10, timestamp=5),
            Metric("Float", 30.5, alias=11),
            Metric("Boolean", True, alias=12),
            Metric("Int64", 98231, alias=13),
            Metric("Int32", -5, alias=14),
            Metric("String", "ñandú", name="Note"),
        ],
        timestamp=1741003200000,
        seq=7,
    )
    decoded = Payload.FromString(raw)
    assert (decoded.timestamp, decoded.seq) == (1741003200000, 7)
    first, *rest = decoded.metrics
    assert (first.name, first.alias, first.timestamp, first.datatype) == (
        "Booth/Temperature", 10, 5, 10
    )  # fmt: skip
    assert first.double_value == 58.25
    assert [m.datatype for m in rest] == [9, 11, 4, 3, 12]
    assert rest[0].float_value == 30.5 and rest[1].boolean_value is True
    assert rest[2].long_value == 98231 and rest[3].int_value == 2**32 - 5
    assert rest[4].string_value == "ñandú"
