"""Janitor: a count of the logs that hold scanner addresses, and of any left past retention.

Deleting them is systemd's job: ``systemd/pop-agent.tmpfiles`` (installed as
``/etc/tmpfiles.d/pop-agent.conf``) has ``systemd-tmpfiles-clean.timer`` remove
files whose modification time is older than the retention, once a day, so that
the agent needs no write access to the log directories. The janitor only looks:
it counts the regular files in the configured directories and their
subdirectories (``janitor_files``), and those older than ``retention_days`` plus
the day the timer may take (``janitor_overdue_files``): anything but 0 there
means the tmpfiles rule does not cover a directory, or does not run. Symbolic
links are never followed, so nothing outside the directories is counted.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from agent.errors import CollectorError
from agent.plugin_api import PluginContext, PluginSettings
from agent.sample import MetricKind, MetricSpec, Sample

MAX_DEPTH = 8
# systemd-tmpfiles-clean.timer runs daily: a file may outlive the retention by up to a day.
TIMER_SLACK_S = 86_400


class JanitorSettings(PluginSettings):
    """A count of the logs that hold scanner addresses (systemd-tmpfiles deletes them)."""

    dirs: list[Path] = Field(
        default_factory=list, description="Directories whose files systemd-tmpfiles ages out; the janitor counts them."
    )
    retention_days: float = Field(
        30, gt=0, description="The age the tmpfiles rule removes files at; older ones (plus a day) count as overdue."
    )


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
    """Counts the files in the retained directories, and those systemd-tmpfiles should have removed."""

    name: ClassVar[str] = "janitor"
    settings_model: ClassVar[type[JanitorSettings]] = JanitorSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("janitor_files", MetricKind.GAUGE, "Files kept in the retained directories."),
        MetricSpec(
            "janitor_overdue_files",
            MetricKind.GAUGE,
            "Files past the retention plus a day: 0 while systemd-tmpfiles ages them out.",
        ),
    )

    def __init__(self, cfg: JanitorSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._dirs = list(cfg.dirs)
        self._max_age = cfg.retention_days * 86_400 + TIMER_SLACK_S
        self._clock = clock

    @classmethod
    def from_settings(cls, cfg: JanitorSettings, context: PluginContext) -> JanitorCollector | None:
        """A janitor if any directory is configured, else ``None``."""
        return cls(cfg) if cfg.dirs else None

    async def collect(self) -> Sequence[Sample]:
        """Count the files and the overdue ones."""
        files, overdue = await asyncio.to_thread(self.count)
        return [Sample("janitor_files", files), Sample("janitor_overdue_files", overdue)]

    def count(self) -> tuple[int, int]:
        """One pass over every directory: how many files, and how many past retention."""
        cutoff = self._clock() - self._max_age
        files = overdue = 0
        failed = False
        for directory in self._dirs:
            try:
                for entry in _files(os.fspath(directory)):
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError:
                        failed = True
                        continue
                    if stat.S_ISREG(info.st_mode):
                        files += 1
                        overdue += info.st_mtime < cutoff
            except FileNotFoundError:
                continue
            except OSError:
                failed = True
        if failed:
            raise CollectorError("some files could not be read", code="permission")
        return files, overdue
