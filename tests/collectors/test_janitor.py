"""The janitor: deletes files past retention, never through or along a symbolic link."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.settings import JanitorSettings, Settings
from collectors.janitor import JanitorCollector

DAY = 86_400


def aged(path: Path, days: float, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - days * DAY
    os.utime(path, (then, then), follow_symlinks=False)
    return path


async def test_old_files_go_new_files_stay(tmp_path: Path) -> None:
    """Files older than retention_days are deleted and counted; younger ones are kept and counted."""
    logs = tmp_path / "tarpit"
    old = [aged(logs / "t.log.5", 40), aged(logs / "sub" / "t.log.9", 31)]
    young = [aged(logs / "t.log", 0), aged(logs / "t.log.1", 29)]
    janitor = JanitorCollector(JanitorSettings(dirs=[logs], retention_days=30))
    samples = {s.name: s.value for s in await janitor.collect()}
    assert {"janitor_deleted_total": 2, "janitor_files": 2} == samples
    assert [False, False, True, True] == [p.exists() for p in old + young]


async def test_symlinks_are_never_followed_or_deleted_through(tmp_path: Path) -> None:
    """A link to an old file outside, and a link to an outside directory, leave the outside untouched."""
    outside = tmp_path / "outside"
    precious = aged(outside / "precious.db", 400)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "link-to-file").symlink_to(precious)
    (logs / "link-to-dir").symlink_to(outside, target_is_directory=True)
    os.utime(logs / "link-to-file", (0, 0), follow_symlinks=False)
    janitor = JanitorCollector(JanitorSettings(dirs=[logs], retention_days=1))
    samples = {s.name: s.value for s in await janitor.collect()}
    assert 0 == samples["janitor_deleted_total"]
    assert precious.exists()
    assert (logs / "link-to-file").is_symlink()


def test_deletion_counter_survives_a_restart(tmp_path: Path) -> None:
    """The counter only grows: a restarted janitor continues from the saved count."""
    aged(tmp_path / "a", 10)
    first = JanitorCollector(JanitorSettings(dirs=[tmp_path], retention_days=1))
    first.sweep()
    again = JanitorCollector(JanitorSettings(dirs=[tmp_path], retention_days=1))
    again.load_state(first.save_state())
    aged(tmp_path / "b", 10)
    again.sweep()
    assert 2 == again.deleted_total


def test_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    """A configured directory that does not exist yet holds nothing to delete."""
    assert 0 == JanitorCollector(JanitorSettings(dirs=[tmp_path / "none"])).sweep()


def test_from_settings_needs_directories(tmp_path: Path) -> None:
    """Without directories the janitor is not configured."""
    assert JanitorCollector.from_settings(Settings(state_dir=tmp_path)) is None
    configured = Settings(state_dir=tmp_path, collectors={"janitor": {"dirs": [str(tmp_path)]}})
    assert isinstance(JanitorCollector.from_settings(configured), JanitorCollector)
