"""Fixtures of the reliability suite."""

from __future__ import annotations

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
