"""Heartbeats of one shape, mapped to series straight from their bytes.

A POP writes the same heartbeat tick after tick: the same keys in the same order,
the same labels and collector states; only the numbers, the id, the time (and,
across a fleet, the POP) change. Parsing each one whole and walking it through
:func:`sinks.series.samples` is most of the remote-write sink's work on a backlog.
So the first heartbeat of a shape is parsed and mapped as usual, and from its
bytes a :class:`Shape` is learned: one regular expression that matches exactly the
documents equal to it but for those values, and a plan saying which series takes
which value. A later heartbeat that matches is read from its captured values alone.

Why it gives the same series as the full path:

- Everything but the holes, keys and punctuation included, must be byte for byte
  the learned document's. A number hole captures a run of the characters numbers
  are written with, and the captures are then parsed by ``json`` itself, as one
  array: that both checks each is a JSON number (a match whose capture is not one
  takes the full path) and gives the very values ``json.loads`` would. ``id``,
  ``ts`` and ``pop`` of the top-level object hold strings of printable ASCII without
  escapes. So a match is valid JSON: the learned document with other numbers (and
  another id, time or POP) in the same places.
- :func:`sinks.series.samples` decides which series exist from a document's keys,
  strings and value types, never from a number's value; the plan is read off the
  mapping itself, run once on the learned document with a distinct marker number in
  every hole.
- A document the shapes cannot vouch for (a backslash anywhere, a repeated key,
  ``NaN``, a top level that is not an object) is never learned, and one that matches
  no shape takes the full path, with its errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

from sinks.series import LAST_HEARTBEAT, SeriesKey, heartbeat_seconds, samples, timestamp_ns

# Kept shapes: a POP has one or two at a time (a collector failing changes it), a fleet a few.
MAX_SHAPES = 8
# Learning a shape (its regular expression compiled) costs about as much as sixty heartbeats read
# by the full path, and each match saves more than half of one; so shapes are learned only while
# they pay for themselves: one more per this many matches ...
HITS_PER_LEARNING = 128
# ... and one per this many misses, so that a stream that changed is picked up again.
MISSES_PER_LEARNING = 1024

# Any JSON number, as the learned document is read.
_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
# A number hole: the characters of a JSON number, checked by json afterwards. The grammar itself
# in the pattern would cost its optional groups in every hole, three times the whole match.
_HOLE_NUMBER = rb"([-+.eE0-9]++)"
_TEXT = rb'("[ !#-\[\]-~]+")'  # printable ASCII, no quote or backslash: its bytes are its JSON
_ID = rb'"[ !#-\[\]-~]*"'
_TOKEN = re.compile(rb'[ \t\n\r]*(?:("[^"]*")|(' + _NUMBER + rb")|(true|false|null)|([{}\[\]:,]))")
_TRAILER = re.compile(rb"[ \t\n\r]*")
_TEXT_KEYS = frozenset({b'"ts"', b'"pop"'})
_MARKER = 10**30  # hole k holds _MARKER + k while the plan is read off the mapping
_DECODE = json.JSONDecoder().decode


class Read(NamedTuple):  # a tuple: thousands are made per request, and a frozen dataclass is slower to build
    """One heartbeat read by its shape: its time (ns), POP and ``seq``, and the values its holes captured."""

    shape: Shape
    ts_ns: int
    pop: str
    seq: int | None
    holes: list[Any]


@dataclass(frozen=True, slots=True, eq=False)
class Shape:
    """The documents equal to a learned one but for their numbers, id, time and POP.

    ``keys`` are the series, in the order :func:`sinks.series.samples` gives them;
    each takes its value from ``sources``: the index of a captured number token,
    ``None`` for the heartbeat-time series (``time_series``) and for a constant
    (``constants``, by series index).
    """

    pattern: re.Pattern[bytes]
    keys: tuple[SeriesKey, ...]
    sources: tuple[int | None, ...]
    constants: dict[int, float | int]
    time_series: int
    ts_hole: int
    pop_hole: int
    seq_hole: int | None

    def read(self, raw: bytes) -> Read | None:
        """The heartbeat in ``raw`` if it has this shape, else ``None``; ``ValueError`` for a bad time."""
        match = self.pattern.fullmatch(raw)
        if match is None:
            return None
        holes = decode_holes([match.groups()])[0]
        return None if holes is None else self.finish(holes)

    def finish(self, holes: list[Any]) -> Read:
        """The heartbeat whose holes held these values; ``ValueError`` for a bad time."""
        seq = None if self.seq_hole is None else holes[self.seq_hole]
        ts_ns = timestamp_ns(holes[self.ts_hole])
        return Read(self, ts_ns, holes[self.pop_hole], seq if type(seq) is int else None, holes)

    def columns(self, reads: Sequence[Read]) -> list[float | int]:
        """The values of heartbeats of this shape, series after series (each in ``reads``' order)."""
        holes = list(zip(*(read.holes for read in reads), strict=True))
        out: list[float | int] = []
        for index, source in enumerate(self.sources):
            if source is not None:
                out.extend(holes[source])
            elif index == self.time_series:
                out.extend([heartbeat_seconds(read.ts_ns) for read in reads])
            else:
                out.extend(repeat(self.constants[index], len(reads)))
        return out

    def values(self, read: Read) -> list[float | int]:
        """The series' values of one heartbeat, in step with ``keys``."""
        out: list[float | int] = []
        for index, source in enumerate(self.sources):
            if source is not None:
                out.append(read.holes[source])
            elif index == self.time_series:
                out.append(heartbeat_seconds(read.ts_ns))
            else:
                out.append(self.constants[index])
        return out


def decode_holes(captured: Sequence[tuple[bytes, ...]]) -> list[list[Any] | None]:
    """The values each heartbeat's holes captured, parsed by ``json`` all at once; ``None`` for one that is no JSON.

    A capture that is no JSON number (``01``, ``1.``) fails the whole parse; then each
    heartbeat is parsed on its own, to tell which.
    """
    if not captured:
        return []
    texts = [b",".join(groups).decode("ascii") for groups in captured]
    try:
        decoded: list[list[Any] | None] = _DECODE("[[" + "],[".join(texts) + "]]")
    except ValueError:  # also an integer too long for json to read
        decoded = []
        for text in texts:
            try:
                decoded.append(_DECODE("[" + text + "]"))
            except ValueError:
                decoded.append(None)
    return decoded


def learn(raw: bytes) -> Shape | None:
    """The shape of the heartbeat in ``raw``, or ``None`` if it cannot be vouched for (see the module)."""
    if b"\\" in raw:
        return None
    pieces = _pieces(raw)
    if pieces is None:
        return None
    literals, holes = pieces
    ts_hole = pop_hole = -1
    seq_hole: int | None = None
    pattern = [re.escape(literals[0])]
    marked = [literals[0]]
    for index, ((kind, token), literal) in enumerate(zip(holes, literals[1:], strict=True)):
        if kind == b'"ts"':
            ts_hole = index
        elif kind == b'"pop"':
            pop_hole = index
        elif kind == b'"seq"':
            seq_hole = index
        if kind == b'"id"':
            pattern[-1] += _ID
            marked.append(token)
        elif kind in _TEXT_KEYS:
            pattern.append(_TEXT)
            marked.append(token)
        else:
            pattern.append(_HOLE_NUMBER)
            marked.append(b"%d" % (_MARKER + index))
        pattern.append(re.escape(literal))
        marked.append(literal)
    if ts_hole < 0 or pop_hole < 0:
        return None
    groups = [index for index, (kind, _) in enumerate(holes) if kind != b'"id"']
    try:
        doc = json.loads(b"".join(marked))
        mapped = samples(doc, timestamp_ns(doc["ts"]))
    except (ValueError, RecursionError):
        return None
    sources: list[int | None] = []
    constants: dict[int, float | int] = {}
    time_series = -1
    for series, (key, value) in enumerate(mapped.items()):
        if key == (LAST_HEARTBEAT, ()):
            time_series = series
            sources.append(None)
        elif type(value) is int and value >= _MARKER:
            sources.append(groups.index(value - _MARKER))
        elif abs(value) >= _MARKER:  # a hole's number, changed on the way: the plan cannot say how
            return None
        else:
            sources.append(None)
            constants[series] = value
    return Shape(
        pattern=re.compile(b"".join(pattern)),
        keys=tuple(mapped),
        sources=tuple(sources),
        constants=constants,
        time_series=time_series,
        ts_hole=groups.index(ts_hole),
        pop_hole=groups.index(pop_hole),
        seq_hole=None if seq_hole is None else groups.index(seq_hole),
    )


def _pieces(raw: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]] | None:
    """The literal runs of ``raw`` and the holes between them, as ``(kind, token)``; ``None`` if unfit.

    A hole's kind is the top-level key it is the value of (``b'"ts"'``), or ``b""``
    for a number anywhere else. Each object's keys are checked for repeats, which
    ``json`` would silently merge.
    """
    literals: list[bytes] = []
    holes: list[tuple[bytes, bytes]] = []
    keys: list[set[bytes] | None] = []  # per open container: an object's keys so far, None for an array
    top_key = b""
    expect_key = False
    start = position = 0
    while position < len(raw):
        match = _TOKEN.match(raw, position)
        if match is None:
            break
        text, number, _word, mark = match.groups()
        if not keys and (position or mark != b"{"):
            return None  # the document is one object, and nothing follows it
        value_start = match.start(1) if text else match.start(2)
        position = match.end()
        if mark is not None:
            if mark in b"{[":
                keys.append(set() if mark == b"{" else None)
            elif mark in b"}]":
                keys.pop()
            expect_key = mark == b"{" or (mark == b"," and bool(keys) and keys[-1] is not None)
            continue
        if text is not None and expect_key:
            seen = keys[-1] if keys else None
            if seen is None or text in seen:
                return None
            seen.add(text)
            if len(keys) == 1:
                top_key = text
            expect_key = False
            continue
        at_top = len(keys) == 1
        if number is not None:
            kind = top_key if at_top and top_key == b'"seq"' else b""
        elif text is not None and at_top and top_key in (b'"id"', b'"ts"', b'"pop"'):
            kind = top_key
        else:
            continue
        literals.append(raw[start:value_start])
        holes.append((kind, raw[value_start:position]))
        start = position
    if keys or not holes:
        return None
    trailer = _TRAILER.match(raw, position)
    if trailer is None or trailer.end() != len(raw):
        return None
    literals.append(raw[start:])
    return literals, holes


