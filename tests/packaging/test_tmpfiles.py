"""The shipped systemd-tmpfiles rule, run by the real systemd-tmpfiles: old tarpit logs go, nothing else does."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "systemd" / "pop-agent.tmpfiles"
DAY = 86_400

pytestmark = pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles (systemd)")


def aged(path: Path, days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("198.51.100.7 scanned\n")
    then = time.time() - days * DAY
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def clean(root: Path) -> None:
    """What the boot-time setup and the daily clean-up of systemd-tmpfiles do, under ``root``."""
    command = ["systemd-tmpfiles", "--create", "--clean", f"--root={root}", str(RULE)]
    subprocess.run(command, check=True, capture_output=True)


def test_files_past_thirty_days_are_removed_and_younger_ones_kept(tmp_path: Path) -> None:
    """Files whose modification time is over 30 days old go, in subdirectories too; younger ones stay."""
    logs = tmp_path / "var" / "log" / "tarpit"
    old = [aged(logs / "tarpit.log.31", 31), aged(logs / "2026" / "tarpit.log.90", 90)]
    young = [aged(logs / "tarpit.log", 0), aged(logs / "tarpit.log.29", 29)]
    clean(tmp_path)
    assert [False, False, True, True] == [p.exists() for p in old + young]


def test_nothing_outside_the_directory_is_touched_and_nothing_is_created(tmp_path: Path) -> None:
    """An old file reached through a link stays, and without the directory the rule creates nothing."""
    precious = aged(tmp_path / "srv" / "vaults" / "precious.db", 400)
    logs = tmp_path / "var" / "log" / "tarpit"
    logs.mkdir(parents=True)
    (logs / "vaults").symlink_to(precious.parent, target_is_directory=True)
    clean(tmp_path)
    assert precious.exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    clean(bare)
    assert [] == list(bare.iterdir())
