"""Decoding remote-write bodies independently of the sink: ``protobuf`` from a descriptor built here.

The descriptor follows Prometheus' ``prompb/remote.proto`` and ``prompb/types.proto``
(WriteRequest, TimeSeries, Label, Sample), so a body the sink encodes wrongly
fails to decode, or decodes to something else, here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

Decoded = list[tuple[dict[str, str], list[tuple[int, float]]]]

_F = descriptor_pb2.FieldDescriptorProto


@cache
def write_request_class() -> Any:
    """The ``prometheus.WriteRequest`` message class."""
    proto = descriptor_pb2.FileDescriptorProto(name="rw_test.proto", package="prometheus", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str | None, bool]) -> None:
        added = proto.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            field = added.field.add(name=field_name, number=number, type=kind)
            field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if type_name:
                field.type_name = type_name

    message("Label", ("name", 1, _F.TYPE_STRING, None, False), ("value", 2, _F.TYPE_STRING, None, False))
    message("Sample", ("value", 1, _F.TYPE_DOUBLE, None, False), ("timestamp", 2, _F.TYPE_INT64, None, False))
    message(
        "TimeSeries",
        ("labels", 1, _F.TYPE_MESSAGE, ".prometheus.Label", True),
        ("samples", 2, _F.TYPE_MESSAGE, ".prometheus.Sample", True),
    )
    message("WriteRequest", ("timeseries", 1, _F.TYPE_MESSAGE, ".prometheus.TimeSeries", True))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


def decode_protobuf(raw: bytes) -> Decoded:
    """``[(labels, [(timestamp_ms, value), ...]), ...]`` from an uncompressed WriteRequest."""
    request = write_request_class()()
    request.ParseFromString(raw)
    return [
        ({label.name: label.value for label in series.labels}, [(s.timestamp, s.value) for s in series.samples])
        for series in request.timeseries
    ]


def label_names(raw: bytes) -> list[list[str]]:
    """The label names of each series, in the order the body carries them."""
    request = write_request_class()()
    request.ParseFromString(raw)
    return [[label.name for label in series.labels] for series in request.timeseries]


def decode_body(body: bytes) -> Decoded:
    """A request body as sent: snappy (block format), then protobuf."""
    return decode_protobuf(bytes(cramjam.snappy.decompress_raw(body)))
