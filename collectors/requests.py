"""Requests: rates and unique client counts from the web server's access log (and a tarpit log).

Each log is followed like ``tail -F`` (:mod:`collectors.logtail`), at most
``max_lines_per_tick`` lines per tick, in a worker thread. Lines are
``combined`` (``1.2.3.4 - - [22/Nov/2026:07:00:00 +0000] "GET / HTTP/1.1" 200 …``)
or ``json`` (one object a line: ``time``/``ts``/``@timestamp`` as ISO 8601 or
epoch seconds, ``remote_addr``/``client_ip``/``ip``, ``status``). A line without
a parseable time and status is malformed: counted, never fatal. A line whose
address field is not an IP address is a request but no client.

Windows follow the log's own timestamps, not arrival time:

- ``requests_per_s`` (and ``requests_class_per_s`` by ``class`` 2xx..5xx) count
  the lines stamped in the last ``interval`` whole seconds before the current
  second, divided by that span (at least one second). Lines that arrive after
  their second was reported count in ``requests_total`` only.
- ``unique_ips_1h`` / ``unique_ips_24h`` are rings of HyperLogLog sketches
  (:mod:`collectors.hll`, 8 KiB each) in 10-minute and 4-hour buckets: each count
  spans the window plus at most one bucket, so ``unique_ips_1h`` covers between 60
  and 70 minutes of log time and ``unique_ips_24h`` between 24 and 28 hours. The
  bucket sizes are what keeps each window at most 7 sketches, under 64 KiB. On the
  very first start the follower seeks back (binary search on timestamps, at most
  ``BACKFILL_MAX_BYTES``) to fill them.

No Python code runs per line on the common paths. Lines are read a megabyte at
a time. A chunk whose lines all fall in one 10-minute bucket too old for the
rates (a backlog, the first start) needs only their addresses: the C module
``collectors._hllscan`` checks each line against that bucket's shape
(:func:`bulk_expression`, whose time stamp prefix is literal) and applies its
address to the bucket's registers, without a Python object per line; a chunk it
refuses takes the general path. Otherwise one compiled regular expression finds
every line of a chunk (``findall``), and its matches are counted against the
chunk's line count; only when they differ (garbage, escaped quotes) does the
chunk go through the strict expression, or, for JSON, ``json.loads`` line by
line, so counts are those of line-by-line parsing. Statuses are counted with a
``Counter`` over (time stamp, class) pairs and time stamps are parsed once per
distinct stamp.

Without the C module (built where a compiler is present) the same counts come
from Python: the bulk chunks go through :func:`bulk_expression`, addresses are
deduplicated with a ``set`` of their hashes per chunk and time bucket, and only
those not met before are normalised and hashed.

Addresses never outlive the chunk of lines they were read in (a line still
being written is left in the file, and only parsed time stamps are remembered).
After it they are known only by a per-process keyed SipHash (Python's
``hash()``, or the C module's own; the key is random per process and never
written) in one bounded cache (a dict in Python, a 2 MiB table inside the C
module's ``Scanner``), and by the register update they cause. The registers are
hashed with BLAKE2b under a sketch key that is random per POP install, kept 0600
in the state directory: a per-process key would make a restarted agent count
each client of the last 24 hours a second time. What is saved across restarts
is offsets, counters, per-second counts and registers, never an address or a
reversible hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from agent.errors import CollectorError
from agent.sample import MetricKind, MetricSpec, Sample
from collectors import hll
from collectors.logtail import LogFollower

if TYPE_CHECKING:
    from agent.settings import RequestsSettings, Settings

KEY_FILE = "requests-sketch.key"
STATE_VERSION = 1
FINE_BUCKET = 600
COARSE_BUCKET = 4 * 3600
BACKFILL_MAX_BYTES = 512 << 20
# Lines stamped this close to now are counted per second, for the rates.
RECENT_S = 300
FUTURE_S = 300
CACHE_CAP = 1 << 16  # hash(token) -> register update
SEEN_CAP = 1 << 16  # hash(token) already applied, per fine bucket (the last three buckets)
CLASSES = ("2xx", "3xx", "4xx", "5xx")

_TS = rb"\d\d/[A-Za-z]{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}"
_REQUEST = rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
# Matches start at the newline before a line (chunks get one prepended), so that
# the engine can skip ahead to the next line by a literal search.
COMBINED = re.compile(rb"\n([^ \n]+) [^\[\n]*\[(" + _TS + rb")\] " + _REQUEST + rb" ([1-5])\d\d(?=[ \r\n])")
# The same with single-character exclusions, which the engine scans several times
# faster. Without the newline exclusions a match may run over a garbage line into
# the next: then the chunk has fewer matches than lines and is read again with
# COMBINED. Without escapes in the request an escaped quote can end it early:
# chunks holding one are read with COMBINED too.
COMBINED_FAST = re.compile(rb'\n([^ ]+) [^\[]*\[([^\]]*)\] "[^"]*" ([1-5])\d\d(?=[ \r\n])')
TIME_STAMP = re.compile(_TS)
_MONTHS = {
    m: i
    for i, m in enumerate(
        (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1
    )
}
_JSON_TIME = ("time", "ts", "@timestamp", "timestamp")
_JSON_ADDR = ("remote_addr", "client_ip", "ip", "client", "remote_ip")
_JSON_WS = rb"[ \t\r]*"
_JSON_CHARS = rb'[^"\\\x00-\x1f]*'
_JSON_STRING = rb'"' + _JSON_CHARS + rb'(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})' + _JSON_CHARS + rb')*"'
_JSON_NUMBER = rb"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?"
_JSON_SCALAR = rb"(?:" + _JSON_STRING + rb"|" + _JSON_NUMBER + rb"|true|false|null)"

Format = Literal["combined", "json"]


def combined_time(text: bytes) -> float | None:
    """Epoch seconds of a combined-format time such as ``22/Nov/2026:07:00:00 +0000``."""
    try:
        month = _MONTHS[text[3:6].title()]
        sign = -1 if text[21:22] == b"-" else 1
        tz = timezone(sign * timedelta(hours=int(text[22:24]), minutes=int(text[24:26])))
        moment = datetime(
            int(text[7:11]), month, int(text[0:2]), int(text[12:14]), int(text[15:17]), int(text[18:20]), tzinfo=tz
        )
    except (KeyError, ValueError):
        return None
    return moment.timestamp()


def bulk_expression(stamp: bytes) -> re.Pattern[bytes]:
    """The addresses of the lines stamped in the 10-minute span of ``stamp`` (matches start at the newline before).

    The bulk path's definition of a line, in Python; ``collectors._hllscan``
    matches the same lines (``scan_combined``) and tests hold the two together.
    """
    literal = re.escape(stamp[:16]) + rb"\d:[0-5]\d" + re.escape(stamp[20:])
    return re.compile(rb"\n([^ ]+) [^\[]*\[" + literal + rb'\] "[^"]*" [1-5]\d\d(?=[ \r\n])')


def json_time(value: object) -> float | None:
    """Epoch seconds of a JSON log time: ISO 8601 text, or epoch seconds (milliseconds if huge)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value
        try:
            value = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                return None
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return value / 1000 if value > 1e11 else float(value)
    return None


