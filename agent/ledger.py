"""The sent ledger: a local, append-only record of every request an upload sink or alert hook made.

One record per request, acknowledged or not: the time, the sink or hook, the
destination (scheme, host, port and path; no credentials, no query, the Kuma
push token masked), the heartbeat ids and seq range, the byte count and SHA-256
of the body exactly as sent (after gzip or snappy), and the answer's status.

On disk, under ``<state_dir>/ledger/``:

- ``segment-<first record's unix ms>.jsonl``: one record per line, as
  ``<CRC-32 of the JSON, 8 hex digits> <JSON>\\n``, each line written with one
  ``write`` on an ``O_APPEND`` descriptor. A line whose CRC does not match (a
  process killed mid-write) is skipped when read and never spoils another.
  Each process appends to a segment of its own, so a line torn by a crash
  stays the last line of its segment.
- ``bodies/<sha256>``: the bodies themselves, only when ``keep_bodies`` is on.

Bounds: whole segments are deleted, oldest first, so pruning never rewrites a
file. The segments together stay under ``max_bytes``; a segment is cut after
an eighth of that, or after an eighth of ``max_age``, and deleted once its
newest record is older than ``max_age``, so no record outlives ``max_age`` by
more than an eighth of it. Kept bodies are bounded by ``bodies_max_bytes`` and
``max_age`` alike.

Durability: the writer (:class:`agent.ledger_hook.LedgerWriter`) has the
daemon's file thread append and sync records in batches: a sink's in the trip
that settles its batch, before its heartbeats leave the spool; an alert hook's
within ``sync_interval`` (1 s by default). Records appended together share one
``fsync``.
Kept bodies are synced as they are written.
This module is standard library only and blocking: the file thread calls it,
never the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent import atomic_file
from agent.ledger_record import SentRecord, decode_line, encode_line

LEDGER_DIR = "ledger"
BODIES_DIR = "bodies"
SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".jsonl"
# Segments are cut at this fraction of each bound, so deleting a whole one never
# takes more than an eighth of what the bounds allow.
SEGMENTS_PER_BOUND = 8
MIN_SEGMENT_BYTES = 4096

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class LedgerScan:
    """What reading the ledger found: the records, oldest first, and how many lines were damaged."""

    records: list[SentRecord] = field(default_factory=list)
    damaged: int = 0


def segments(directory: Path) -> list[Path]:
    """The segment files of a ledger, oldest first (raises ``OSError`` if the directory is unreadable)."""
    names = sorted(os.listdir(directory))
    return [directory / name for name in names if name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)]


def read_ledger(directory: Path, *, since: float | None = None) -> LedgerScan:
    """Every intact record in ``directory`` (at or after ``since``, a unix time), oldest first.

    A ledger that does not exist yet is empty; an unreadable one raises ``OSError``.
    """
    scan = LedgerScan()
    if not directory.exists():
        return scan
    for path in segments(directory):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # pruned while we read
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for line in lines:
            record = decode_line(line)
            if record is None:
                scan.damaged += 1
            elif since is None or record.time >= since:
                scan.records.append(record)
    return scan


def body_path(directory: Path, digest: str) -> Path:
    """Where the kept body with SHA-256 ``digest`` lives."""
    return directory / BODIES_DIR / digest


class Ledger:
    """Appends records to the segment files and keeps them within their bounds (blocking calls)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_age: float,
        max_bytes: int,
        keep_bodies: bool = False,
        bodies_max_bytes: int = 0,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.keep_bodies = keep_bodies
        self.bodies_max_bytes = bodies_max_bytes
        self.fsync = fsync
        self.clock = clock
        self.segment_bytes = max(MIN_SEGMENT_BYTES, max_bytes // SEGMENTS_PER_BOUND)
        self._segments: dict[Path, int] = {}  # oldest first: path -> size
        self._bodies: dict[str, int] = {}  # oldest first: digest -> size
        self._fd: int | None = None
        self._current: Path | None = None
        self._current_started = 0.0
        self._opened = False

    def open(self) -> None:
        """Create the directories, take stock of what is there, prune.

        Each process appends to a segment of its own, made on its first record, so
        a line torn by an earlier process stays the last line of its segment.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._segments = {path: path.stat().st_size for path in segments(self.directory)}
        if self.keep_bodies:
            bodies = self.directory / BODIES_DIR
            bodies.mkdir(mode=0o700, exist_ok=True)
            found = []
            for entry in os.scandir(bodies):
                if _SHA256.fullmatch(entry.name):
                    info = entry.stat()
                    found.append((info.st_mtime, entry.name, info.st_size))
            self._bodies = {name: size for _, name, size in sorted(found)}
        self._opened = True
        self.prune()

    def append(self, entries: Sequence[tuple[SentRecord, bytes | None]]) -> None:
        """Write ``entries`` (record, and its body to keep or ``None``) in order; :meth:`sync` makes them durable.

        A body is stored before its record, so a record marked ``kept`` has one
        until the bodies' bounds prune it.
        """
        if not self._opened:
            self.open()
        for entry, body in entries:
            record = entry
            if body is not None:
                record = dataclasses.replace(entry, kept=self.keep_body(entry.sha256, body))
            line = encode_line(record)
            if self._needs_new_segment(len(line), record.time):
                self._open_segment(self._segment_name(record.time), started=record.time)
            self.prune(room=len(line))
            try:
                self._write(line)
            except OSError:
                self._abandon_segment()  # a partial line may be there: the next record starts a segment
                raise

    def sync(self) -> None:
        """Flush the segment being written to the disk."""
        if self.fsync and self._fd is not None:
            os.fsync(self._fd)

    def keep_body(self, digest: str, body: bytes) -> bool:
        """Store ``body`` under its digest (once); ``False`` when kept bodies are off or it is too large."""
        if not self.keep_bodies or len(body) > self.bodies_max_bytes:
            return False
        if not self._opened:
            self.open()
        if digest in self._bodies:
            return True
        atomic_file.replace(body_path(self.directory, digest), body, durable=self.fsync)
        self._bodies[digest] = len(body)
        self._prune_bodies()
        return True

    def prune(self, room: int = 0) -> None:
        """Delete the oldest segments (never the one being written) until both bounds hold with ``room`` to spare."""
        cutoff = self.clock() - self.max_age
        total = sum(self._segments.values()) + room
        paths = list(self._segments)
        for index, path in enumerate(paths):
            if path == self._current:
                break
            expired = self._newest_record_before(paths, index) < cutoff
            if not expired and total <= self.max_bytes:
                break
            total -= self._segments.pop(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._prune_bodies()

    def _newest_record_before(self, paths: list[Path], index: int) -> float:
        """An upper bound on the time of segment ``index``'s newest record.

        The next segment's first record came later; the last segment was written last at its mtime.
        """
        if index + 1 < len(paths):
            return _segment_started(paths[index + 1])
        try:
            return paths[index].stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def close(self) -> None:
        """Sync and close the segment being written."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if self.fsync:
                    os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def _needs_new_segment(self, size: int, when: float) -> bool:
        if self._current is None:
            return True
        too_big = self._segments[self._current] + size > self.segment_bytes and self._segments[self._current] > 0
        too_old = when - self._current_started > self.max_age / SEGMENTS_PER_BOUND
        return too_big or too_old

    def _segment_name(self, when: float) -> Path:
        # Names sort in the order segments were made, even when the clock steps back.
        newest = max((_segment_stamp(path) for path in self._segments), default=-1)
        stamp = max(int(when * 1000), newest + 1, 0)
        return self.directory / f"{SEGMENT_PREFIX}{stamp:015d}{SEGMENT_SUFFIX}"

    def _open_segment(self, path: Path, *, started: float) -> None:
        self.close()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._current = path
        self._current_started = started
        self._segments.setdefault(path, 0)
        if self.fsync:
            atomic_file.fsync_dir(self.directory)

    def _abandon_segment(self) -> None:
        self.close()
        self._current = None

    def _write(self, data: bytes) -> None:
        assert self._fd is not None and self._current is not None
        written = os.write(self._fd, data)
        self._segments[self._current] += written
        if written != len(data):
            raise OSError("short write to the ledger")

    def _prune_bodies(self) -> None:
        if not self._bodies:
            return
        cutoff = self.clock() - self.max_age
        total = sum(self._bodies.values())
        bodies = self.directory / BODIES_DIR
        for digest in list(self._bodies):
            path = bodies / digest
            try:
                expired = path.stat().st_mtime < cutoff
            except FileNotFoundError:
                expired = True
            if not expired and total <= self.bodies_max_bytes:
                break
            total -= self._bodies.pop(digest)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _segment_stamp(path: Path) -> int:
    stamp = path.name.removeprefix(SEGMENT_PREFIX).removesuffix(SEGMENT_SUFFIX)
    return int(stamp) if stamp.isdigit() else 0


def _segment_started(path: Path) -> float:
    return _segment_stamp(path) / 1000
