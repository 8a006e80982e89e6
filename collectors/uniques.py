"""Unique client counts of one log: HyperLogLog windows over the last hour and the last 24 hours.

``unique_ips_1h`` / ``unique_ips_24h`` are rings of HyperLogLog sketches
(:mod:`collectors.hll`, 8 KiB each) in 10-minute and 4-hour buckets of log time:
each count spans the window plus at most one bucket, so ``unique_ips_1h`` covers
between 60 and 70 minutes and ``unique_ips_24h`` between 24 and 28 hours. The
bucket sizes are what keeps each window at most 7 sketches, under 64 KiB.

The work per line is done by built-ins: a chunk's addresses arrive as one list,
the ``set`` of their ``hash()`` holds each distinct address once, and a set
difference against the hashes already counted in that 10-minute bucket leaves
the few that are new there. Only an address this process has never met is
normalised and hashed with BLAKE2b, all such addresses of a chunk in one batch
(:meth:`collectors.hll.KeyedHasher.updates_of`); the register update it causes is
then remembered under its ``hash()``.

Privacy: addresses never outlive the chunk they were read in. After it they are
known only by Python's ``hash()``, a SipHash keyed at random per process and never
written, in two bounded tables (:data:`CACHE_CAP`, :data:`SEEN_CAP`), and by the
register update they cause. The registers are hashed under a sketch key random
per POP install, kept 0600 in the state directory (:func:`load_or_create_key`): a
per-process key would make a restarted agent count each client of the last 24
hours a second time. What is saved is registers, never an address or a
reversible hash.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Collection, Mapping
from itertools import compress, repeat
from pathlib import Path

from agent import atomic_file
from agent.sample import JsonObject
from collectors import hll

KEY_FILE = "requests-sketch.key"
FINE_BUCKET = 600
COARSE_BUCKET = 4 * 3600
CACHE_CAP = 1 << 16  # hash(token) -> register update
SEEN_CAP = 1 << 16  # hash(token) already counted, per fine bucket (the last three buckets)
SEEN_BUCKETS = 3


def load_or_create_key(path: Path) -> bytes:
    """The POP's sketch key: 32 random bytes in a 0600 file, created on first use."""
    with contextlib.suppress(FileNotFoundError):
        key = path.read_bytes()
        if len(key) == 32:
            return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        atomic_file.replace(path, os.urandom(32))  # damaged: a new key (the old sketches were unreadable anyway)
    else:
        atomic_file.create(path, os.urandom(32))  # of two processes creating it at once, one key wins
    key = path.read_bytes()
    if len(key) != 32:
        raise OSError("sketch key file is damaged")
    return key


class UniqueWindows:
    """The 1-hour and 24-hour distinct-address windows of one log."""

    def __init__(self, *, cache_cap: int = CACHE_CAP, seen_cap: int = SEEN_CAP) -> None:
        self._cache_cap = cache_cap
        self._seen_cap = seen_cap
        self.fine = hll.WindowedSketch(3600, FINE_BUCKET)
        self.coarse = hll.WindowedSketch(86_400, COARSE_BUCKET)
        self.hasher: hll.KeyedHasher | None = None  # set once the sketch key is loaded
        self._cache: dict[int, int] = {}  # hash(token) -> register update, or 0 for no address
        self._seen: dict[int, set[int]] = {}  # fine bucket -> hash(token) already counted there
        self._pending: dict[int, bytearray] = {}  # fine bucket -> registers gathered since the last flush

    @staticmethod
    def bucket_of(when: float, now: float) -> int:
        """The 10-minute bucket a line stamped ``when`` counts in (a stamp in the future counts now)."""
        return int(min(when, now) // FINE_BUCKET)

    def add(self, tokens: Collection[bytes], bucket: int, now: float) -> None:
        """Count the addresses among ``tokens`` (one chunk's, or a set of them) in 10-minute ``bucket``."""
        if self.hasher is None or not tokens or bucket * FINE_BUCKET // COARSE_BUCKET < self.coarse.first_live(now):
            return
        seen = self._seen.get(bucket)
        if seen is None:
            seen = self._seen[bucket] = set()
            for old in sorted(self._seen)[:-SEEN_BUCKETS]:
                del self._seen[old]
        # The bucket's seen hashes filter first: most addresses of a busy log were met earlier in the
        # bucket, and a probe of the larger cache costs more (its values are touched too). The hashes
        # are taken in the tokens' order, as they lie in memory; their set is the chunk's distinct clients.
        fresh = list(set(map(hash, tokens)) - seen)
        if not fresh:
            return
        if len(seen) < self._seen_cap:
            seen.update(fresh)
        cached = list(map(self._cache.get, fresh))
        registers = self._pending.get(bucket)
        if registers is None:
            registers = self._pending[bucket] = bytearray(hll.M)
        if None in cached:
            missing = set(compress(fresh, map(operator.is_, cached, repeat(None))))
            self._learn(list(set(compress(tokens, map(missing.__contains__, map(hash, tokens))))), registers)
        hll.apply_updates(registers, filter(None, cached))  # None: just learnt; 0: no address

    def _learn(self, missing: list[bytes], registers: bytearray) -> None:
        """Hash the addresses ``missing`` from the cache, cache their updates and apply them."""
        assert self.hasher is not None
        cache = self._cache
        if len(cache) + len(missing) > self._cache_cap:
            cache.clear()  # what was cached of this chunk is applied all the same
        learnt, updates = self.hasher.updates_of(missing)
        cache.update(zip(map(hash, learnt), updates, strict=True))
        hll.apply_updates(registers, filter(None, updates))

    def flush(self, now: float) -> None:
        """Merge the registers gathered since the last flush into the sketches, each sketch once."""
        first_fine = self.fine.first_live(now)
        for bucket, registers in sorted(self._pending.items()):
            # The coarse sketch is the union of its 10-minute ones.
            if bucket >= first_fine:
                self.fine.absorb(bucket, registers)
            self.coarse.absorb(bucket * FINE_BUCKET // COARSE_BUCKET, registers)
        self._pending.clear()

    def prune(self, now: float) -> None:
        """Drop the buckets that left the windows."""
        self.fine.prune(now)
        self.coarse.prune(now)
        first = self.fine.first_live(now)
        for bucket in [b for b in self._seen if b < first]:
            del self._seen[bucket]

    def counts(self, now: float) -> tuple[int, int]:
        """Distinct clients in the last hour and the last 24 hours."""
        return round(self.fine.count(now)), round(self.coarse.count(now))

    def save(self) -> JsonObject:
        """The sketches as JSON-safe data."""
        return {"fine": self.fine.save(), "coarse": self.coarse.save(), "coarse_bucket": COARSE_BUCKET}

    def load(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`save`'s sketches (only ever under the key they were built with)."""
        # Coarse sketches saved with another bucket size would be misplaced in time.
        rings = [("fine", self.fine)]
        if state.get("coarse_bucket") == COARSE_BUCKET:
            rings.append(("coarse", self.coarse))
        for name, ring in rings:
            data = state.get(name)
            if isinstance(data, dict):
                ring.load(data)
        self._seen.clear()