def parse_json_line(line: bytes) -> tuple[bytes, float, int] | None:
    """(address token, epoch, status class) of one JSON log line, or ``None`` if malformed."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    when = next((json_time(doc[k]) for k in _JSON_TIME if k in doc), None)
    status = doc.get("status")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    addr = next((doc[k] for k in _JSON_ADDR if isinstance(doc.get(k), str)), None)
    if when is None or not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return None
    if addr is None:
        return None
    return addr.encode("utf-8", "replace"), when, status // 100


def line_time(line: bytes, fmt: Format) -> float | None:
    """The time stamp of one line, or ``None`` (used to seek back on first start)."""
    if fmt == "json":
        parsed = parse_json_line(line)
        return None if parsed is None else parsed[1]
    match = COMBINED.match(b"\n" + line.rstrip(b"\r\n") + b"\n")
    return None if match is None else combined_time(match.group(2))


def json_shape(line: bytes) -> tuple[re.Pattern[bytes], tuple[int, int, int]] | None:
    """A fast expression for JSON lines with the same flat shape as ``line``, or ``None``.

    Same keys in the same order, scalar values, the address a string without
    escapes, the status of the same type: on such lines the expression reads what
    :func:`parse_json_line` reads. Returns the compiled expression (anchored at the
    newline before a line) and the order that puts its groups as (address, time, class).
    """
    try:
        doc = json.loads(line, object_pairs_hook=lambda pairs: ("object", pairs))
    except ValueError:
        return None
    if not isinstance(doc, tuple):
        return None
    pairs: list[tuple[str, object]] = doc[1]
    keys = [k for k, _ in pairs]
    values = dict(pairs)
    time_key = next((k for k in _JSON_TIME if k in values), None)
    addr_key = next((k for k in _JSON_ADDR if isinstance(values.get(k), str)), None)
    status = values.get("status")
    if (
        len(set(keys)) != len(keys)
        or time_key is None
        or addr_key is None
        or any(isinstance(v, tuple | list) for v in values.values())
        or not isinstance(status, int | str)
        or isinstance(status, bool)
        or any(k in values and k != addr_key for k in _JSON_ADDR[: _JSON_ADDR.index(addr_key)])
    ):
        return None
    captures = {
        time_key: ("time", rb"(" + _JSON_STRING + rb"|" + _JSON_NUMBER + rb")"),
        addr_key: ("addr", rb'"([^"\\\x00-\x1f]*)"'),
        "status": ("class", rb"([1-5])\d\d" if isinstance(status, int) else rb'"([1-5])\d\d"'),
    }
    parts = []
    groups: list[str] = []
    for key in keys:
        group, value = captures.get(key, ("", _JSON_SCALAR))
        if group:
            groups.append(group)
        parts.append(re.escape(json.dumps(key).encode("ascii")) + _JSON_WS + b":" + _JSON_WS + value)
    body = (_JSON_WS + b"," + _JSON_WS).join(parts)
    pattern = re.compile(rb"\n" + _JSON_WS + rb"\{" + _JSON_WS + body + _JSON_WS + rb"\}" + _JSON_WS + rb"(?=\n)")
    if pattern.match(b"\n" + line.rstrip(b"\n") + b"\n") is None:
        return None  # spelt otherwise (escaped keys, say): leave such lines to json.loads
    return pattern, (groups.index("addr"), groups.index("time"), groups.index("class"))


def load_or_create_key(path: Path) -> bytes:
    """The POP's sketch key: 32 random bytes in a 0600 file, created on first use."""
    with contextlib.suppress(FileNotFoundError):
        key = path.read_bytes()
        if len(key) == 32:
            return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path) if path.exists() else os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    key = path.read_bytes()
    if len(key) != 32:
        raise OSError("sketch key file is damaged")
    return key


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _tokens_of(hashes: set[int], tokens: Collection[bytes]) -> dict[int, bytes]:
    """The tokens behind a few per-process hashes."""
    if len(hashes) > 256:
        return dict(zip(map(hash, tokens), tokens, strict=True))
    found: dict[int, bytes] = {}
    for token in tokens:
        h = hash(token)
        if h in hashes:
            found[h] = token
            if len(found) == len(hashes):
                break
    return found


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
        self.seconds: dict[int, list[int]] = {}  # second -> [all, 1xx, 2xx, 3xx, 4xx, 5xx]
        self.fine = hll.WindowedSketch(3600, FINE_BUCKET)
        self.coarse = hll.WindowedSketch(86_400, COARSE_BUCKET)
        self.hasher: hll.KeyedHasher | None = None
        self._cache: dict[int, int] = {}  # hash(token) -> register update, or 0 for no address
        self._seen: dict[int, set[int]] = {}  # fine bucket -> hash(token) already gathered there
        self._pending: dict[int, bytearray] = {}  # fine bucket -> registers gathered in this step
        self._times: dict[bytes, float] = {}  # time stamps met lately, parsed
        self._shape: tuple[re.Pattern[bytes], tuple[int, int, int]] | None = None
        self._bulk_re: tuple[bytes, re.Pattern[bytes]] | None = None  # (stamp literal, expression), in Python

    # -- reading ----------------------------------------------------------------------------

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
            self._flush(now)
            self._prune(now)
        return read

    def _combined(self, chunk: bytes, lines: int, now: float) -> None:
        if b"\\" in chunk and b'\\"' in chunk:
            records = COMBINED.findall(b"\n" + chunk)
        else:
            bulk = self._bulk_stamp(chunk, now)
            if bulk is not None and self._bulk(chunk, lines, *bulk, now):
                self.total += lines
                return
            data = b"\n" + chunk
            records = COMBINED_FAST.findall(data)
            if len(records) != lines:
                records = COMBINED.findall(data)
        self._aggregate(records, lines, self._time, now)

    def _bulk_stamp(self, chunk: bytes, now: float) -> tuple[bytes, int] | None:
        """The first line's time stamp and 10-minute bucket, if that is old enough for the bulk path.

        Most chunks of a log read after the fact lie in one bucket, too old for
        the rates: then only the addresses are needed. The bucket's date, hour
        and tens of minutes are literal in what the bulk path matches, so a match
        is a valid line of that bucket, and a chunk with as many matches as lines
        lies wholly in it. Local 10-minute spans are buckets only for time zones
        whole in tens of minutes; other zones take the general path.
        """
        first = COMBINED.match(b"\n" + chunk[: chunk.find(b"\n") + 1])
        if first is None:
            return None
        stamp = first.group(2)
        when = self._time(stamp)
        if when is None or int(stamp[24:26]) % 10:
            return None
        bucket = int(when // FINE_BUCKET)
        if (bucket + 1) * FINE_BUCKET > now - RECENT_S:
            return None  # may hold lines that the rates need
        return stamp, bucket

    def _bulk(self, chunk: bytes, lines: int, stamp: bytes, bucket: int, now: float) -> bool:
        """Count the addresses of a chunk whose lines all lie in ``stamp``'s bucket; ``False`` if they do not."""
        prefix, suffix = stamp[:16], stamp[20:]
        registers = self._registers(bucket * FINE_BUCKET, now)
        if self.hasher is not None and self.hasher.native:
            scratch = registers if registers is not None else bytearray(hll.M)  # too old to count: only check
            return self.hasher.scan_combined(scratch, chunk, prefix, suffix) == lines
        if self._bulk_re is None or self._bulk_re[0] != prefix + suffix:
            self._bulk_re = (prefix + suffix, bulk_expression(stamp))
        tokens = self._bulk_re[1].findall(b"\n" + chunk)
        if len(tokens) != lines:
            return False
        self._apply(tokens, bucket * FINE_BUCKET, now)
        return True

    def _json(self, chunk: bytes, lines: int, now: float) -> None:
        if self._shape is None:
            self._shape = json_shape(chunk[: chunk.find(b"\n")])
        if self._shape is not None and (chunk.isascii() or _is_utf8(chunk)):
            pattern, order = self._shape
            records: list[tuple[bytes, Any, Any]] = pattern.findall(b"\n" + chunk)
            if len(records) == lines:
                if order != (0, 1, 2):
                    records = list(map(itemgetter(*order), records))
                self._aggregate(records, lines, self._json_time, now)
                return
        records = []
        last = None
        for line in chunk.split(b"\n")[:-1]:
            parsed = parse_json_line(line)
            if parsed is not None:
                records.append(parsed)
                last = line
        self._aggregate(records, lines, float, now)
        if last is not None:
            self._shape = json_shape(last)  # the log may have changed its fields: follow its latest lines

    # Only text that parsed as a time is remembered across chunks: what sits between
    # the brackets of a malformed line may be anything, an address included.

    def _time(self, text: bytes) -> float | None:
        when = self._times.get(text)
        if when is None and TIME_STAMP.fullmatch(text):
            when = combined_time(text)
            if when is not None:
                self._remember_time(text, when)
        return when

    def _json_time(self, raw: bytes) -> float | None:
        when = self._times.get(raw)
        if when is None:
            when = json_time(json.loads(raw))
            if when is not None:
                self._remember_time(raw, when)
        return when

    def _remember_time(self, text: bytes, when: float) -> None:
        if len(self._times) >= 4096:
            self._times.clear()
        self._times[text] = when

    def _aggregate(
        self, records: Sequence[tuple[bytes, Any, Any]], lines: int, resolve: Callable[[Any], float | None], now: float
    ) -> None:
        """Count the records of a chunk of ``lines`` lines: per-second rates, then addresses per fine bucket."""
        times = {stamp: resolve(stamp) for stamp in set(map(itemgetter(1), records))}
        bad = 0
        if None in times.values():
            bad = sum(1 for _, stamp, _ in records if times[stamp] is None)
        self.total += len(records) - bad
        self.malformed += lines - len(records) + bad
        keep_from, keep_to = now - RECENT_S, now + FUTURE_S
        if any(when is not None and keep_from <= when <= keep_to for when in times.values()):
            for (stamp, cls), n in Counter(map(itemgetter(1, 2), records)).items():
                when = times[stamp]
                if when is not None and keep_from <= when <= keep_to:
                    row = self.seconds.setdefault(int(when), [0] * 6)
                    row[0] += n
                    row[int(cls)] += n
        buckets = {int(min(t, now) // FINE_BUCKET) for t in times.values() if t is not None}
        if len(buckets) == 1 and not bad:
            self._apply(list(map(itemgetter(0), records)), buckets.pop() * FINE_BUCKET, now)
            return
        groups: dict[int, set[bytes]] = {}
        for token, stamp, _ in records:
            when = times[stamp]
            if when is not None:
                groups.setdefault(int(min(when, now) // FINE_BUCKET), set()).add(token)
        for bucket, tokens in groups.items():
            self._apply(tokens, bucket * FINE_BUCKET, now)

    def _registers(self, when: float, now: float) -> bytearray | None:
        """This step's registers for the fine bucket holding ``when``; ``None`` if it is too old to count."""
        if self.hasher is None:
            return None
        when = min(when, now)
        if int(when // COARSE_BUCKET) < self.coarse.first_live(now):
            return None
        fine_id = int(when // FINE_BUCKET)
        registers = self._pending.get(fine_id)
        if registers is None:
            registers = self._pending[fine_id] = bytearray(hll.M)
        return registers

    def _apply(self, tokens: Collection[bytes], when: float, now: float) -> None:
        """Gather the register updates of the addresses among ``tokens`` for the fine bucket holding ``when``."""
        registers = self._registers(when, now)
        if registers is None or self.hasher is None or not tokens:
            return
        fine_id = int(min(when, now) // FINE_BUCKET)
        if self.hasher.native:
            self.hasher.add_tokens(registers, tokens)
            return
        # In Python, only addresses first met in this bucket are looked up.
        seen = self._seen.get(fine_id)
        if seen is None:
            seen = self._seen[fine_id] = set()
            for old in sorted(self._seen)[:-3]:
                del self._seen[old]
        # Filtering by the bucket's seen hashes first spares most cache lookups,
        # which cost a few cache misses each: the scan's largest cost at high cardinality.
        fresh = set(map(hash, tokens)).difference(seen)  # not -=, which would walk all of seen
        if not fresh:
            return
        if len(seen) < SEEN_CAP:
            seen |= fresh
        cached = list(map(self._cache.get, fresh))
        updates = self._learn(fresh, tokens) if None in cached else cast("list[int]", cached)
        hll.apply_updates(registers, updates)

    def _learn(self, fresh: set[int], tokens: Collection[bytes]) -> list[int]:
        """The register updates of ``fresh``, normalising and hashing the addresses not met before."""
        hasher, cache = self.hasher, self._cache
        assert hasher is not None
        missing = fresh.difference(cache)
        if len(cache) + len(missing) > CACHE_CAP:
            cache.clear()
            missing = fresh
        by_hash = _tokens_of(missing, tokens)
        for h in missing:
            packed = hll.packed_address(by_hash[h])
            cache[h] = 0 if packed is None else hasher.update_of(packed)  # 0: rank 0 changes nothing
        return list(map(cache.__getitem__, fresh))

    def _flush(self, now: float) -> None:
        """Merge the registers gathered in this step into the sketches, each sketch once."""
        first_fine = self.fine.first_live(now)
        for fine_id, registers in sorted(self._pending.items()):
            # The coarse sketch is the union of its 10-minute ones.
            if fine_id >= first_fine:
                self.fine.absorb(fine_id, registers)
            self.coarse.absorb(fine_id * FINE_BUCKET // COARSE_BUCKET, registers)
        self._pending.clear()

    def _prune(self, now: float) -> None:
        oldest = now - RECENT_S
        for second in [s for s in self.seconds if s < oldest]:
            del self.seconds[second]
        self.fine.prune(now)
        self.coarse.prune(now)
        first = self.fine.first_live(now)
        for bucket in [b for b in self._seen if b < first]:
            del self._seen[bucket]

    def _backfill_start(self, fh: io.FileIO, size: int) -> int:
        """The offset of the first line within the 24-hour window (approximately, by bisection)."""
        since = self._clock() - self.coarse.window - self.coarse.bucket
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

    # -- reporting --------------------------------------------------------------------------

    def rates(self, now: float, interval: float) -> tuple[float, list[float]]:
        """Requests per second over the last ``interval`` whole seconds, in all and by class 2xx..5xx."""
        span = max(1, round(interval))
        end = math.floor(now) - 1
        sums = [0] * 6
        for second in range(end - span + 1, end + 1):
            row = self.seconds.get(second)
            if row is not None:
                for i in range(6):
                    sums[i] += row[i]
        return sums[0] / span, [sums[i] / span for i in range(2, 6)]

    def uniques(self, now: float) -> tuple[int, int]:
        """Distinct clients in the last hour and the last 24 hours."""
        return round(self.fine.count(now)), round(self.coarse.count(now))

    # -- state ------------------------------------------------------------------------------

    def save(self) -> dict[str, object]:
        """JSON-safe state: offsets, counters, per-second counts, registers."""
        return {
            "path": str(self.path),
            "format": self.fmt,
            "follow": self.follower.save_state(),
            "total": self.total,
            "malformed": self.malformed,
            "seconds": {str(s): row for s, row in self.seconds.items()},
            "fine": self.fine.save(),
            "coarse": self.coarse.save(),
            "coarse_bucket": COARSE_BUCKET,
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
        seconds = state.get("seconds")
        if isinstance(seconds, dict):
            for key, row in seconds.items():
                valid = isinstance(row, list) and len(row) == 6 and all(isinstance(v, int) for v in row)
                if valid and key.lstrip("-").isdigit():
                    self.seconds[int(key)] = row
        if sketches:
            # Coarse sketches saved with another bucket size would be misplaced in time.
            names = ("fine", "coarse") if state.get("coarse_bucket") == COARSE_BUCKET else ("fine",)
            for name in names:
                data = state.get(name)
                if isinstance(data, dict):
                    getattr(self, name).load(data)
            self._seen.clear()


class RequestsCollector:
    """Request counts and rates from the access log; unique clients from it and the tarpit log."""

    name: ClassVar[str] = "requests"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("requests_total", MetricKind.COUNTER, "Requests in the access log since the agent began counting."),
        MetricSpec(
            "requests_per_s", MetricKind.GAUGE, "Requests per second over the last interval, by log time.", "1/s"
        ),
        MetricSpec(
            "requests_class_per_s", MetricKind.GAUGE, "Requests per second by status class.", "1/s", labels=("class",)
        ),
        MetricSpec("unique_ips_1h", MetricKind.GAUGE, "Distinct client addresses in the last hour (HyperLogLog)."),
        MetricSpec("unique_ips_24h", MetricKind.GAUGE, "Distinct client addresses in the last 24 hours (HyperLogLog)."),
        MetricSpec("tarpit_unique_ips_1h", MetricKind.GAUGE, "Distinct addresses in the tarpit log, last hour."),
        MetricSpec("tarpit_unique_ips_24h", MetricKind.GAUGE, "Distinct addresses in the tarpit log, last 24 hours."),
        MetricSpec(
            "log_lines_malformed_total", MetricKind.COUNTER, "Log lines that could not be parsed.", labels=("log",)
        ),
    )

    def __init__(
        self,
        cfg: RequestsSettings,
        *,
        interval: float,
        state_dir: Path | None = None,
        sketch_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        native: bool = True,
    ) -> None:
        self._interval = interval
        self._native = native
        self._state_dir = state_dir
        self._key = sketch_key
        self._clock = clock
        self.logs: dict[str, LogCounter] = {}
        if cfg.access_log is not None:
            self.logs["access"] = LogCounter(cfg.access_log, cfg.format, clock=clock, max_lines=cfg.max_lines_per_tick)
        if cfg.tarpit_log is not None:
            self.logs["tarpit"] = LogCounter(
                cfg.tarpit_log, cfg.tarpit_format, clock=clock, max_lines=cfg.max_lines_per_tick
            )
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._last_state: dict[str, object] = {}
        self._key_id: str | None = None

    @classmethod
    def implementation(cls) -> str:
        """Which log scanner this build runs, for ``agent collectors``."""
        if hll.native_available():
            return "log scan: C module"
        return "log scan: pure Python (C module not built)"

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestsCollector | None:
        """A collector for the configured logs, or ``None`` when no log is configured."""
        cfg = settings.collectors.requests
        if cfg.access_log is None and cfg.tarpit_log is None:
            return None
        return cls(cfg, interval=settings.interval, state_dir=settings.state_dir)

    async def collect(self) -> Sequence[Sample]:
        """Read what is new in the logs (bounded) and report counts, rates and uniques."""
        return await asyncio.to_thread(self.collect_blocking)

    def collect_blocking(self) -> list[Sample]:
        """:meth:`collect`'s work, in the calling thread."""
        if not self._lock.acquire(blocking=False):
            raise CollectorError("previous read still running", code="busy")
        try:
            self._ready()
            now = self._clock()
            try:
                for log in self.logs.values():
                    log.step(now)
            except PermissionError:
                raise CollectorError("log not readable", code="permission") from None
            except OSError:
                raise CollectorError("log read failed", code="io") from None
            return self._samples(now)
        finally:
            self._lock.release()

    def _samples(self, now: float) -> list[Sample]:
        samples: list[Sample] = []
        access = self.logs.get("access")
        if access is not None:
            per_s, by_class = access.rates(now, self._interval)
            one, day = access.uniques(now)
            samples += [
                Sample("requests_total", access.total),
                Sample("requests_per_s", per_s),
                *(
                    Sample.of("requests_class_per_s", rate, **{"class": cls})
                    for cls, rate in zip(CLASSES, by_class, strict=True)
                ),
                Sample("unique_ips_1h", one),
                Sample("unique_ips_24h", day),
            ]
        tarpit = self.logs.get("tarpit")
        if tarpit is not None:
            one, day = tarpit.uniques(now)
            samples += [Sample("tarpit_unique_ips_1h", one), Sample("tarpit_unique_ips_24h", day)]
        for name, log in self.logs.items():
            samples.append(Sample.of("log_lines_malformed_total", log.malformed, log=name))
        return samples

    def _ready(self) -> None:
        """Load the sketch key and apply restored state, once, in the worker thread."""
        if self._key_id is not None:
            return
        key = self._key
        if key is None and self._state_dir is not None:
            with contextlib.suppress(OSError):
                key = load_or_create_key(self._state_dir / KEY_FILE)
        # Without a durable key, counts are right within this process but restart afresh.
        hasher = hll.KeyedHasher(key if key is not None else os.urandom(32), native=self._native)
        self._key_id = hasher.key_id()
        for log in self.logs.values():
            log.hasher = hasher
        if self._pending is not None:
            self._apply_state(self._pending)
            self._pending = None

    def _apply_state(self, state: dict[str, Any]) -> None:
        same_key = state.get("key_id") == self._key_id
        logs = state.get("logs")
        if not isinstance(logs, dict):
            return
        for name, log in self.logs.items():
            saved = logs.get(name)
            if isinstance(saved, dict):
                log.load(saved, sketches=same_key)

    def save_state(self) -> dict[str, object]:
        """Offsets, counters and sketches: no address, no reversible hash."""
        if not self._lock.acquire(timeout=0.5):
            return self._last_state  # a long read is running: the previous snapshot will do
        try:
            if self._key_id is None:
                return dict(self._pending) if self._pending is not None else {}
            self._last_state = {
                "v": STATE_VERSION,
                "key_id": self._key_id,
                "logs": {name: log.save() for name, log in self.logs.items()},
            }
            return self._last_state
        finally:
            self._lock.release()

    def load_state(self, state: dict[str, object]) -> None:
        """Take saved state back; it is applied before the first read."""
        if state.get("v") != STATE_VERSION:
            return
        with self._lock:
            if self._key_id is None:
                self._pending = dict(state)
            else:
                self._apply_state(dict(state))

    async def aclose(self) -> None:
        """Close the followed files."""
        for log in self.logs.values():
            log.follower.close()
