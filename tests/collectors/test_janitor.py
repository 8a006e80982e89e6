"""The janitor: counts the retained logs and those past retention, deletes nothing, follows no symbolic link."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.plugin_api import PluginContext
from collectors.janitor import JanitorCollector, JanitorSettings

DAY = 86_400


def aged(path: Path, days: float, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - days * DAY
    os.utime(path, (then, then), follow_symlinks=False)
    return path


async def test_counts_files_and_those_past_retention_and_a_day(tmp_path: Path) -> None:
    """Files older than retention_days plus the timer's day are overdue; every file is counted and kept."""
    logs = tmp_path / "tarpit"
    files = [aged(logs / "t.log.5", 40), aged(logs / "sub" / "t.log.9", 31.5), aged(logs / "t.log.1", 30.5)]
    files += [aged(logs / "t.log", 0)]
    janitor = JanitorCollector(JanitorSettings(dirs=[logs], retention_days=30))
    samples = {s.name: s.value for s in await janitor.collect()}
    assert {"janitor_files": 4, "janitor_overdue_files": 2} == samples
    assert [True, True, True, True] == [p.exists() for p in files]


async def test_symlinks_are_never_followed_or_counted(tmp_path: Path) -> None:
    """A link to an old file outside, and a link to an outside directory, count nothing and touch nothing."""
    outside = tmp_path / "outside"
    precious = aged(outside / "precious.db", 400)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "link-to-file").symlink_to(precious)
    (logs / "link-to-dir").symlink_to(outside, target_is_directory=True)
    os.utime(logs / "link-to-file", (0, 0), follow_symlinks=False)
    janitor = JanitorCollector(JanitorSettings(dirs=[logs], retention_days=1))
    samples = {s.name: s.value for s in await janitor.collect()}
    assert {"janitor_files": 0, "janitor_overdue_files": 0} == samples
    assert (True, True) == (precious.exists(), (logs / "link-to-file").is_symlink())


def test_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    """A configured directory that does not exist yet holds nothing."""
    assert (0, 0) == JanitorCollector(JanitorSettings(dirs=[tmp_path / "none"])).count()


def test_from_settings_needs_directories(tmp_path: Path) -> None:
    """Without directories the janitor is not configured."""
    context = PluginContext(interval=10.0, state_dir=tmp_path, collector_timeout=5.0)
    assert JanitorCollector.from_settings(JanitorSettings(), context) is None
    configured = JanitorCollector.from_settings(JanitorSettings(dirs=[tmp_path]), context)
    assert isinstance(configured, JanitorCollector)
