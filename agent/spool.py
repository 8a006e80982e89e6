"""The disk spool: one JSON file per heartbeat, deleted once every sink is done with it.

Layout under ``root`` (``<state_dir>/spool``)::

    pending/<id>.json          heartbeats not yet done by every active sink
    tmp/                       temporary files, renamed into place when complete
    trash/                     settled files, removed by a background thread
    quarantine/                files that were not a heartbeat (never parsed again)
    rejected/<id>.json         heartbeats a receiver refused as malformed,
    rejected/<id>.reason.json  with {"sink": ..., "reason": "<fixed code>"}; one
                               the scrubber refused keeps only this sidecar
                               (both directories bounded: see agent/aside.py)
    state.json                 per-sink cursors and the counters
    lock                       flock held by the one process that writes

Each sink has its own cursor, so a receiver that is down neither holds back
another nor makes it send twice. A cursor is a low-water mark (every live id at
or below it is done by that sink) plus the set of ids above it that the sink has
already acked or rejected: a sink may ack a later heartbeat while an earlier one
is still kept (half of a split batch failed), and the earlier one must not be
skipped. The cursors are written to disk before any file is deleted, so an ack
never comes back after a crash: :meth:`Spool.open` deletes whatever the saved
cursors say every sink is done with.

Only ids are kept in memory (a sorted list, bounded by ``max_files``). A file is
checked when it is read (by :meth:`Spool.batch` or :meth:`Spool.iter_pending`):
one that is not a JSON object whose ``"id"`` matches its name is quarantined then;
names and empty files are checked when the spool opens.

Blocking calls only: the runner goes through ``asyncio.to_thread``. Methods take
an internal lock, so puts and drains from different threads do not interleave.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from agent import aside
from agent.errors import SpoolError
from agent.sample import Pending
from agent.settings import SpoolSettings
from agent.spool_io import FileOps, Reclaimer, error_code, open_dir, replace_atomically, spool_error, unlink_quietly

ID_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,79}")
SINK_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
REASON_PATTERN = re.compile(r"[a-z0-9_]{1,32}")
_UUID7 = re.compile(r"([0-9a-f]{8})-([0-9a-f]{4})-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
STATE_VERSION = 1
_COUNTERS = ("dropped_total", "quarantined_total", "rejected_total")


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What the spool holds now, and what it has lost since it was first created."""

    pending: int
    bytes: int
    oldest_age_s: float | None
    dropped_total: int
    quarantined_total: int
    rejected_total: int


@dataclass(slots=True)
class _Cursor:
    low: str = ""
    ahead: set[str] = field(default_factory=set)

    def done(self, doc_id: str) -> bool:
        return doc_id <= self.low or doc_id in self.ahead

    def copy(self) -> _Cursor:
        return _Cursor(self.low, set(self.ahead))

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "ahead": sorted(self.ahead)}


