"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

RunAgent = Callable[..., subprocess.CompletedProcess[str]]

# No property test has a time limit: Hypothesis' default 200 ms deadline is a timed
# assertion, and these machines are shared and noisy (speed is for `make bench`).
settings.register_profile("pop-agent", deadline=None)
settings.load_profile("pop-agent")


def agent_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment for the agent that ignores the host's own settings and state."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POP_AGENT_", "NTFY_", "KUMA_", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "STATE_DIR"))
    }
    # An empty config file of its own, so a host's /etc/pop-agent/agent.toml never leaks in.
    empty = tmp_path / "empty.toml"
    empty.touch()
    env["POP_AGENT_CONFIG"] = str(empty)
    env["POP_AGENT_STATE_DIR"] = str(tmp_path / "state")
    env["POP_AGENT_POP_ID"] = "test-pop"
    env["PYTHONPATH"] = str(REPO)
    # Tests tick every fraction of a second and look for each tick's heartbeat at the
    # receiver; the default delivery.flush_interval (30 s) has tests of its own.
    env["POP_AGENT_DELIVERY__FLUSH_INTERVAL"] = "0"
    env.update(extra)
    return env


@pytest.fixture
def run_agent(tmp_path: Path) -> RunAgent:
    """Run ``python -m agent`` as a user would, in a clean environment; returns the completed process."""

    def run(*args: str, input: str | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            env=agent_env(tmp_path, **env),
        )

    return run


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (no authority trusts it), made by the openssl CLI."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(autouse=True)
def no_leftover_daemons() -> Iterator[None]:
    """A daemon a failed test left running is killed, so it cannot load the machine for later tests."""
    yield
    from tests.integration.daemon import kill_leftovers

    kill_leftovers()
