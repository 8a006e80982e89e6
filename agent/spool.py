"""The disk spool: one JSON file per heartbeat, deleted once every sink is done with it.

:class:`Spool` is what the rest of the agent uses; it holds three parts, none
of which knows the spool or the store (only the cursors read the index):

- :mod:`agent.spool_store`: the directories and files (layout, atomic writes,
  quarantine, ``rejected/``, the lock, ``state.json``'s bytes);
- :mod:`agent.spool_index`: the ids and sizes of the spooled heartbeats (bounded
  by ``max_files``), in memory beside the last stored ones (``RECENT_BYTES``);
- :mod:`agent.spool_cursors`: one cursor per sink (a newest-only sink, the
  Pushgateway, is only ever handed the newest heartbeat and holds none back),
  and ``state.json``'s format.

The rules that tie them together are here: the cursors are written to disk
before any file is deleted, so an ack never comes back after a crash
(:meth:`Spool.open` deletes whatever the saved cursors say every sink is done
with); the bounds drop the oldest heartbeats; a file is checked when it is read
from disk (by :meth:`Spool.batch` or :meth:`Spool.iter_pending`): one that is
not a JSON object whose ``"id"`` matches its name is quarantined then; names
and empty files are checked when the spool opens.

Blocking calls only: the daemon makes them on its file thread. Methods take an
internal lock, so puts and drains from different threads do not interleave.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from agent.atomic_file import SYSTEM, FileOps
from agent.errors import SpoolError
from agent.sample import Pending
from agent.settings import SpoolSettings
from agent.spool_cursors import COUNTERS, Cursor, Cursors, decode_state, encode_state
from agent.spool_index import SpoolIndex, uuid7_seconds
from agent.spool_io import spool_error
from agent.spool_store import ID_PATTERN, SpoolFiles, as_heartbeat

SINK_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
REMOVE_AT_ONCE = 16  # files settled together that are removed at once (a flush's few) rather than through the trash


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What the spool holds now, and what it has lost since it was first created."""

    pending: int
    bytes: int
    oldest_age_s: float | None
    dropped_total: int
    quarantined_total: int
    rejected_total: int
    taken_at: float = field(default=0.0, compare=False)  # time.monotonic() when measured: the later one is current


