"""Janitor: retention for logs that hold scanner addresses.

Deletes regular files older than ``retention_days`` (by modification time) in
the configured directories and their subdirectories. Symbolic links are never
followed: a link is neither deleted through nor descended into, so nothing
outside the configured directories can be touched. Reports how many files it
deleted (a counter) and how many are still kept (``janitor_files``).
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from agent.errors import CollectorError
from agent.sample import MetricKind, MetricSpec, Sample

if TYPE_CHECKING:
    from agent.settings import JanitorSettings, Settings

MAX_DEPTH = 8


def _files(directory: str, depth: int = 0) -> Iterator[os.DirEntry[str]]:
    """Regular files under ``directory``, never through a symbolic link."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth < MAX_DEPTH:
                    yield from _files(entry.path, depth + 1)
            elif entry.is_file(follow_symlinks=False):
                yield entry


class JanitorCollector:
    """Deletes old files in the retained directories; counts deletions and what is left."""

    name: ClassVar[str] = "janitor"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("janitor_deleted_total", MetricKind.COUNTER, "Files deleted for being past retention."),
        MetricSpec("janitor_files", MetricKind.GAUGE, "Files kept in the retained directories."),
    )

    def __init__(self, cfg: JanitorSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._dirs = list(cfg.dirs)
        self._max_age = cfg.retention_days * 86_400
        self._clock = clock
        self.deleted_total = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> JanitorCollector | None:
        """A janitor if any directory is configured, else ``None``."""
        cfg = settings.collectors.janitor
        return cls(cfg) if cfg.dirs else None

    async def collect(self) -> Sequence[Sample]:
        """Delete what is past retention; report the counts."""
        kept = await asyncio.to_thread(self.sweep)
        return [Sample("janitor_deleted_total", self.deleted_total), Sample("janitor_files", kept)]

    def sweep(self) -> int:
        """One pass over every directory; returns how many files are kept."""
        cutoff = self._clock() - self._max_age
        kept = 0
        failed = False
        for directory in self._dirs:
            try:
                for entry in _files(os.fspath(directory)):
                    try:
                        info = entry.stat(follow_symlinks=False)
                        if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
                            kept += 1
                            continue
                        os.unlink(entry.path)  # unlink removes the name itself, never a link's target
                        self.deleted_total += 1
                    except FileNotFoundError:
                        continue
                    except OSError:
                        kept += 1
                        failed = True
            except FileNotFoundError:
                continue
            except OSError:
                failed = True
        if failed:
            raise CollectorError("some files could not be deleted", code="permission")
        return kept

    def save_state(self) -> dict[str, object]:
        """The deletion counter, so that it only grows."""
        return {"deleted_total": self.deleted_total}

    def load_state(self, state: dict[str, object]) -> None:
        """Take the deletion counter back."""
        value = state.get("deleted_total")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            self.deleted_total = value