class Shapes:
    """The shapes of recent heartbeats, most recently matched first."""

    def __init__(self) -> None:
        self._shapes: list[Shape] = []
        self.hits = 0
        self.misses = 0
        self.learned = 0

    def match(self, raw: bytes) -> tuple[Shape, tuple[bytes, ...]] | None:
        """The known shape ``raw`` has and what its holes captured, or ``None`` (then :meth:`learn` may take it)."""
        shapes = self._shapes
        for index, shape in enumerate(shapes):
            found = shape.pattern.fullmatch(raw)
            if found is not None:
                if index:  # the most recent shape first: a POP's shape changes rarely
                    shapes.remove(shape)
                    shapes.insert(0, shape)
                self.hits += 1
                return shape, found.groups()
        self.misses += 1
        return None

    def read(self, raw: bytes) -> Read | None:
        """The heartbeat in ``raw`` read by a known shape, or ``None``; ``ValueError`` for a bad time."""
        found = self.match(raw)
        if found is None:
            return None
        shape, groups = found
        holes = decode_holes([groups])[0]
        return None if holes is None else shape.finish(holes)

    def learn(self, raw: bytes) -> bool:
        """Learn the shape of ``raw``, a heartbeat the full path took, if shapes are paying off; whether it was."""
        allowance = 1 + self.hits // HITS_PER_LEARNING + self.misses // MISSES_PER_LEARNING
        if self.learned >= allowance:
            return False
        self.learned += 1
        shape = learn(raw)
        if shape is None:
            return False
        self._shapes.insert(0, shape)
        del self._shapes[MAX_SHAPES:]
        return True
