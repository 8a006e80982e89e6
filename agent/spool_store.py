"""The spool's files: where heartbeats, set-aside documents and ``state.json`` live on disk.

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

This module knows paths, system calls and their failures, and nothing of sinks
or cursors. Every write is atomic (:mod:`agent.atomic_file`); the directory
fsyncs go through descriptors opened once, since a drain makes one per batch.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from agent import aside, atomic_file
from agent.atomic_file import SYSTEM, FileOps, remove_quietly
from agent.errors import SpoolError
from agent.sample import Pending
from agent.spool_io import Reclaimer, error_code, open_dir, spool_error

ID_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,79}")
REASON_PATTERN = re.compile(r"[a-z0-9_]{1,32}")
STATE_FILE = "state.json"
RECENT_BYTES = 64 * 1024  # heartbeats kept in memory for the next flush (about 40 at their usual size)


class SpoolFiles:
    """The directories of one spool, and the file operations the spool makes in them (blocking)."""

    def __init__(self, root: Path, *, fsync: bool = True, ops: FileOps = SYSTEM) -> None:
        self.root = root
        self.fsync = fsync
        self.ops = ops
        self.pending = str(root / "pending")
        self.tmp = str(root / "tmp")
        self.trash = str(root / "trash")
        self.quarantine_dir = str(root / "quarantine")
        self.rejected = str(root / "rejected")
        self.state_path = str(root / STATE_FILE)
        self._reclaimer = Reclaimer(self.trash)
        self._lock_fd: int | None = None
        self._dir_fds: dict[str, int] = {}
        self._aside = {"quarantine": 0, "rejected": 0}  # entries in each, to know when to prune
        # The heartbeats stored last, as written: a flush reads back those of the ticks
        # since the one before, and three system calls to read what is in hand cost more
        # than the read. Only while their files are in pending/; at most RECENT_BYTES.
        self._recent: dict[str, bytes] = {}
        self._recent_bytes = 0

    # -- lifecycle -----------------------------------------------------------

    def open_writer(self) -> int:
        """Create the directories, take the lock, clean ``tmp/``; the number of entries quarantined on the way.

        A second writer gets ``SpoolError(code="locked")``.
        """
        for path in (str(self.root), self.pending, self.tmp, self.trash, self.quarantine_dir, self.rejected):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self._take_lock()
        self._reclaimer.start()
        for path in (str(self.root), self.pending, self.trash, self.rejected):
            self._dir_fds[path] = open_dir(path)
        quarantined = 0
        for entry in os.scandir(self.tmp):
            if entry.is_dir(follow_symlinks=False):
                quarantined += self.quarantine(entry.path, entry.name)
            else:
                remove_quietly(entry.path)
        self.prune_aside()
        return quarantined

    def _take_lock(self) -> None:
        fd = os.open(str(self.root / "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError("spool locked", code="locked") from None
        self._lock_fd = fd

    def close(self) -> None:
        """Stop the reclaimer, release the lock and the directory descriptors."""
        self._reclaimer.stop()
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds = {}
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._aside = {"quarantine": 0, "rejected": 0}
        self._recent, self._recent_bytes = {}, 0

    # -- pending/ ------------------------------------------------------------

    def scan(self, *, readonly: bool) -> tuple[list[tuple[str, int]], int]:
        """The (id, size) of every heartbeat in ``pending/``, and how many entries were quarantined.

        What cannot be a heartbeat (a bad name, an empty file, a directory or a
        link) is quarantined, unless ``readonly``.
        """
        found: list[tuple[str, int]] = []
        quarantined = 0
        try:
            entries = list(os.scandir(self.pending))
        except FileNotFoundError:
            if readonly:
                return found, 0
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
            elif not readonly:
                quarantined += self.quarantine(entry.path, entry.name)
        return found, quarantined

    def store(self, doc_id: str, raw: bytes) -> None:
        """Put a heartbeat in ``pending/`` durably, or raise :class:`SpoolError` with nothing half-written.

        On a full disk the trash is emptied (settled files may still wait there) and the write tried once more.
        """
        try:
            self._store(doc_id, raw)
        except OSError as exc:
            if error_code(exc) != "enospc" or not self._empty_trash():
                raise spool_error(exc) from None
            try:
                self._store(doc_id, raw)
            except OSError as again:
                raise spool_error(again) from None

    def _store(self, doc_id: str, raw: bytes) -> None:
        name = f"{doc_id}.json"
        final = os.path.join(self.pending, name)
        tmp = os.path.join(self.tmp, name)
        atomic_file.replace(final, raw, durable=self.fsync, tmp=tmp, sync_dir=False, ops=self.ops)
        try:
            self.sync_dir(self.pending)
        except OSError:
            self._leaves(doc_id)  # an earlier copy stored under this id is gone with the file
            remove_quietly(final)
            raise
        self._remember(doc_id, raw)

    def _empty_trash(self) -> bool:
        """Remove some of the trash now (enough room for a heartbeat); ``True`` if anything was."""
        with os.scandir(self.trash) as entries:
            names = [entry.path for _, entry in zip(range(256), entries, strict=False)]
        for path in names:
            remove_quietly(path)
        return bool(names)

    def read(self, doc_id: str, size: int) -> bytes | None:
        """The bytes of a pending heartbeat (``size`` is a hint); ``None`` if it is gone.

        A symbolic link or directory put there since the spool opened reads as
        empty, so it is quarantined like any other file that is not a heartbeat.
        The heartbeats stored last are answered from memory, as they were written.
        """
        if (raw := self._recent.get(doc_id)) is not None:
            return raw
        try:
            return _read_file(self.pending, f"{doc_id}.json", size, self._dir_fds.get(self.pending))
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR):
                raise spool_error(exc) from None
            return b""

    def discard(self, doc_id: str) -> bool:
        """Take a heartbeat out of ``pending/`` (into the trash); ``False`` if it could not be.

        Not durable until :meth:`sync_pending`.
        """
        self._leaves(doc_id)
        name = f"{doc_id}.json"
        try:
            # Relative to open directories: the drain does this once per heartbeat.
            os.rename(name, name, src_dir_fd=self._dir_fds[self.pending], dst_dir_fd=self._dir_fds[self.trash])
        except FileNotFoundError:
            return True
        except OSError:
            return remove_quietly(os.path.join(self.pending, name))
        return True

    def remove(self, doc_id: str) -> bool:
        """Remove a heartbeat from ``pending/`` at once; ``False`` if it could not be.

        Not durable until :meth:`sync_pending`.
        """
        self._leaves(doc_id)
        try:
            os.unlink(f"{doc_id}.json", dir_fd=self._dir_fds[self.pending])
        except FileNotFoundError:
            return True
        except IsADirectoryError:
            # Put there from outside after the heartbeat was sent from memory: set it aside.
            return self.quarantine_pending(doc_id)
        except OSError:
            return False
        return True

    def _remember(self, doc_id: str, raw: bytes) -> None:
        self._leaves(doc_id)
        self._recent[doc_id] = raw
        self._recent_bytes += len(raw)
        while self._recent_bytes > RECENT_BYTES:
            self._leaves(next(iter(self._recent)))  # the oldest first

    def _leaves(self, doc_id: str) -> None:
        if (raw := self._recent.pop(doc_id, None)) is not None:
            self._recent_bytes -= len(raw)

    def sync_pending(self) -> None:
        """Make the renames in ``pending/`` durable (one fsync for a batch of them)."""
        self.sync_dir(self.pending)

    def reclaim(self) -> None:
        """Let the background thread empty the trash."""
        self._reclaimer.poke()

    def born(self, doc_id: str) -> float | None:
        """When a pending heartbeat's file was written, or ``None``."""
        try:
            return os.stat(os.path.join(self.pending, f"{doc_id}.json")).st_mtime
        except OSError:
            return None

    # -- quarantine/ and rejected/ -------------------------------------------

    def quarantine_pending(self, doc_id: str) -> bool:
        """Move a pending file that is not a heartbeat aside; ``True`` if it left ``pending/``."""
        self._leaves(doc_id)
        return self.quarantine(os.path.join(self.pending, f"{doc_id}.json"), f"{doc_id}.json")

    def quarantine(self, path: str, name: str) -> bool:
        """Move ``path`` into ``quarantine/`` (or remove it); ``True`` if it is gone from where it was."""
        target = os.path.join(self.quarantine_dir, name)
        if os.path.lexists(target):
            target = f"{target}.{time.time_ns()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return False
        except OSError:
            # Cannot move it aside: remove it, so it is not tried again forever.
            if not remove_quietly(path):
                return False
        self._aside["quarantine"] += 1
        if self._aside["quarantine"] > aside.KEEP_FILES:
            self._aside["quarantine"] = aside.prune(self.quarantine_dir, grouped=False)
        return True

    def set_aside_rejected(self, sink: str, refused: Mapping[str, str]) -> None:
        """Link refused heartbeats into ``rejected/`` with their reason; the first refusal wins.

        One the scrubber refused is not linked: only its reason is kept (see :mod:`agent.aside`).
        """
        for doc_id, reason in refused.items():
            target = os.path.join(self.rejected, f"{doc_id}.json")
            sidecar = os.path.join(self.rejected, f"{doc_id}{aside.SIDECAR}")
            if os.path.exists(sidecar):
                continue
            code = reason if REASON_PATTERN.fullmatch(reason) else "invalid"
            if aside.keeps_whole(code):
                self._keep_copy(doc_id, target)
            body = json.dumps({"sink": sink, "reason": code}).encode()
            tmp = os.path.join(self.tmp, f"{doc_id}.reason.json")
            atomic_file.replace(sidecar, body, durable=self.fsync, tmp=tmp, sync_dir=False, ops=self.ops)
            self._aside["rejected"] += 1
        if refused:
            self.sync_dir(self.rejected)
            if self._aside["rejected"] > aside.KEEP_FILES:
                self._aside["rejected"] = aside.prune(self.rejected, grouped=True)

    def _keep_copy(self, doc_id: str, target: str) -> None:
        source = os.path.join(self.pending, f"{doc_id}.json")
        try:
            # Files are never rewritten in place, so a hard link is as good as a copy.
            os.link(source, target)
        except FileExistsError:
            pass
        except OSError:
            with open(source, "rb") as handle:
                raw = handle.read()
            tmp = os.path.join(self.tmp, f"{doc_id}.json")
            atomic_file.replace(target, raw, durable=self.fsync, tmp=tmp, sync_dir=False, ops=self.ops)

    def prune_aside(self) -> None:
        """Apply the age, size and count bounds of ``quarantine/`` and ``rejected/``."""
        self._aside["quarantine"] = aside.prune(self.quarantine_dir, grouped=False)
        self._aside["rejected"] = aside.prune(self.rejected, grouped=True)

    # -- state.json ----------------------------------------------------------

    def read_state(self) -> bytes | None:
        """The bytes of ``state.json``, or ``None`` when there is none."""
        try:
            with open(self.state_path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def has_state(self) -> bool:
        """Whether ``state.json`` exists."""
        return os.path.exists(self.state_path)

    def write_state(self, data: bytes) -> None:
        """Replace ``state.json`` durably; :class:`SpoolError` if the disk refuses."""
        try:
            tmp = os.path.join(self.tmp, "state.json.tmp")
            atomic_file.replace(self.state_path, data, durable=self.fsync, tmp=tmp, sync_dir=False, ops=self.ops)
            self.sync_dir(str(self.root))
        except OSError as exc:
            raise spool_error(exc) from None

    def quarantine_state(self) -> bool:
        """Move a damaged ``state.json`` aside."""
        return self.quarantine(self.state_path, STATE_FILE)

    def sync_dir(self, path: str) -> None:
        """Fsync one of the spool's directories through its open descriptor."""
        if self.fsync:
            self.ops.fsync(self._dir_fds[path])


def as_heartbeat(doc_id: str, raw: bytes) -> Pending | None:
    """The heartbeat in a pending file's bytes; ``None`` unless they are a JSON object whose ``"id"`` is ``doc_id``."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("id") != doc_id:
        return None
    pending = Pending(doc_id, raw)
    # Hand the parse over to Pending.doc (a cached_property keeps its value in the
    # instance dict), so the scrubber downstream does not parse it again.
    vars(pending)["doc"] = doc
    return pending


def _read_file(directory: str, name: str, size: int, dir_fd: int | None) -> bytes:
    # O_NONBLOCK: a FIFO put there since open() would otherwise block the spool's thread, and with it every tick.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(os.path.join(directory, name), flags) if dir_fd is None else os.open(name, flags, dir_fd=dir_fd)
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
