"""The spool's set-aside directories, ``quarantine/`` and ``rejected/``: for a human to look at, bounded.

Neither is an archive. Each keeps at most :data:`KEEP_FILES` entries and
:data:`KEEP_BYTES` bytes, none older than :data:`KEEP_SECONDS`; the oldest go
first. A POP whose every heartbeat is refused would otherwise fill its disk,
and a refused document must not outlive the week a human needs to look at it.

A heartbeat refused by the scrubber (reason ``scrub_<code>``: it holds an
address, a secret or an undeclared field) is never kept whole: only its reason
sidecar is written, so what the scrubber caught does not stay on disk either.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from agent.atomic_file import remove_any, remove_quietly

KEEP_FILES = 1000
KEEP_BYTES = 16 * 1024 * 1024
KEEP_SECONDS = 7 * 86_400.0
SIDECAR = ".reason.json"
SCRUB_REASON_PREFIX = "scrub_"


def keeps_whole(reason: str) -> bool:
    """Whether a heartbeat refused for ``reason`` may be kept in full (receivers' refusals) or only its reason."""
    return not reason.startswith(SCRUB_REASON_PREFIX)


@dataclass(frozen=True, slots=True)
class _Entry:
    mtime: float
    stem: str
    size: int


def prune(path: str, *, grouped: bool, now: float | None = None) -> int:
    """Remove the oldest entries of ``path`` until every bound holds; returns how many are left.

    With ``grouped`` (``rejected/``), a heartbeat and its sidecar go together and
    count as one, dated by the sidecar, which is always written.
    """
    cutoff = (time.time() if now is None else now) - KEEP_SECONDS
    entries = _entries(path, grouped)
    entries.sort(key=lambda entry: (entry.mtime, entry.stem))
    total = sum(entry.size for entry in entries)
    drop = 0
    for entry in entries:
        left = len(entries) - drop
        if entry.mtime >= cutoff and left <= KEEP_FILES and total <= KEEP_BYTES:
            break
        total -= entry.size
        drop += 1
    for entry in entries[:drop]:
        if grouped:
            remove_quietly(os.path.join(path, entry.stem + SIDECAR))
            remove_quietly(os.path.join(path, entry.stem + ".json"))
        else:
            remove_any(os.path.join(path, entry.stem))
    return len(entries) - drop


def count(path: str, *, grouped: bool) -> int:
    """How many entries ``path`` holds (heartbeats with their sidecar counting once)."""
    with os.scandir(path) as scan:
        return sum(1 for entry in scan if not grouped or entry.name.endswith(SIDECAR))


def _entries(path: str, grouped: bool) -> list[_Entry]:
    found: dict[str, _Entry] = {}
    sizes: dict[str, int] = {}
    with os.scandir(path) as scan:
        for entry in scan:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not grouped:
                found[entry.name] = _Entry(info.st_mtime, entry.name, info.st_size)
                continue
            stem = entry.name.removesuffix(SIDECAR).removesuffix(".json")
            sizes[stem] = sizes.get(stem, 0) + info.st_size
            if entry.name.endswith(SIDECAR):
                found[stem] = _Entry(info.st_mtime, stem, 0)
    if grouped:
        # A heartbeat file whose sidecar is gone is an orphan: oldest of all, so it goes first.
        for stem in sizes.keys() - found.keys():
            found[stem] = _Entry(0.0, stem, 0)
        return [_Entry(entry.mtime, stem, sizes[stem]) for stem, entry in found.items()]
    return list(found.values())
