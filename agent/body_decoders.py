"""Kept request bodies decoded as each sink encoded them, for ``agent sent --verify``.

One small decoder per sink or hook, keyed by the name its ledger records hold.
Each returns what the scrubber should see: heartbeat documents (checked by the
whole scrubber) and strings (checked by its tripwire). Standard library only,
the remote-write snappy and protobuf included, so an auditor's build needs
nothing the agent does not ship.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Contents:
    """What a body holds for the scrubber: heartbeat documents, strings, and how many heartbeats it carried."""

    docs: list[Any] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    heartbeats: int = 0


def _inflate(body: bytes) -> bytes:
    return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body


def decode_central(body: bytes) -> Contents:
    """``{"heartbeats": [...]}``, gzip-compressed or not."""
    docs = list(json.loads(_inflate(body))["heartbeats"])
    return Contents(docs=docs, heartbeats=len(docs))


def decode_loki(body: bytes) -> Contents:
    """Loki's push JSON: each stream's labels as strings, each line as a heartbeat."""
    contents = Contents()
    for stream in json.loads(_inflate(body))["streams"]:
        contents.texts.extend(str(value) for value in stream.get("stream", {}).values())
        contents.docs.extend(json.loads(line) for _, line in stream["values"])
    contents.heartbeats = len(contents.docs)
    return contents


def decode_text(body: bytes) -> Contents:
    """A text body (an ntfy message, an empty Kuma GET), line by line."""
    return Contents(texts=_inflate(body).decode("utf-8").splitlines())


def decode_pushgateway(body: bytes) -> Contents:
    """The Prometheus text format of one heartbeat, line by line."""
    contents = decode_text(body)
    contents.heartbeats = 1 if contents.texts else 0
    return contents


def snappy_block(data: bytes) -> bytes:
    """Decompress snappy's block format (not the framed one), as remote write uses it."""
    length, pos = _varint(data, 0)
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        kind = tag & 3
        pos += 1
        if kind == 0:  # literal; lengths above 60 follow the tag in 1-4 bytes
            size = tag >> 2
            if size >= 60:
                extra = size - 59
                size = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            size += 1
            out += data[pos : pos + size]
            pos += size
            continue
        if kind == 1:
            size, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            size, offset = (tag >> 2) + 1, int.from_bytes(data[pos : pos + width], "little")
            pos += width
        if not 0 < offset <= len(out):
            raise ValueError("snappy: bad copy offset")
        for _ in range(size):  # copies may overlap what they produce
            out.append(out[-offset])
    if len(out) != length:
        raise ValueError("snappy: wrong length")
    return bytes(out)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def protobuf_fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of one protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError("protobuf: unsupported wire type")
        if pos > len(data):
            raise ValueError("protobuf: truncated")
        yield number, wire, value


# Every heartbeat gives this series one sample at its own time (docs/remote-write.md); the
# name is the wire contract, written here because the community build has no sinks/.
LAST_HEARTBEAT = b"pop_agent_last_heartbeat_timestamp_seconds"


def decode_remote_write(body: bytes) -> Contents:
    """A remote write 1.0 ``WriteRequest`` (snappy block): every label name and value as a string.

    The heartbeats are counted as the samples of the last-heartbeat series, over
    every POP and every run of it in the request.
    """
    contents = Contents()
    for number, wire, series in protobuf_fields(snappy_block(body)):
        if number != 1 or wire != 2:
            continue  # metadata (field 3) holds help texts the agent does not send
        samples = 0
        last_heartbeat = False
        for part, part_wire, value in protobuf_fields(series):
            if part == 1 and part_wire == 2:  # Label {1: name, 2: value}
                pair = [text for _, kind, text in protobuf_fields(value) if kind == 2]
                contents.texts.extend(text.decode("utf-8") for text in pair)
                last_heartbeat = last_heartbeat or pair == [b"__name__", LAST_HEARTBEAT]
            elif part == 2:
                samples += 1
        if last_heartbeat:
            contents.heartbeats += samples
    return contents


DECODERS: dict[str, Callable[[bytes], Contents]] = {
    "central": decode_central,
    "loki": decode_loki,
    "pushgateway": decode_pushgateway,
    "remote_write": decode_remote_write,
    "ntfy": decode_text,
    "kuma": decode_text,
}
