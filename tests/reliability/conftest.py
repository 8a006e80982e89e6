"""Fixtures of the reliability suite."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import Daemon, daemon_for


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``harness.daemon_for`` whose daemons are SIGKILLed at teardown if a test left them running."""
    made: list[Daemon] = []

    def make(url: str, *, path: Path | None = None, **env: Any) -> Daemon:
        daemon = daemon_for(path or tmp_path, url, **env)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a small tmpfs of the given size at ``tmp_path/state``; skips unless root may mount here."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        point = tmp_path / "state"
        point.mkdir(exist_ok=True)
        options = f"size={size},mode=0700"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=False)
        if result.returncode != 0:
            pytest.skip("this machine does not allow mounting a tmpfs")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)
