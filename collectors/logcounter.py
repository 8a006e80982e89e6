"""One followed log, read a chunk at a time into its counters, rates and unique-address windows.

Each log is followed like ``tail -F`` (:mod:`collectors.logtail`), at most
``max_lines`` lines per step, 256 KiB at a time. No Python code runs per line
on the common paths: one ``findall`` reads a chunk (:mod:`collectors.logformats`),
and the counting is done by ``set``, ``Counter``, ``zip`` and ``map`` over its
matches. A chunk whose matches do not match its line count (garbage, escaped
quotes) is read again the strict way, or, for JSON, line by line, so counts are
those of line-by-line parsing.

Two paths:

- bulk: a chunk whose lines all lie in one 10-minute bucket too old for the rates
  (a backlog, the first start) needs only the addresses. One expression
  (:func:`collectors.logformats.bulk_expression`), whose date, hour and tens of
  minutes are literal, checks every line and captures its address.
- general: every other chunk. Matches are (address, stamp, class); each distinct
  stamp is parsed once (:class:`collectors.logformats.StampTimes`), lines are
  counted per (stamp, class) with a ``Counter`` when any is recent, and the
  addresses go to the windows per 10-minute bucket.

On the very first start the follower seeks back (binary search on time stamps, at
most :data:`BACKFILL_MAX_BYTES`) to fill the 24-hour window.
"""

from __future__ import annotations

import io
import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import compress, repeat
from pathlib import Path
from typing import Any

from agent.sample import JsonObject
from collectors.logformats import (
    COMBINED,
    COMBINED_FAST,
    Format,
    JsonShape,
    StampTimes,
    bulk_expression,
    is_utf8,
    json_shape,
    line_time,
    parse_json_line,
    plain_json_text,
)
from collectors.logrates import RECENT_S, SecondCounts
from collectors.logtail import LogFollower
from collectors.uniques import FINE_BUCKET, UniqueWindows

BACKFILL_MAX_BYTES = 512 << 20

Records = Sequence[tuple[bytes, Any, Any]]
"""One chunk's matches: (address token, time stamp as spelt, status class digit)."""


