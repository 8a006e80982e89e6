"""Small durable files in the state directory: atomic JSON, and the heartbeat sequence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent import atomic_file


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if it is missing or unreadable."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any], *, durable: bool = True) -> None:
    """Atomically write a JSON object (with ``durable``, also fsynced: see :func:`agent.atomic_file.replace`)."""
    atomic_file.replace(path, json.dumps(value, separators=(",", ":"), sort_keys=True).encode(), durable=durable)


class Sequence:
    """The per-POP heartbeat counter, strictly increasing across restarts and crashes.

    Rather than an fsync per heartbeat, the counter reserves blocks: the file holds
    the highest number this process may hand out, and is moved forward (durably)
    before a number past it is used. A crash skips the rest of a block, which is
    allowed; a number is never handed out twice.

    Each reservation is written to two files (``seq.json`` and ``seq.json.1``),
    each atomically: a file damaged from outside (a bad disk block, a hand edit)
    costs nothing while the other one reads, so ``seq`` does not restart at 0
    and go back under central's feet. Only when both are unreadable does it.
    """

    def __init__(self, path: Path, *, block: int = 1000) -> None:
        self._paths = (path, path.with_name(path.name + ".1"))
        self._block = block
        reservations = [_reservation(candidate) for candidate in self._paths]
        self._next = max((r + 1 for r in reservations if r is not None), default=0)
        self._reserved = self._next - 1

    def peek(self) -> int:
        """The number the next heartbeat would get, without reserving it (for ``--once``)."""
        return self._next

    @property
    def reserve_due(self) -> bool:
        """Whether the next :meth:`take` must first write a reservation (blocking I/O)."""
        return self._next > self._reserved

    def reserve(self) -> None:
        """Reserve the next block on disk (two fsynced writes); a no-op while numbers are left."""
        if not self.reserve_due:
            return
        # Reserved in memory only once the reservation is on disk: a failed write
        # (a full disk) must fail every take, not hand out numbers a restart reuses.
        reserved = self._next + self._block - 1
        for path in self._paths:
            write_json(path, {"reserved": reserved})
        self._reserved = reserved

    def take(self) -> int:
        """Hand out the next number, reserving a new block first when needed.

        Without I/O unless :attr:`reserve_due`; the daemon calls :meth:`reserve`
        on the spool's thread first, so it never blocks the event loop here.
        """
        self.reserve()
        value = self._next
        self._next += 1
        return value


def _reservation(path: Path) -> int | None:
    reserved = (read_json(path) or {}).get("reserved")
    return reserved if isinstance(reserved, int) and not isinstance(reserved, bool) and reserved >= 0 else None


INCOMING = "incoming"


def drop_incoming(spool_root: Path, doc_id: str, raw: bytes) -> Path:
    """Leave a heartbeat in ``spool/incoming/`` for the running daemon to take in.

    Written atomically under a dot-name first, so the daemon never reads half a file.
    """
    directory = spool_root / INCOMING
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{doc_id}.json"
    atomic_file.replace(path, raw)
    return path
