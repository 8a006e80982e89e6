"""The spool's per-sink cursors, and how they and the counters are saved in ``state.json``.

Each sink has its own cursor, as Telegraf keeps one buffer per output: a
receiver that is down neither holds back another nor makes it send twice. A
cursor is a low-water mark (every live id at or below it is done by that sink)
plus the set of ids above it that the sink has already acked or rejected: a sink
may ack a later heartbeat while an earlier one is still kept (half of a split
batch failed), and the earlier one must not be skipped. A heartbeat may be
deleted once every active sink's cursor is done with it.

A sink that only ever shows the newest heartbeat (the Pushgateway: a push
replaces the POP's whole group) is *newest-only*: every heartbeat older than the
newest spooled one is done for it, so its cursor never holds a file back and
never asks for a backlog; a crash at worst pushes the newest one again, so its
progress need not reach the disk before a file is deleted.

Cursors of sinks not active in this process (``agent enqueue``, or a sink
switched off) are *dormant*: kept and saved as they are, and still moved back
by a put of an older id, so the daemon does not take that heartbeat for done.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.spool_index import SpoolIndex

STATE_VERSION = 1
COUNTERS = ("dropped_total", "quarantined_total", "rejected_total")


@dataclass(slots=True)
class Cursor:
    """How far one sink has got: everything at or below ``low``, and the ids in ``ahead``."""

    low: str = ""
    ahead: set[str] = field(default_factory=set)

    def done(self, doc_id: str) -> bool:
        """Whether the sink has acked or rejected ``doc_id``."""
        return doc_id <= self.low or doc_id in self.ahead

    def copy(self) -> Cursor:
        """An independent copy."""
        return Cursor(self.low, set(self.ahead))

    def advance(self, index: SpoolIndex) -> None:
        """Move the low-water mark over ids that are done or gone; forget the ids it passed."""
        ids, sizes, ahead = index.ids, index.sizes, self.ahead
        i = bisect.bisect_right(ids, self.low)
        while i < len(ids):
            doc_id = ids[i]
            if doc_id in sizes and doc_id not in ahead:
                break
            self.low = doc_id
            ahead.discard(doc_id)
            i += 1

    def lowered(self, doc_id: str, index: SpoolIndex) -> Cursor:
        """This cursor with its mark moved below ``doc_id``, keeping every live id it had done."""
        if doc_id > self.low:
            return self
        return Cursor(index.before(doc_id), self.ahead | index.between(doc_id, self.low))


class Cursors:
    """The cursors of the active sinks, and the dormant ones kept for later."""

    def __init__(self, sinks: Sequence[str], newest_only: Collection[str] = ()) -> None:
        self.sinks = tuple(dict.fromkeys(sinks))
        self.newest_only = frozenset(newest_only)
        self.active: dict[str, Cursor] = {}
        self.dormant: dict[str, Cursor] = {}
        self.saved_ahead: set[str] = set()  # ids state.json says some sink is done with

    def load(self, saved: Mapping[str, Cursor]) -> None:
        """Take the cursors read from ``state.json``; a sink never seen before starts from the oldest heartbeat."""
        self.active = {sink: saved.get(sink, Cursor()) for sink in self.sinks}
        self.dormant = {sink: cursor for sink, cursor in saved.items() if sink not in self.active}
        self.saved_ahead = {doc_id for cursor in saved.values() for doc_id in cursor.ahead}

    def every(self) -> dict[str, Cursor]:
        """Every cursor, active and dormant, by sink."""
        return {**self.dormant, **self.active}

    def cursor(self, sink: str) -> Cursor:
        """The cursor of an active sink; ``ValueError`` for any other name."""
        try:
            return self.active[sink]
        except KeyError:
            raise ValueError(f"sink {sink!r} is not active in this spool") from None

    def done_by_all(self, doc_id: str) -> bool:
        """Whether every active sink is done with ``doc_id`` (never, with no active sink)."""
        return bool(self.active) and all(cursor.done(doc_id) for cursor in self.active.values())

    def settle(self, sink: str, ids: Iterable[str], index: SpoolIndex) -> None:
        """Record that ``sink`` is done with ``ids``."""
        cursor = self.cursor(sink).copy()
        cursor.ahead.update(ids)
        cursor.advance(index)
        self.active[sink] = cursor

    def advance(self, index: SpoolIndex) -> None:
        """Move every cursor over what is done or gone."""
        for cursor in (*self.active.values(), *self.dormant.values()):
            cursor.advance(index)

    def rebase(self, index: SpoolIndex) -> None:
        """Fit every cursor to an index just built from the disk."""
        for cursor in (*self.active.values(), *self.dormant.values()):
            cursor.advance(index)
            cursor.ahead.intersection_update(index.sizes)

    def forget(self, doc_id: str) -> None:
        """Drop a heartbeat that left the spool from every cursor."""
        for cursor in (*self.active.values(), *self.dormant.values()):
            cursor.ahead.discard(doc_id)

    def passed(self, doc_id: str, index: SpoolIndex) -> bool:
        """Whether a heartbeat about to be spooled is one some cursor, in memory or on disk, takes for done.

        That happens when it is older than what a sink has passed (enqueued late,
        or the clock stepped back), or spooled again after delivery while
        ``state.json`` still names it.
        """
        if doc_id in index.sizes:
            return False
        if doc_id in self.saved_ahead:
            return True
        return any(doc_id <= c.low for c in self.active.values()) or any(doc_id <= c.low for c in self.dormant.values())

    def lowered(self, doc_id: str, index: SpoolIndex) -> dict[str, Cursor]:
        """Every cursor moved back below ``doc_id``: what to save before storing it, then :meth:`adopt`."""
        return {sink: cursor.lowered(doc_id, index) for sink, cursor in self.every().items()}

    def adopt(self, cursors: Mapping[str, Cursor]) -> None:
        """Take ``cursors`` (from :meth:`lowered`), once they are saved."""
        self.active = {sink: cursors[sink] for sink in self.active}
        self.dormant = {sink: cursors[sink] for sink in self.dormant}

    def nothing_done_once_gone(self, gone: set[str], index: SpoolIndex) -> bool:
        """Whether, once ``gone`` are deleted, no sink is done with any heartbeat still spooled.

        Then the deletions are the whole record, and ``state.json`` need not be
        rewritten. Newest-only sinks do not count: their progress is rebuilt from
        the files at open, and losing it costs one push again.
        """
        first = next((doc_id for doc_id in index.live() if doc_id not in gone), None)
        return all(
            cursor.ahead <= gone and (first is None or first > cursor.low)
            for sink, cursor in self.active.items()
            if sink not in self.newest_only
        )

    def supersede(self, index: SpoolIndex) -> set[str]:
        """Move each newest-only cursor up to the newest heartbeat; the live ids that newly passed.

        Only the newest heartbeat is left for such a sink to send: pushing an
        older one would show nothing that the next push does not overwrite.
        """
        if not self.newest_only:
            return set()
        newest = index.newest()
        if newest is None:
            return set()
        floor = index.before(newest)
        passed: set[str] = set()
        for sink in self.newest_only & self.active.keys():
            cursor = self.active[sink]
            if cursor.low < floor:
                passed |= index.between(cursor.low, floor) - cursor.ahead
                cursor.low = floor
                cursor.ahead = {doc_id for doc_id in cursor.ahead if doc_id > floor}
        return passed


def encode_state(counters: Mapping[str, int], cursors: Mapping[str, Cursor]) -> bytes:
    """``state.json``'s bytes."""
    state = {
        "version": STATE_VERSION,
        "counters": dict(counters),
        "cursors": {sink: {"low": c.low, "ahead": sorted(c.ahead)} for sink, c in sorted(cursors.items())},
    }
    return json.dumps(state, separators=(",", ":")).encode()


def decode_state(raw: bytes | None) -> tuple[dict[str, int], dict[str, Cursor]]:
    """The counters and cursors in ``state.json`` (none when there is none); ``ValueError`` if it is damaged."""
    if raw is None:
        return dict.fromkeys(COUNTERS, 0), {}
    try:
        state: Any = json.loads(raw)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError("state version")
        saved_counters = state["counters"]
        counters = {name: saved_counters.get(name, 0) for name in COUNTERS}
        if not all(isinstance(value, int) for value in counters.values()):
            raise ValueError("counters")
        cursors = {}
        for sink, cursor in state["cursors"].items():
            low, ahead = cursor["low"], cursor["ahead"]
            if not isinstance(low, str) or not isinstance(ahead, list) or not all(isinstance(x, str) for x in ahead):
                raise ValueError("cursor")
            cursors[sink] = Cursor(low, set(ahead))
    except (TypeError, KeyError, AttributeError, RecursionError):
        raise ValueError("state") from None
    return {name: int(value) for name, value in counters.items()}, cursors
