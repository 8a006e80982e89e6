"""Intake from ``agent enqueue``: documents handed to a running daemon through ``spool/incoming/``.

Each is scrubbed again and spooled under its own id, then removed. A file is
opened without following a link and without blocking, and only read once
``fstat`` on the open descriptor says it is a regular file: a FIFO or device
swapped in after the listing must not block the spool's thread, and with it
every tick.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import structlog

from agent import heartbeat, jsondoc
from agent.atomic_file import remove_any
from agent.errors import ScrubRejected, SpoolError
from agent.scrubber import Allowlist, scrub
from agent.spool import Spool
from agent.spool_io import error_code
from agent.state import INCOMING

log = structlog.get_logger("agent")

PER_TICK = 1000  # documents taken in per tick, so a flood cannot stall ticks
MAX_DOCUMENT_BYTES = 1 << 20  # a heartbeat is a few KiB; past this, a document is refused (enqueue, scrub, intake)


def take_incoming(spool: Spool, allowed: Allowlist) -> int:
    """Spool what ``agent enqueue`` left in ``spool/incoming/``, scrubbed again; the number refused.

    Blocking: runs on the spool's thread. On a full or read-only disk the rest
    is left for a later tick.
    """
    directory = spool.root / INCOMING
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(".json") and name[0] != ".")
    except FileNotFoundError:
        return 0
    refused = 0
    for name in names[:PER_TICK]:
        path = directory / name
        try:
            doc = jsondoc.loads(read_regular(path))
            scrub(doc, allowed)
            if f"{doc['id']}.json" != name:
                raise ValueError(name)
            spool.put(doc["id"], heartbeat.dumps(doc))
        except SpoolError:
            return refused  # the disk is full or read-only: leave them for a later tick
        except (ScrubRejected, ValueError, KeyError, TypeError, OSError, RecursionError):
            refused += 1
            log.warning("incoming_refused")
        remove_any(path)
    return refused


class Intake:
    """:func:`take_incoming` for the daemon: an ``incoming/`` it cannot list is logged once, and waits."""

    def __init__(self, spool: Spool, allowed: Allowlist) -> None:
        self._spool = spool
        self._allowed = allowed
        self._failing = False  # only the file thread reads and writes it

    def take(self) -> int:
        """Take in what is there (blocking: on the file thread); the number refused."""
        try:
            refused = take_incoming(self._spool, self._allowed)
        except OSError as exc:
            if not self._failing:
                log.warning("incoming_unreadable", code=error_code(exc))
            self._failing = True
            return 0
        self._failing = False
        return refused


def read_regular(path: Path, *, follow_links: bool = False) -> bytes:
    """The bytes of ``path`` if it is a regular file of heartbeat size; else ``ValueError`` saying why.

    Opened without blocking and checked with ``fstat`` on the open descriptor, so a
    FIFO or device is refused unread. A link is refused too unless ``follow_links``
    (an operator's own argument to ``agent scrub`` or ``enqueue``, not a drop box).
    A missing or unreadable file is the ``OSError`` of the open.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise ValueError("not a regular file") from None
        if exc.errno == errno.EISDIR:
            raise ValueError("is a directory") from None
        raise
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError("is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        chunks = []
        left = MAX_DOCUMENT_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise ValueError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
