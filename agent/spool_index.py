"""The spool's index: the ids of the spooled heartbeats, in order, with their sizes.

This is all the spool keeps in memory of what is on disk (bounded by
``spool.max_files``). Ids sort in the order heartbeats were made (UUIDv7 or
ULID), so oldest first is sorted order.

Removing an id from the middle of a sorted list is slow, so a removed id stays
in the list as *dead* (it is live while it has a size) until :meth:`compact`
drops the dead ones in one go. ``head`` skips the dead run at the front, where a
drain removes them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator

_UUID7 = re.compile(r"([0-9a-f]{8})-([0-9a-f]{4})-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
# Compact once this many dead ids are in the list and they outnumber the live ones.
_COMPACT_AFTER = 1024


class SpoolIndex:
    """Sorted heartbeat ids with their sizes in bytes; no I/O."""

    def __init__(self) -> None:
        self.ids: list[str] = []  # sorted; may hold dead ids
        self.sizes: dict[str, int] = {}  # the live ids
        self.bytes = 0
        self.head = 0  # ids before it are all dead

    def reset(self, found: Iterable[tuple[str, int]]) -> None:
        """Start over from ``found``, the (id, size) of every file in ``pending/``."""
        ordered = sorted(found)
        self.ids = [doc_id for doc_id, _ in ordered]
        self.sizes = dict(ordered)
        self.bytes = sum(self.sizes.values())
        self.head = 0

    def __len__(self) -> int:
        return len(self.sizes)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.sizes

    def live(self) -> Iterator[str]:
        """The live ids, oldest first."""
        ids, sizes = self.ids, self.sizes
        return (ids[i] for i in range(self.head, len(ids)) if ids[i] in sizes)

    def oldest(self) -> str | None:
        """The oldest live id."""
        return next(self.live(), None)

    def newest_first(self) -> Iterator[str]:
        """The live ids, newest first."""
        ids, sizes = self.ids, self.sizes
        return (ids[i] for i in range(len(ids) - 1, self.head - 1, -1) if ids[i] in sizes)

    def newest(self) -> str | None:
        """The newest live id."""
        return next(self.newest_first(), None)

    def above(self, low: str) -> int:
        """The position of the first id (live or dead) after ``low``."""
        return max(self.head, bisect.bisect_right(self.ids, low))

    def between(self, first: str, last: str) -> set[str]:
        """The live ids from ``first`` to ``last``, both included."""
        start, end = bisect.bisect_left(self.ids, first), bisect.bisect_right(self.ids, last)
        return {doc_id for doc_id in self.ids[start:end] if doc_id in self.sizes}

    def before(self, doc_id: str) -> str:
        """The id (live or dead) just before ``doc_id``; ``""`` when there is none."""
        i = bisect.bisect_left(self.ids, doc_id)
        return self.ids[i - 1] if i > 0 else ""

    def add(self, doc_id: str, size: int) -> None:
        """Index a heartbeat just stored (again, when it already was: its size is updated)."""
        if doc_id in self.sizes:
            self.bytes += size - self.sizes[doc_id]
            self.sizes[doc_id] = size
            return
        i = bisect.bisect_left(self.ids, doc_id)
        if i == len(self.ids) or self.ids[i] != doc_id:
            self.ids.insert(i, doc_id)
        self.head = min(self.head, i)
        self.sizes[doc_id] = size
        self.bytes += size

    def remove(self, doc_id: str) -> None:
        """Mark a live heartbeat dead (its file is gone or going)."""
        self.bytes -= self.sizes.pop(doc_id)
        ids, sizes = self.ids, self.sizes
        while self.head < len(ids) and ids[self.head] not in sizes:
            self.head += 1

    def compact(self) -> None:
        """Drop the dead ids from the list once there are many of them."""
        dead = len(self.ids) - len(self.sizes)
        if dead > _COMPACT_AFTER and dead > len(self.sizes):
            self.ids = [doc_id for doc_id in self.ids if doc_id in self.sizes]
            self.head = 0


def uuid7_seconds(doc_id: str) -> float | None:
    """When a heartbeat with a UUIDv7 id was made (Unix seconds); ``None`` for other ids."""
    match = _UUID7.fullmatch(doc_id)
    if match is None:
        return None
    return int(match.group(1) + match.group(2), 16) / 1000.0
