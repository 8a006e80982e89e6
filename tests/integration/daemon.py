"""Running the real daemon as a subprocess, the way systemd does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from tests.conftest import agent_env


class Daemon:
    """`python -m agent run` in a clean environment, with its stdout/stderr captured to files."""

    started: ClassVar[list[Daemon]] = []  # every daemon a test started, killed after it (see conftest)

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.tmp_path = tmp_path
        self.env = agent_env(tmp_path, **env)
        self.state_dir = Path(self.env["POP_AGENT_STATE_DIR"])
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.tmp_path / f"daemon-{self.runs}.log"

    async def start(self, *args: str) -> None:
        self.runs += 1
        log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            # At debug, every tick is logged: the tests count ticks and their seq from these lines.
            sys.executable,
            "-m",
            "agent",
            "run",
            "--log-level",
            "debug",
            *args,
            cwd=self.tmp_path,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        Daemon.started.append(self)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line of every run so far."""
        lines = []
        for run in range(1, self.runs + 1):
            path = self.tmp_path / f"daemon-{run}.log"
            for line in path.read_text(errors="replace").splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    lines.append({"event": "unparsed", "text": line})
        return lines

    def all_output(self) -> str:
        return "".join(
            (self.tmp_path / f"daemon-{run}.log").read_text(errors="replace") for run in range(1, self.runs + 1)
        )

    def pending(self) -> list[Path]:
        directory = self.state_dir / "spool" / "pending"
        return sorted(directory.glob("*.json")) if directory.exists() else []

    def written_status(self) -> dict[str, Any]:
        """The daemon's last ``status.json``; empty while there is none (or it is mid-replace)."""
        try:
            status = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}


async def wait_for(condition: Callable[[], bool], timeout: float = 30, step: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


def kill_leftovers() -> None:
    """SIGKILL every daemon a test started and left running (a failed assertion, say)."""
    while Daemon.started:
        Daemon.started.pop().kill()
