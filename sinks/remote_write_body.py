"""Request bodies for remote write: heartbeats -> ``WriteRequest`` -> snappy (block format).

The heartbeats of one POP share their series from tick to tick, so a run of them
is encoded column by column: one ``TimeSeries`` per series carrying every
heartbeat's sample, its labels encoded once and kept for the next request. All the
run's values are packed by one ``struct.pack`` and laid into place, every series at
once, with strided slice assignments: C loops rather than one Python step per
sample. Runs too short for that, and runs whose timestamps differ in encoded
width, take the plain path, one ``struct.pack`` per sample. Either way each
series' samples go oldest first.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

from agent.sample import Pending
from sinks.prompb import SAMPLE_HEAD, SAMPLES_KEY, VALUE_KEY, labels_field, timeseries_field, timestamp_tail
from sinks.series import Labels, SeriesKey, full_labels, samples, timestamp_ns
from sinks.shapes import Read, Shape, Shapes, decode_holes

try:
    import cramjam
except ImportError:  # the upload component depends on it; a bare source checkout may lack it
    cramjam = None  # type: ignore[assignment]

# What reading a heartbeat that cannot be sent raises: the sink rejects it as "malformed".
PREPARE_ERRORS = (ValueError, TypeError, KeyError, AttributeError)
# Heartbeats of one run from which the column-wise layout pays for its fixed cost.
COLUMNAR_MIN = 8
# Encoded label sets kept between requests: a POP has a few dozen series, a fleet bench many more.
LABEL_CACHE_SIZE = 65_536


def snappy_available() -> bool:
    """Whether ``cramjam`` (snappy) is installed."""
    return cramjam is not None


@dataclass(slots=True)  # not frozen: one is built per heartbeat, and a frozen one costs more to build
class Prepared:
    """A heartbeat ready to encode: its id, time (ms), POP, series, and their values.

    The values are ``values``, in step with ``keys``; or, for a heartbeat read by
    its shape (``read``), the values its holes held, laid out when encoded.
    """

    id: str
    ts_ms: int
    pop: str
    keys: tuple[SeriesKey, ...]
    values: Sequence[float | int]
    seq: int | None = None  # for the sent ledger's record of the request
    read: Read | None = None

    @classmethod
    def of(cls, item: Pending) -> Prepared:
        """``item`` parsed and mapped; ``ValueError`` (or ``TypeError``) if it has no usable ``ts`` or ``pop``."""
        doc = item.doc
        pop = doc.get("pop")
        if not isinstance(pop, str) or not pop:
            raise ValueError("heartbeat without pop")
        ts = doc.get("ts")
        if not isinstance(ts, str):
            raise ValueError("heartbeat without ts")
        ts_ns = timestamp_ns(ts)
        mapped = samples(doc, ts_ns)
        seq = doc.get("seq")
        seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        return cls(item.id, ts_ns // 1_000_000, pop, tuple(mapped), tuple(mapped.values()), seq)

    def series_values(self) -> Sequence[float | int]:
        """The series' values, in step with ``keys``."""
        return self.values if self.read is None else self.read.shape.values(self.read)