class Spool:
    """Heartbeats on disk, read oldest first by each sink, deleted once all sinks are done.

    ``sinks`` names the active sinks; with none (telemetry off) nothing is deleted
    except by the bounds. ``newest_only`` names those of them that only ever
    send the newest heartbeat (see :mod:`agent.spool_cursors`). ``fsync=False``
    is for tests and benchmarks only. ``ops`` is where tests inject failing
    system calls.
    """

    def __init__(
        self,
        root: Path,
        settings: SpoolSettings,
        *,
        sinks: Sequence[str] = (),
        newest_only: Sequence[str] = (),
        fsync: bool = True,
        ops: FileOps | None = None,
    ) -> None:
        for sink in sinks:
            if not SINK_PATTERN.fullmatch(sink):
                raise ValueError(f"bad sink name {sink!r}")
        if not set(newest_only) <= set(sinks):
            raise ValueError("a newest-only sink must be one of the sinks")
        self.root = Path(root)
        self._settings = settings
        self._sink_names = tuple(sinks)
        self._newest_only = tuple(newest_only)
        self._files = SpoolFiles(self.root, fsync=fsync, ops=ops or SYSTEM)
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._index = SpoolIndex()
        self._cursors = Cursors(self._sink_names, self._newest_only)
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._readonly = False
        self._is_open = False
        self._dirty = False  # state.json is behind what is in memory

    # -- lifecycle -----------------------------------------------------------

    def open(self, *, readonly: bool = False) -> None:
        """Create the directories, clean ``tmp/``, build the index and load cursors and counters.

        A writer holds an exclusive lock on the spool; a second writer gets
        ``SpoolError(code="locked")``. ``readonly`` (for ``status`` and ``export``
        beside a running daemon) takes no lock, moves nothing and writes nothing.
        """
        with self._lock:
            if self._is_open:
                return
            try:
                if readonly:
                    self._readonly = True
                    self._load_state()
                    self._scan_pending()
                else:
                    self._open_writer()
            except OSError as exc:
                self.close()
                if isinstance(exc, SpoolError):
                    raise
                raise spool_error(exc) from None
            self._is_open = True

    def _open_writer(self) -> None:
        quarantined = self._files.open_writer()
        changed = self._load_state()
        self._counters["quarantined_total"] += quarantined
        changed |= bool(quarantined) | self._scan_pending()
        self._cursors.supersede(self._index)
        finished = [doc_id for doc_id in self._index.live() if self._cursors.done_by_all(doc_id)]
        if finished:
            self._delete(finished)
        self._cursors.advance(self._index)
        changed |= self._enforce_bounds()
        if changed or not self._files.has_state():
            self._save_soon()

    def close(self) -> None:
        """Release the lock and the directory descriptors; the spool may be opened again."""
        with self._lock:
            if self._dirty and not self._readonly:
                self._save_soon()
            self._files.close()
            self._reset()

    def __enter__(self) -> Spool:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the interface -------------------------------------------------------

    def put(self, doc_id: str, raw: bytes) -> None:
        """Store one heartbeat durably, then drop the oldest while over the bounds.

        ``raw`` is stored as given; it should be a JSON object whose ``"id"`` is
        ``doc_id`` (anything else is quarantined when read). Raises
        :class:`SpoolError` with code ``enospc``, ``eacces``, ``erofs`` or ``io``
        when the heartbeat could not be stored; nothing is half-written then, and
        the next put works again once the cause is gone.
        """
        if not ID_PATTERN.fullmatch(doc_id):
            raise ValueError("bad heartbeat id")
        with self._lock:
            self._check_writable()
            if len(raw) > self._settings.max_bytes:
                self._counters["dropped_total"] += 1
                self._save_soon()
                return
            if self._cursors.passed(doc_id, self._index):
                # Correct the cursors on disk first, so a crash right after the
                # rename cannot take the new heartbeat for done.
                lowered = self._cursors.lowered(doc_id, self._index)
                self._save_state(lowered)
                self._cursors.adopt(lowered)
            self._files.store(doc_id, raw)
            self._index.add(doc_id, len(raw))
            superseded = self._cursors.supersede(self._index)  # a newest-only sink held them
            if superseded and (finished := sorted(x for x in superseded if self._cursors.done_by_all(x))):
                self._delete(finished)
            if self._enforce_bounds() or self._dirty:
                self._save_soon()
            self._index.compact()

    def batch(self, sink: str, max_count: int, max_bytes: int) -> list[Pending]:
        """The oldest heartbeats ``sink`` has neither acked nor rejected, at most ``max_count``.

        Their total size stays within ``max_bytes``, except that the first is
        always included so an oversized heartbeat still reaches the sink (which
        can then reject it). A newest-only sink gets the newest heartbeat, unless
        it is done with it. Files that are not a valid heartbeat are quarantined
        on the way.
        """
        with self._lock:
            self._check_open()
            cursor = self._cursors.cursor(sink)
            if sink in self._newest_only:
                return self._newest(cursor)
            ids, sizes = self._index.ids, self._index.sizes
            out: list[Pending] = []
            total = 0
            quarantined = self._counters["quarantined_total"]
            i = self._index.above(cursor.low)
            while i < len(ids) and len(out) < max_count:
                doc_id = ids[i]
                i += 1
                if doc_id not in sizes or doc_id in cursor.ahead:
                    continue
                if out and total + sizes[doc_id] > max_bytes:
                    break
                pending = self._read(doc_id)
                if pending is not None:
                    out.append(pending)
                    total += len(pending.raw)
            if self._counters["quarantined_total"] != quarantined and not self._readonly:
                self._save_soon()
            return out

    def _newest(self, cursor: Cursor) -> list[Pending]:
        for doc_id in self._index.newest_first():
            if cursor.done(doc_id):
                break
            if (pending := self._read(doc_id)) is not None:
                return [pending]
        return []

    def settle(self, sink: str, done: Iterable[str], rejected: Mapping[str, str]) -> None:
        """Record what ``sink`` made of a batch; delete files that every active sink is done with.

        ``done`` are acked ids; ``rejected`` maps ids the receiver refused as
        malformed to a fixed reason code (anything else is stored as
        ``"invalid"``); those are linked into ``rejected/`` with a reason sidecar.
        Ids no longer spooled are ignored. The cursors reach the disk before any
        file is deleted, unless the deletions alone record everything. On a full
        or failing disk the settlement still holds in memory and the files every
        sink is done with are still deleted (that is how space comes back); the
        cursors are saved again on the next call, and a crash before that only
        means some heartbeats are sent twice.
        """
        with self._lock:
            self._check_writable()
            self._cursors.cursor(sink)  # a sink that is not active is a caller's bug, even with nothing to settle
            index = self._index
            refused = {doc_id: reason for doc_id, reason in rejected.items() if doc_id in index}
            settled = [doc_id for doc_id in done if doc_id in index and doc_id not in refused]
            settled.extend(refused)
            if not settled:
                return
            with contextlib.suppress(OSError):
                # Best effort: the copy is for a human to read, not worth keeping a full disk full.
                self._files.set_aside_rejected(sink, refused)
            self._cursors.settle(sink, settled, index)
            self._counters["rejected_total"] += len(refused)
            finished = [doc_id for doc_id in settled if self._cursors.done_by_all(doc_id)]
            # When, once these files are gone, no sink is done with any file still
            # spooled, the deletions are the whole record and state.json (whose
            # marks then cover only files that are gone) need not be rewritten:
            # that saves two fsyncs per batch in the usual in-order drain.
            if refused or self._dirty or not self._cursors.nothing_done_once_gone(set(finished), index):
                self._save_soon()
            if finished:
                self._delete(finished)
                if any(doc_id in index for doc_id in finished):
                    self._save_soon()  # a file could not be removed: its done marks must be kept
                self._cursors.advance(index)
            index.compact()

    def newest_id(self) -> str:
        """The id of the newest spooled heartbeat, or ``""`` when the spool is empty."""
        with self._lock:
            return self._index.newest() or ""

    def stats(self, now: float | None = None) -> SpoolStats:
        """Depth, bytes and the age of the oldest heartbeat (by its UUIDv7 time, else its mtime)."""
        with self._lock:
            oldest = self._index.oldest()
            age: float | None = None
            if oldest is not None:
                if (born := uuid7_seconds(oldest)) is None:
                    born = self._files.born(oldest)
                if born is not None:
                    age = max(0.0, (time.time() if now is None else now) - born)
            counters = {name: self._counters[name] for name in COUNTERS}
            return SpoolStats(len(self._index), self._index.bytes, age, **counters, taken_at=time.monotonic())

    def iter_pending(self) -> Iterator[Pending]:
        """Every spooled heartbeat, oldest first, read one file at a time."""
        with self._lock:
            self._check_open()
            ids = list(self._index.live())
        for doc_id in ids:
            with self._lock:
                pending = self._read(doc_id) if doc_id in self._index else None
            if pending is not None:
                yield pending

    def prune_aside(self) -> None:
        """Apply the age, size and count bounds of ``quarantine/`` and ``rejected/`` (blocking; once a minute)."""
        with self._lock:
            self._check_writable()
            with contextlib.suppress(OSError):
                self._files.prune_aside()

    # -- keeping index, cursors and files in step -----------------------------

    def _forget(self, doc_id: str) -> None:
        self._index.remove(doc_id)
        self._cursors.forget(doc_id)

    def _enforce_bounds(self) -> bool:
        """Drop the oldest heartbeats while over either bound; ``True`` if any was dropped."""
        count, size = len(self._index), self._index.bytes
        if count <= self._settings.max_files and size <= self._settings.max_bytes:
            return False
        drop: list[str] = []
        live = self._index.live()
        while count > self._settings.max_files or size > self._settings.max_bytes:
            doc_id = next(live)
            drop.append(doc_id)
            count -= 1
            size -= self._index.sizes[doc_id]
        for doc_id in drop:
            self._files.discard(doc_id)
            self._forget(doc_id)
        if drop:
            self._files.reclaim()
        self._counters["dropped_total"] += len(drop)
        # The drops need no directory fsync of their own: a dropped file that
        # comes back after a power cut is dropped again at the next open.
        return bool(drop)

    def _delete(self, ids: list[str]) -> None:
        # A flush's few files are removed at once (waking the trash's thread costs more CPU);
        # a batch goes through the trash, so that its removals never hold up the drain.
        at_once = len(ids) <= REMOVE_AT_ONCE
        for doc_id in ids:
            if self._files.remove(doc_id) if at_once else self._files.discard(doc_id):
                self._forget(doc_id)
        # One directory fsync per batch, not per file. If it fails the acks are
        # already in state.json, and open() deletes the files again.
        with contextlib.suppress(OSError):
            self._files.sync_pending()
        if not at_once:
            self._files.reclaim()

    def _scan_pending(self) -> bool:
        """Index ``pending/``; quarantine what cannot be a heartbeat. ``True`` if any was."""
        found, quarantined = self._files.scan(readonly=self._readonly)
        self._counters["quarantined_total"] += quarantined
        self._index.reset(found)
        self._cursors.rebase(self._index)
        return bool(quarantined)

    def _read(self, doc_id: str) -> Pending | None:
        """A live heartbeat as read from disk; ``None`` (and quarantined) if it is not one."""
        raw = self._files.read(doc_id, self._index.sizes[doc_id])
        if raw is None:
            self._forget(doc_id)
            return None
        if (pending := as_heartbeat(doc_id, raw)) is not None:
            return pending
        if not self._readonly:
            self._counters["quarantined_total"] += self._files.quarantine_pending(doc_id)
            self._forget(doc_id)
        return None

    def _load_state(self) -> bool:
        """Read ``state.json``; a damaged one is quarantined (``True``) and every sink starts over."""
        try:
            self._counters, saved = decode_state(self._files.read_state())
        except ValueError:
            self._counters, saved = dict.fromkeys(COUNTERS, 0), {}
            if not self._readonly:
                self._counters["quarantined_total"] += self._files.quarantine_state()
            self._cursors.load(saved)
            return True
        self._cursors.load(saved)
        return False

    def _save_soon(self) -> None:
        """Save cursors and counters now if the disk lets us, else on a later call."""
        try:
            self._save_state(self._cursors.every())
        except SpoolError:
            self._dirty = True
        else:
            self._dirty = False

    def _save_state(self, cursors: Mapping[str, Cursor]) -> None:
        self._files.write_state(encode_state(self._counters, cursors))
        self._cursors.saved_ahead = {doc_id for cursor in cursors.values() for doc_id in cursor.ahead}

    def _check_open(self) -> None:
        if not self._is_open:
            raise SpoolError("spool not open", code="closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise SpoolError("spool opened read-only", code="readonly")
