"""The four protobuf messages of Prometheus remote write 1.0, encoded by hand.

From ``prompb/remote.proto`` and ``prompb/types.proto``::

    message WriteRequest { repeated TimeSeries timeseries = 1; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }   // ms since the epoch

Three wire types cover them: varint, 64-bit (the double) and length-delimited.
Writing them here is a few dozen lines; the ``protobuf`` package would bring a
generated module and a runtime for the same bytes (the tests decode these bytes
with it, from a descriptor built at test time).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence

# Field keys: (field number << 3) | wire type.
_LEN_1 = 0x0A  # field 1, length-delimited: WriteRequest.timeseries, TimeSeries.labels, Label.name
_LEN_2 = 0x12  # field 2, length-delimited: TimeSeries.samples, Label.value
SAMPLES_KEY = _LEN_2  # TimeSeries.samples
VALUE_KEY = 0x09  # Sample.value: field 1, 64-bit
SAMPLE_HEAD = struct.Struct("<BBBd")  # samples key, sample length, value key, value


def varint(value: int) -> bytes:
    """``value`` as a protobuf varint; a negative one as its 64-bit two's complement, as int64 is written."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(key: int, payload: bytes) -> bytes:
    return bytes((key,)) + varint(len(payload)) + payload


def labels_field(labels: Iterable[tuple[str, str]]) -> bytes:
    """The ``labels`` fields of a TimeSeries; ``labels`` must already be sorted by name."""
    return b"".join(
        _delimited(_LEN_1, _delimited(_LEN_1, name.encode()) + _delimited(_LEN_2, value.encode()))
        for name, value in labels
    )


def timestamp_tail(timestamp_ms: int) -> bytes:
    """The timestamp field of a Sample (field 2, varint), shared by every sample of one heartbeat."""
    if timestamp_ms < 1 << 21:
        return b"\x10" + varint(timestamp_ms)
    # The three low 7-bit groups, then the rest, which heartbeats share for 35 minutes at a time.
    low = bytes(
        ((timestamp_ms & 0x7F) | 0x80, ((timestamp_ms >> 7) & 0x7F) | 0x80, ((timestamp_ms >> 14) & 0x7F) | 0x80)
    )
    return b"\x10" + low + _high_groups(timestamp_ms >> 21)


@functools.lru_cache(maxsize=256)
def _high_groups(value: int) -> bytes:
    return varint(value)


def sample_field(value: float, tail: bytes) -> bytes:
    """One ``samples`` field of a TimeSeries: ``value`` at the time ``tail`` holds (see :func:`timestamp_tail`)."""
    # A sample is at most 9 + 11 bytes, so its length always fits one varint byte.
    return SAMPLE_HEAD.pack(SAMPLES_KEY, 9 + len(tail), VALUE_KEY, value) + tail


def timeseries_field(labels: bytes, samples: Sequence[bytes]) -> bytes:
    """One ``timeseries`` field of a WriteRequest from encoded labels and samples (oldest first)."""
    return _delimited(_LEN_1, labels + b"".join(samples))