class LogCounter:
    """Counts, rates and unique-address windows of one followed log."""

    def __init__(self, path: Path, fmt: Format, *, clock: Callable[[], float], max_lines: int) -> None:
        self.path = path
        self.fmt: Format = fmt
        self._clock = clock
        self.max_lines = max_lines
        self.follower = LogFollower(path, start_at=self._backfill_start)
        self.total = 0
        self.malformed = 0
        self.rates = SecondCounts()
        self.uniques = UniqueWindows()
        self._stamps = StampTimes()
        self._shape: JsonShape | None = None
        self._bulk_re: tuple[bytes, re.Pattern[bytes]] | None = None  # (stamp literal, expression)

    def step(self, now: float) -> int:
        """Read and count up to ``max_lines`` new lines; return how many were read."""
        read = 0
        try:
            for chunk, count in self.follower.chunks(self.max_lines):
                read += count
                if self.fmt == "combined":
                    self._combined(chunk, count, now)
                else:
                    self._json(chunk, count, now)
        finally:
            self.malformed += self.follower.oversized_lines
            self.follower.oversized_lines = 0
            self.uniques.flush(now)
            self.rates.prune(now)
            self.uniques.prune(now)
        return read

    # -- combined ---------------------------------------------------------------------------

    def _combined(self, chunk: bytes, lines: int, now: float) -> None:
        if b"\\" in chunk and b'\\"' in chunk:
            records = COMBINED.findall(b"\n" + chunk)
        else:
            if self._bulk(chunk, lines, now):
                return
            data = b"\n" + chunk
            records = COMBINED_FAST.findall(data)
            if len(records) != lines:
                records = COMBINED.findall(data)
        self._aggregate(records, lines, self._stamps.combined, now)

    def _bulk(self, chunk: bytes, lines: int, now: float) -> bool:
        """Count a chunk whose lines all lie in one 10-minute bucket too old for the rates; ``False`` if it does not.

        The bucket is the first line's. Local 10-minute spans are buckets only for
        time zones whole in tens of minutes; other zones take the general path.
        """
        first = COMBINED.match(b"\n" + chunk[: chunk.find(b"\n") + 1])
        if first is None:
            return False
        stamp = first.group(2)
        when = self._stamps.combined(stamp)
        if when is None or int(stamp[24:26]) % 10:
            return False
        bucket = int(when // FINE_BUCKET)
        if (bucket + 1) * FINE_BUCKET > now - RECENT_S:
            return False  # may hold lines that the rates need
        literal = stamp[:16] + stamp[20:]
        if self._bulk_re is None or self._bulk_re[0] != literal:
            self._bulk_re = (literal, bulk_expression(stamp))
        tokens = self._bulk_re[1].findall(b"\n" + chunk)
        if len(tokens) != lines:
            return False
        self.total += lines
        self.uniques.add(tokens, bucket, now)
        return True

    # -- json -------------------------------------------------------------------------------

    def _json(self, chunk: bytes, lines: int, now: float) -> None:
        if self._shape is None:
            self._shape = json_shape(chunk[: chunk.find(b"\n")])
        if self._shape is not None and (chunk.isascii() or is_utf8(chunk)):
            data = b"\n" + chunk
            patterns = (self._shape.plain, self._shape.pattern) if plain_json_text(chunk) else (self._shape.pattern,)
            for pattern in patterns:
                records: Records = pattern.findall(data)
                if len(records) == lines:
                    self._aggregate(records, lines, self._stamps.json, now, self._shape.order)
                    return
        parsed = []
        last = None
        for line in chunk.split(b"\n")[:-1]:
            record = parse_json_line(line)
            if record is not None:
                parsed.append(record)
                last = line
        self._aggregate(parsed, lines, float, now)
        if last is not None:
            self._shape = json_shape(last)  # the log may have changed its fields: follow its latest lines

    # -- both -------------------------------------------------------------------------------

    def _aggregate(
        self,
        records: Sequence[tuple[Any, ...]],
        lines: int,
        resolve: Callable[[Any], float | None],
        now: float,
        order: tuple[int, int, int] = (0, 1, 2),
    ) -> None:
        """Count the records of a chunk of ``lines`` lines: per-second rates, then addresses per 10-minute bucket.

        ``order`` says where in a record its address, time stamp and status class are.
        """
        if not records:
            self.malformed += lines
            return
        tokens, stamps, classes = (list(map(operator.itemgetter(i), records)) for i in order)
        times = {stamp: resolve(stamp) for stamp in set(stamps)}
        bad = 0
        if None in times.values():
            bad = sum(n for stamp, n in Counter(stamps).items() if times[stamp] is None)
        self.total += len(records) - bad
        self.malformed += lines - len(records) + bad
        if any(self.rates.wants(when, now) for when in times.values()):
            self.rates.add(Counter(zip(stamps, classes, strict=True)), times, now)
        bucket_of = {stamp: self.uniques.bucket_of(when, now) for stamp, when in times.items() if when is not None}
        buckets = set(bucket_of.values())
        if len(buckets) == 1 and not bad:
            self.uniques.add(tokens, buckets.pop(), now)
            return
        line_buckets = list(map(bucket_of.get, stamps))
        for bucket in buckets:
            self.uniques.add(set(compress(tokens, map(operator.eq, line_buckets, repeat(bucket)))), bucket, now)

    # -- first start ------------------------------------------------------------------------

    def _backfill_start(self, fh: io.FileIO, size: int) -> int:
        """The offset of the first line within the 24-hour window (approximately, by bisection)."""
        coarse = self.uniques.coarse
        since = self._clock() - coarse.window - coarse.bucket
        lo, hi = max(0, size - BACKFILL_MAX_BYTES), size
        first = self._time_after(fh, lo)
        if first is None or first >= since:
            return lo
        while hi - lo > 65_536:
            mid = (lo + hi) // 2
            when = self._time_after(fh, mid)
            if when is None or when >= since:
                hi = mid
            else:
                lo = mid
        return lo

    def _time_after(self, fh: io.FileIO, offset: int) -> float | None:
        fh.seek(offset)
        lines = fh.read(65_536).split(b"\n")[1 if offset else 0 : -1]
        for line in lines:
            when = line_time(line, self.fmt)
            if when is not None:
                return when
        return None

    # -- state ------------------------------------------------------------------------------

    def save(self) -> JsonObject:
        """JSON-safe state: offsets, counters, per-second counts, registers."""
        return {
            "path": str(self.path),
            "format": self.fmt,
            "follow": self.follower.save_state(),
            "total": self.total,
            "malformed": self.malformed,
            "seconds": self.rates.save(),
            **self.uniques.save(),
        }

    def load(self, state: dict[str, Any], *, sketches: bool) -> None:
        """Restore :meth:`save`'s data; the sketches only if they were built with the same key."""
        same_file = state.get("path") == str(self.path) and state.get("format") == self.fmt
        if same_file and isinstance(state.get("follow"), dict):
            self.follower.load_state(state["follow"])
        for name in ("total", "malformed"):
            value = state.get(name)
            if isinstance(value, int) and value >= 0:
                setattr(self, name, value)
        self.rates.load(state.get("seconds"))
        if sketches:
            self.uniques.load(state)