class Preparer:
    """Reads heartbeats by a known shape (:mod:`sinks.shapes`) where one fits, else parses and maps them whole."""

    def __init__(self) -> None:
        self.shapes = Shapes()

    def prepare(self, item: Pending) -> Prepared:
        """``item`` ready to encode; the errors of :meth:`Prepared.of` for a heartbeat that cannot be."""
        try:
            read = self.shapes.read(item.raw)
        except ValueError:  # a time the full path refuses too, with its own error
            read = None
        return self._whole(item) if read is None else self._of(item, read)

    def prepare_all(self, chunk: Sequence[Pending]) -> list[Prepared | None]:
        """Each of ``chunk`` ready to encode, or ``None`` for one that cannot be (see :meth:`prepare`).

        The numbers of every heartbeat read by its shape are parsed in one go.
        """
        out: list[Prepared | None] = []
        matched: list[tuple[int, Shape]] = []
        captured: list[tuple[bytes, ...]] = []
        for item in chunk:
            found = self.shapes.match(item.raw)
            if found is None:
                out.append(self._whole_or_none(item))
                continue
            matched.append((len(out), found[0]))
            captured.append(found[1])
            out.append(None)
        for (index, shape), holes in zip(matched, decode_holes(captured), strict=True):
            item = chunk[index]
            try:
                out[index] = self._whole_or_none(item) if holes is None else self._of(item, shape.finish(holes))
            except ValueError:  # a time the full path refuses too
                out[index] = self._whole_or_none(item)
        return out

    def _whole(self, item: Pending) -> Prepared:
        """``item`` parsed and mapped whole; its shape learned, if shapes are paying off."""
        prepared = Prepared.of(item)
        if not self.shapes.learn(item.raw):
            return prepared
        read = self.shapes.read(item.raw)  # so that it goes with the heartbeats of its shape
        return prepared if read is None else self._of(item, read)

    def _whole_or_none(self, item: Pending) -> Prepared | None:
        try:
            return self._whole(item)
        except PREPARE_ERRORS:
            return None

    @staticmethod
    def _of(item: Pending, read: Read) -> Prepared:
        return Prepared(item.id, read.ts_ns // 1_000_000, read.pop, read.shape.keys, (), read.seq, read)


class BodyEncoder:
    """Encodes parts of a batch, keeping each series' encoded labels for the next request."""

    def __init__(self, job: str) -> None:
        self._job = job
        self._heads: dict[tuple[str, str, Labels], bytes] = {}

    def encode(self, part: Sequence[Prepared]) -> bytes:
        """The request body for ``part`` (oldest first); ``OverflowError`` for a value no double holds."""
        if cramjam is None:
            raise RuntimeError("cramjam is not installed")
        return bytes(cramjam.snappy.compress_raw(self.write_request(part)))

    def write_request(self, part: Sequence[Prepared]) -> bytes:
        """The ``WriteRequest`` for ``part``, uncompressed: one ``TimeSeries`` per series and run of a POP."""
        by_pop = sorted(part, key=lambda item: item.pop)  # stable: each POP's heartbeats stay oldest first
        fields: list[bytes] = []
        start = 0
        while start < len(by_pop):
            first = by_pop[start]
            end = start + 1
            while end < len(by_pop) and by_pop[end].pop == first.pop and by_pop[end].keys == first.keys:
                end += 1
            self._encode_run(by_pop[start:end], fields)
            start = end
        return b"".join(fields)

    def _encode_run(self, run: Sequence[Prepared], fields: list[bytes]) -> None:
        """Append one ``timeseries`` field per series of ``run`` (heartbeats of one POP with the same series)."""
        heads = self._labels(run[0].pop, run[0].keys)
        tails = [timestamp_tail(item.ts_ms) for item in run]
        if len(run) < COLUMNAR_MIN or len({len(tail) for tail in tails}) != 1:
            pack = SAMPLE_HEAD.pack
            columns = zip(*(item.series_values() for item in run), strict=True)
            for head, column in zip(heads, columns, strict=True):
                body = b"".join(
                    pack(SAMPLES_KEY, 9 + len(tail), VALUE_KEY, value) + tail
                    for value, tail in zip(column, tails, strict=True)
                )
                fields.append(timeseries_field(head, (body,)))
            return
        # Every sample of the run has one width: lay them all out at once, series after series,
        # each series' block a copy of one template holding the keys and timestamps.
        count, width = len(run), len(tails[0])
        stride = 11 + width  # key, length, value key, 8-byte double, timestamp field
        template = bytearray(stride * count)
        template[0::stride] = bytes((SAMPLES_KEY,)) * count
        template[1::stride] = bytes((stride - 2,)) * count
        template[2::stride] = bytes((VALUE_KEY,)) * count
        joined = b"".join(tails)
        for offset in range(width):
            template[11 + offset :: stride] = joined[offset::width]
        values = _columns(run)
        raw = struct.pack(f"<{len(values)}d", *values)  # faster than array("d"), which parses a format per item
        laid = template * len(heads)
        for offset in range(8):
            laid[3 + offset :: stride] = raw[offset::8]
        block = stride * count
        samples_of = bytes(laid)
        for index, head in enumerate(heads):
            fields.append(timeseries_field(head, (samples_of[index * block : (index + 1) * block],)))

    def _labels(self, pop: str, keys: tuple[SeriesKey, ...]) -> list[bytes]:
        """The encoded label set of each series, from the cache where it is."""
        if len(self._heads) + len(keys) > LABEL_CACHE_SIZE:
            self._heads.clear()
        heads = []
        for name, own in keys:
            key = (pop, name, own)
            head = self._heads.get(key)
            if head is None:
                head = self._heads[key] = labels_field(full_labels(name, own, pop, self._job))
            heads.append(head)
        return heads


def _columns(run: Sequence[Prepared]) -> list[float | int]:
    """The run's values, series after series, each series in the run's order."""
    reads = [item.read for item in run if item.read is not None]
    if len(reads) == len(run) and all(read.shape is reads[0].shape for read in reads):
        return reads[0].shape.columns(reads)
    return list(chain.from_iterable(zip(*(item.series_values() for item in run), strict=True)))