class Spool:
    """Heartbeats on disk, read oldest first by each sink, deleted once all sinks are done.

    ``sinks`` names the active sinks; with none (telemetry off) nothing is deleted
    except by the bounds. ``fsync=False`` is for tests and benchmarks only.
    ``ops`` is where tests inject failing system calls.
    """

    def __init__(
        self,
        root: Path,
        settings: SpoolSettings,
        *,
        sinks: Sequence[str] = (),
        fsync: bool = True,
        ops: FileOps | None = None,
    ) -> None:
        for sink in sinks:
            if not SINK_PATTERN.fullmatch(sink):
                raise ValueError(f"bad sink name {sink!r}")
        self.root = Path(root)
        self._settings = settings
        self._sink_names = tuple(dict.fromkeys(sinks))
        self._fsync = fsync
        self._ops = ops or FileOps()
        self._lock = threading.RLock()
        self._pending = str(self.root / "pending")
        self._tmp = str(self.root / "tmp")
        self._trash = str(self.root / "trash")
        self._reclaimer = Reclaimer(self._trash)
        self._quarantine = str(self.root / "quarantine")
        self._rejected = str(self.root / "rejected")
        self._state_path = str(self.root / "state.json")
        self._reset()

    def _reset(self) -> None:
        # _ids is sorted and may hold dead ids (deleted, not yet compacted away);
        # an id is live when it is in _sizes.
        self._ids: list[str] = []
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._head = 0
        self._cursors: dict[str, _Cursor] = {}
        # Cursors of sinks not active in this process (``agent enqueue``, or a sink
        # switched off): kept and saved as they are, and still moved back by a put
        # of an older id, so the daemon does not take that heartbeat for done.
        self._dormant: dict[str, _Cursor] = {}
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._aside = {"quarantine": 0, "rejected": 0}
        self._readonly = False
        self._is_open = False
        self._lock_fd: int | None = None
        self._dir_fds: dict[str, int] = {}
        self._dirty = False
        self._saved_ahead: set[str] = set()  # ids state.json says some sink is done with

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
        for path in (self.root, self._pending, self._tmp, self._trash, self._quarantine, self._rejected):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self._take_lock()
        self._reclaimer.start()
        for path in (str(self.root), self._pending, self._trash, self._rejected):
            self._dir_fds[path] = open_dir(path)
        for entry in os.scandir(self._tmp):
            if entry.is_dir(follow_symlinks=False):
                self._quarantine_path(entry.path, entry.name)
            else:
                unlink_quietly(entry.path)
        self._aside["quarantine"] = aside.prune(self._quarantine, grouped=False)
        self._aside["rejected"] = aside.prune(self._rejected, grouped=True)
        changed = self._load_state()
        changed |= self._scan_pending()
        finished = [doc_id for doc_id in self._live() if self._done_by_all(doc_id)]
        if finished:
            self._delete(finished)
        for cursor in self._cursors.values():
            self._advance(cursor)
        changed |= self._enforce_bounds()
        if changed or not os.path.exists(self._state_path):
            self._save_soon()

    def _take_lock(self) -> None:
        fd = os.open(str(self.root / "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError("spool locked", code="locked") from None
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock and the directory descriptors; the spool may be opened again."""
        with self._lock:
            if self._dirty and not self._readonly:
                self._save_soon()
            self._reclaimer.stop()
            for fd in self._dir_fds.values():
                os.close(fd)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
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
            every = self._cursors | self._dormant
            if doc_id not in self._sizes and (
                doc_id in self._saved_ahead or any(doc_id <= c.low for c in every.values())
            ):
                # Older than what a sink has passed (enqueued late, or the clock
                # stepped back), or spooled again after delivery while state.json
                # still names it: correct the cursors on disk first, so a crash
                # right after the rename cannot take it for done.
                lowered = {sink: self._lowered(c, doc_id) for sink, c in every.items()}
                cursors = {sink: lowered[sink] for sink in self._cursors}
                self._dormant = {sink: lowered[sink] for sink in self._dormant}
                self._save_state(cursors, self._counters)
                self._cursors = cursors
            try:
                self._store(doc_id, raw)
            except OSError as exc:
                # Settled files may still wait in the trash: free them now rather than fail.
                if error_code(exc) != "enospc" or not self._empty_trash():
                    raise spool_error(exc) from None
                try:
                    self._store(doc_id, raw)
                except OSError as again:
                    raise spool_error(again) from None
            self._index_add(doc_id, len(raw))
            if self._enforce_bounds() or self._dirty:
                self._save_soon()
            self._compact()

    def _store(self, doc_id: str, raw: bytes) -> None:
        name = f"{doc_id}.json"
        final = os.path.join(self._pending, name)
        replace_atomically(self._ops, os.path.join(self._tmp, name), final, raw, fsync=self._fsync)
        try:
            self._sync_dir(self._pending)
        except OSError:
            unlink_quietly(final)
            raise

    def _empty_trash(self) -> bool:
        """Remove some of the trash now (enough room for a heartbeat); ``True`` if anything was."""
        with os.scandir(self._trash) as entries:
            names = [entry.path for _, entry in zip(range(256), entries, strict=False)]
        for path in names:
            unlink_quietly(path)
        return bool(names)

    def batch(self, sink: str, max_count: int, max_bytes: int) -> list[Pending]:
        """The oldest heartbeats ``sink`` has neither acked nor rejected, at most ``max_count``.

        Their total size stays within ``max_bytes``, except that the first is
        always included so an oversized heartbeat still reaches the sink (which
        can then reject it). Files that are not a valid heartbeat are quarantined
        on the way.
        """
        with self._lock:
            self._check_open()
            cursor = self._cursor(sink)
            out: list[Pending] = []
            total = 0
            quarantined = self._counters["quarantined_total"]
            i = max(self._head, bisect.bisect_right(self._ids, cursor.low))
            while i < len(self._ids) and len(out) < max_count:
                doc_id = self._ids[i]
                i += 1
                if doc_id not in self._sizes or doc_id in cursor.ahead:
                    continue
                if out and total + self._sizes[doc_id] > max_bytes:
                    break
                pending = self._read(doc_id)
                if pending is not None:
                    out.append(pending)
                    total += len(pending.raw)
            if self._counters["quarantined_total"] != quarantined and not self._readonly:
                self._save_soon()
            return out

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
            old = self._cursor(sink)
            refused = {doc_id: reason for doc_id, reason in rejected.items() if doc_id in self._sizes}
            settled = [doc_id for doc_id in done if doc_id in self._sizes and doc_id not in refused]
            settled.extend(refused)
            if not settled:
                return
            with contextlib.suppress(OSError):
                # Best effort: the copy is for a human to read, not worth keeping a full disk full.
                self._set_aside_rejected(sink, refused)
            cursor = old.copy()
            cursor.ahead.update(settled)
            self._advance(cursor)
            self._cursors[sink] = cursor
            self._counters["rejected_total"] += len(refused)
            finished = [doc_id for doc_id in settled if self._done_by_all(doc_id)]
            # When, once these files are gone, no sink is done with any file still
            # spooled, the deletions are the whole record and state.json (whose
            # marks then cover only files that are gone) need not be rewritten:
            # that saves two fsyncs per batch in the usual in-order drain.
            if refused or self._dirty or not self._nothing_done_once_gone(set(finished)):
                self._save_soon()
            if finished:
                self._delete(finished)
                if any(doc_id in self._sizes for doc_id in finished):
                    self._save_soon()  # a file could not be removed: its done marks must be kept
                for other in self._cursors.values():
                    self._advance(other)
            self._compact()

    def stats(self, now: float | None = None) -> SpoolStats:
        """Depth, bytes and the age of the oldest heartbeat (by its UUIDv7 time, else its mtime)."""
        with self._lock:
            oldest = next(self._live(), None)
            age: float | None = None
            if oldest is not None:
                born = _uuid7_seconds(oldest)
                if born is None:
                    try:
                        born = os.stat(os.path.join(self._pending, f"{oldest}.json")).st_mtime
                    except OSError:
                        born = None
                if born is not None:
                    age = max(0.0, (time.time() if now is None else now) - born)
            return SpoolStats(
                pending=len(self._sizes),
                bytes=self._bytes,
                oldest_age_s=age,
                dropped_total=self._counters["dropped_total"],
                quarantined_total=self._counters["quarantined_total"],
                rejected_total=self._counters["rejected_total"],
            )

    def iter_pending(self) -> Iterator[Pending]:
        """Every spooled heartbeat, oldest first, read one file at a time."""
        with self._lock:
            self._check_open()
            ids = list(self._live())
        for doc_id in ids:
            with self._lock:
                pending = self._read(doc_id) if doc_id in self._sizes else None
            if pending is not None:
                yield pending

    # -- index and cursors ---------------------------------------------------

    def _live(self) -> Iterator[str]:
        ids, sizes = self._ids, self._sizes
        return (ids[i] for i in range(self._head, len(ids)) if ids[i] in sizes)

    def _cursor(self, sink: str) -> _Cursor:
        try:
            return self._cursors[sink]
        except KeyError:
            raise ValueError(f"sink {sink!r} is not active in this spool") from None

    def _done_by_all(self, doc_id: str) -> bool:
        return bool(self._cursors) and all(c.done(doc_id) for c in self._cursors.values())

    def _nothing_done_once_gone(self, gone: set[str]) -> bool:
        first = next((doc_id for doc_id in self._live() if doc_id not in gone), None)
        return all(cursor.ahead <= gone and (first is None or first > cursor.low) for cursor in self._cursors.values())

    def _advance(self, cursor: _Cursor) -> None:
        """Move the low-water mark over ids that are done or gone; forget ids it passed."""
        i = bisect.bisect_right(self._ids, cursor.low)
        while i < len(self._ids):
            doc_id = self._ids[i]
            if doc_id in self._sizes and doc_id not in cursor.ahead:
                break
            cursor.low = doc_id
            cursor.ahead.discard(doc_id)
            i += 1

    def _lowered(self, cursor: _Cursor, doc_id: str) -> _Cursor:
        """``cursor`` with its mark moved below ``doc_id``, keeping every live id it had done."""
        if doc_id > cursor.low:
            return cursor
        i = bisect.bisect_left(self._ids, doc_id)
        end = bisect.bisect_right(self._ids, cursor.low)
        ahead = cursor.ahead | {x for x in self._ids[i:end] if x in self._sizes}
        return _Cursor(self._ids[i - 1] if i > 0 else "", ahead)

    def _index_add(self, doc_id: str, size: int) -> None:
        if doc_id in self._sizes:
            self._bytes += size - self._sizes[doc_id]
            self._sizes[doc_id] = size
            return
        i = bisect.bisect_left(self._ids, doc_id)
        if i == len(self._ids) or self._ids[i] != doc_id:
            self._ids.insert(i, doc_id)
        self._head = min(self._head, i)
        self._sizes[doc_id] = size
        self._bytes += size

    def _forget(self, doc_id: str) -> None:
        self._bytes -= self._sizes.pop(doc_id)
        for cursor in (*self._cursors.values(), *self._dormant.values()):
            cursor.ahead.discard(doc_id)
        while self._head < len(self._ids) and self._ids[self._head] not in self._sizes:
            self._head += 1

    def _compact(self) -> None:
        dead = len(self._ids) - len(self._sizes)
        if dead > 1024 and dead > len(self._sizes):
            self._ids = [doc_id for doc_id in self._ids if doc_id in self._sizes]
            self._head = 0

    def _enforce_bounds(self) -> bool:
        """Drop the oldest heartbeats while over either bound; ``True`` if any was dropped."""
        drop: list[str] = []
        live = self._live()
        count, size = len(self._sizes), self._bytes
        while count > self._settings.max_files or size > self._settings.max_bytes:
            doc_id = next(live)
            drop.append(doc_id)
            count -= 1
            size -= self._sizes[doc_id]
        for doc_id in drop:
            self._discard(doc_id)
            self._forget(doc_id)
        if drop:
            self._reclaimer.poke()
        self._counters["dropped_total"] += len(drop)
        # The drops need no directory fsync of their own: a dropped file that
        # comes back after a power cut is dropped again at the next open.
        return bool(drop)

    def _delete(self, ids: list[str]) -> None:
        for doc_id in ids:
            if self._discard(doc_id):
                self._forget(doc_id)
        # One directory fsync per batch, not per file. If it fails the acks are
        # already in state.json, and open() deletes the files again.
        with contextlib.suppress(OSError):
            self._sync_dir(self._pending)
        self._reclaimer.poke()

    def _discard(self, doc_id: str) -> bool:
        """Take a heartbeat out of pending/ (into the trash); ``False`` if it could not be."""
        name = f"{doc_id}.json"
        try:
            # Relative to open directories: the drain does this once per heartbeat.
            os.rename(name, name, src_dir_fd=self._dir_fds[self._pending], dst_dir_fd=self._dir_fds[self._trash])
        except FileNotFoundError:
            return True
        except OSError:
            return unlink_quietly(os.path.join(self._pending, name))
        return True

    # -- files ---------------------------------------------------------------

    def _scan_pending(self) -> bool:
        """Index ``pending/``; quarantine what cannot be a heartbeat. ``True`` if any was."""
        found: list[tuple[str, int]] = []
        quarantined = False
        try:
            entries = list(os.scandir(self._pending))
        except FileNotFoundError:
            if self._readonly:
                return False
            raise
        for entry in entries:
            doc_id = entry.name[:-5] if entry.name.endswith(".json") else ""
            size = 0
            if ID_PATTERN.fullmatch(doc_id) and entry.is_file(follow_symlinks=False):
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
            if size > 0:
                found.append((doc_id, size))
            elif not self._readonly:
                self._quarantine_path(entry.path, entry.name)
                quarantined = True
        found.sort()
        self._ids = [doc_id for doc_id, _ in found]
        self._sizes = dict(found)
        self._bytes = sum(self._sizes.values())
        self._head = 0
        for cursor in (*self._cursors.values(), *self._dormant.values()):
            self._advance(cursor)
            cursor.ahead.intersection_update(self._sizes)
        return quarantined

    def _read(self, doc_id: str) -> Pending | None:
        """A live heartbeat as read from disk; ``None`` (and quarantined) if it is not one."""
        path = os.path.join(self._pending, f"{doc_id}.json")
        try:
            raw = _read_file(path, self._sizes[doc_id], self._dir_fds.get(self._pending))
        except FileNotFoundError:
            self._forget(doc_id)
            return None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR):  # a symbolic link or directory put there since open()
                raise spool_error(exc) from None
            raw = b""
        try:
            doc = json.loads(raw)
            valid = isinstance(doc, dict) and doc.get("id") == doc_id
        except (ValueError, RecursionError):
            valid = False
        if valid:
            pending = Pending(doc_id, raw)
            # Hand the parse over to Pending.doc (a cached_property keeps its value in
            # the instance dict), so the scrubber downstream does not parse it again.
            vars(pending)["doc"] = doc
            return pending
        if not self._readonly:
            self._quarantine_path(path, f"{doc_id}.json")
            self._forget(doc_id)
        return None

    def _quarantine_path(self, path: str, name: str) -> None:
        target = os.path.join(self._quarantine, name)
        if os.path.lexists(target):
            target = f"{target}.{time.time_ns()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        except OSError:
            # Cannot move it aside: remove it, so it is not tried again forever.
            if not unlink_quietly(path):
                return
        self._counters["quarantined_total"] += 1
        self._aside["quarantine"] += 1
        if self._aside["quarantine"] > aside.KEEP_FILES:
            self._aside["quarantine"] = aside.prune(self._quarantine, grouped=False)

    def _set_aside_rejected(self, sink: str, refused: Mapping[str, str]) -> None:
        """Link refused heartbeats into ``rejected/`` with their reason; the first refusal wins.

        One the scrubber refused is not linked: only its reason is kept (see :mod:`agent.aside`).
        """
        for doc_id, reason in refused.items():
            target = os.path.join(self._rejected, f"{doc_id}.json")
            sidecar = os.path.join(self._rejected, f"{doc_id}{aside.SIDECAR}")
            if os.path.exists(sidecar):
                continue
            code = reason if REASON_PATTERN.fullmatch(reason) else "invalid"
            if aside.keeps_whole(code):
                self._keep_copy(doc_id, target)
            body = json.dumps({"sink": sink, "reason": code}).encode()
            replace_atomically(
                self._ops, os.path.join(self._tmp, f"{doc_id}.reason.json"), sidecar, body, fsync=self._fsync
            )
            self._aside["rejected"] += 1
        if refused:
            self._sync_dir(self._rejected)
            if self._aside["rejected"] > aside.KEEP_FILES:
                self._aside["rejected"] = aside.prune(self._rejected, grouped=True)

    def _keep_copy(self, doc_id: str, target: str) -> None:
        source = os.path.join(self._pending, f"{doc_id}.json")
        try:
            # Files are never rewritten in place, so a hard link is as good as a copy.
            os.link(source, target)
        except FileExistsError:
            pass
        except OSError:
            with open(source, "rb") as handle:
                raw = handle.read()
            replace_atomically(self._ops, os.path.join(self._tmp, f"{doc_id}.json"), target, raw, fsync=self._fsync)

    def prune_aside(self) -> None:
        """Apply the age, size and count bounds of ``quarantine/`` and ``rejected/`` (blocking; once a minute)."""
        with self._lock:
            self._check_writable()
            with contextlib.suppress(OSError):
                self._aside["quarantine"] = aside.prune(self._quarantine, grouped=False)
                self._aside["rejected"] = aside.prune(self._rejected, grouped=True)

    def _load_state(self) -> bool:
        """Read ``state.json``; a damaged one is quarantined (``True``) and every sink starts over."""
        try:
            with open(self._state_path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raw = None
        state: dict[str, Any] = {}
        damaged = False
        if raw is not None:
            try:
                state = _parse_state(raw)
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                damaged = True
        counters = state.get("counters", {})
        self._counters = {name: int(counters.get(name, 0)) for name in _COUNTERS}
        if damaged and not self._readonly:
            self._quarantine_path(self._state_path, "state.json")
        saved = state.get("cursors", {})
        self._saved_ahead = {doc_id for cursor in saved.values() for doc_id in cursor["ahead"]}
        loaded = {sink: _Cursor(cursor["low"], set(cursor["ahead"])) for sink, cursor in saved.items()}
        # A sink never seen before starts from the oldest spooled heartbeat.
        self._cursors = {sink: loaded.get(sink, _Cursor()) for sink in self._sink_names}
        self._dormant = {sink: cursor for sink, cursor in loaded.items() if sink not in self._cursors}
        return damaged

    def _save_soon(self) -> None:
        """Save cursors and counters now if the disk lets us, else on a later call."""
        try:
            self._save_state(self._cursors, self._counters)
        except SpoolError:
            self._dirty = True
        else:
            self._dirty = False

    def _save_state(self, cursors: Mapping[str, _Cursor], counters: Mapping[str, int]) -> None:
        every = {**self._dormant, **cursors}
        state = {
            "version": STATE_VERSION,
            "counters": dict(counters),
            "cursors": {sink: cursor.to_json() for sink, cursor in sorted(every.items())},
        }
        data = json.dumps(state, separators=(",", ":")).encode()
        try:
            replace_atomically(
                self._ops, os.path.join(self._tmp, "state.json.tmp"), self._state_path, data, fsync=self._fsync
            )
            self._sync_dir(str(self.root))
        except OSError as exc:
            raise spool_error(exc) from None
        self._saved_ahead = {doc_id for cursor in every.values() for doc_id in cursor.ahead}

    def _sync_dir(self, path: str) -> None:
        if self._fsync:
            self._ops.fsync(self._dir_fds[path])

    def _check_open(self) -> None:
        if not self._is_open:
            raise SpoolError("spool not open", code="closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise SpoolError("spool opened read-only", code="readonly")


def _parse_state(raw: bytes) -> dict[str, Any]:
    state = json.loads(raw)
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError("state version")
    counters = state["counters"]
    if not all(isinstance(counters.get(name, 0), int) for name in _COUNTERS):
        raise ValueError("counters")
    for cursor in state["cursors"].values():
        if not isinstance(cursor["low"], str) or not all(isinstance(x, str) for x in cursor["ahead"]):
            raise ValueError("cursor")
    return state


def _read_file(path: str, size: int, dir_fd: int | None) -> bytes:
    # O_NONBLOCK: a FIFO put there since open() would otherwise block the spool's thread, and with it every tick.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags) if dir_fd is None else os.open(os.path.basename(path), flags, dir_fd=dir_fd)
    try:
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data
        # The size in the index is only a hint: a file replaced since may be longer.
        chunks = [data]
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _uuid7_seconds(doc_id: str) -> float | None:
    match = _UUID7.fullmatch(doc_id)
    if match is None:
        return None
    return int(match.group(1) + match.group(2), 16) / 1000.0
