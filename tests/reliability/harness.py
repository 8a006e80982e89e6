"""What every reliability scenario shares: the daemon under test, its rhythm, and the delivery invariant.

Built on the integration helpers (:class:`~tests.integration.daemon.Daemon`,
:class:`~tests.integration.centralserver.Central`); this module adds only what
the scenarios assert with.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.integration.centralserver import Central
from tests.integration.daemon import Daemon, wait_for

TOKEN = "central-RELIABILITY-token-77"
INTERVAL = 0.1
# Collectors that are not built yet, or need a data source these scenarios do not give.
NOT_HERE = '["vaults","janitor","requests"]'
# How long a daemon may take to start on a loaded machine: a deadline to poll against, never a sleep.
STARTUP_TIMEOUT = 120.0


def daemon_for(tmp_path: Path, url: str, **env: str) -> Daemon:
    """The real daemon at a 0.1 s interval, delivering to ``url``, with fast retries and timeouts."""
    settings = {
        "POP_AGENT_TELEMETRY": "on",
        "POP_AGENT_INTERVAL": str(INTERVAL),
        "POP_AGENT_SINKS__CENTRAL__URL": url,
        "POP_AGENT_SINKS__CENTRAL__TOKEN": TOKEN,
        "POP_AGENT_DELIVERY__BACKOFF_INITIAL": "0.05",
        "POP_AGENT_DELIVERY__BACKOFF_MAX": "0.2",
        "POP_AGENT_SINKS__CENTRAL__READ_TIMEOUT": "1",
        "POP_AGENT_SINKS__CENTRAL__CONNECT_TIMEOUT": "1",
        "POP_AGENT_SHUTDOWN_DEADLINE": "3",
        "POP_AGENT_COLLECTORS__DISABLED": NOT_HERE,
    }
    return Daemon(tmp_path, **{**settings, **env})


def unavailable(batch: Any) -> web.Response:
    """A central answer that keeps every heartbeat spooled: 503, retry at once."""
    return web.Response(status=503, headers={"Retry-After": "0"})


def ticks(daemon: Daemon) -> list[int]:
    """The seq of every heartbeat the daemon logged as spooled, over all its runs."""
    return [line["seq"] for line in daemon.logs() if line.get("event") == "tick"]


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    """Every log line of the daemon with event ``name``."""
    return [line for line in daemon.logs() if line.get("event") == name]


async def ticks_during(daemon: Daemon, seconds: float) -> int:
    """How many heartbeats the daemon spooled in the next ``seconds``; the daemon must stay up throughout."""
    before = len(ticks(daemon))
    await asyncio.sleep(seconds)
    assert daemon.proc is not None and daemon.proc.returncode is None, "the daemon died"
    return len(ticks(daemon)) - before


def run_ticks(daemon: Daemon) -> int:
    """How many heartbeats the daemon's current run has logged as spooled."""
    if not daemon.log_path.exists():
        return 0
    count = 0
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        try:
            count += json.loads(line).get("event") == "tick"
        except (ValueError, AttributeError):
            continue
    return count


async def assert_keeps_rhythm(daemon: Daemon, seconds: float = 3.0, interval: float = INTERVAL) -> None:
    """Over ``seconds`` the daemon spools at least an eighth of the heartbeats its interval promises.

    The slack is generous on purpose: the machine is shared (a fully loaded run
    once gave 4 heartbeats in 2 s at 0.1 s); a stalled or dead tick loop spools
    none at all, which is what this tells apart. The window opens once the
    current run has spooled its first heartbeat: a daemon just started may spend
    seconds of a loaded machine importing and opening a large spool, which is
    start-up, not rhythm.
    """
    await wait_for(lambda: run_ticks(daemon) > 0, timeout=STARTUP_TIMEOUT)
    count = await ticks_during(daemon, seconds)
    expected = seconds / interval
    assert count >= expected / 8, f"{count} heartbeats in {seconds} s, expected about {expected:.0f}"


def assert_seq_rhythm(first: int, last: int, seconds: float, interval: float = INTERVAL) -> None:
    """Heartbeat numbers advanced over ``seconds`` by at least a quarter of what the interval promises.

    ``seq`` is taken at every tick, spooled or not, so it shows the tick loop
    went on while nothing could be written.
    """
    expected = seconds / interval
    assert last - first >= expected / 4, f"seq went from {first} to {last} in {seconds:.1f} s"


def rejected_ids(daemon: Daemon) -> dict[str, str]:
    """Heartbeats set aside in ``spool/rejected/``, by id, with the reason recorded beside each."""
    out = {}
    for sidecar in (daemon.state_dir / "spool" / "rejected").glob("*.reason.json"):
        doc_id = sidecar.name.removesuffix(".reason.json")
        out[doc_id] = json.loads(sidecar.read_bytes())["reason"]
    return out


def assert_delivered(daemon: Daemon, central: Central) -> None:
    """Every heartbeat the daemon logged as spooled reached central, once the spool is empty."""
    assert daemon.pending() == []
    spooled = set(ticks(daemon))
    acked = {doc["seq"] for doc in central.acked}
    assert spooled, "nothing was spooled"
    assert set() == spooled - acked


async def start_central(aiohttp_server: Any, central: Central) -> str:
    """Serve ``central`` on 127.0.0.1, port 0; its ingest URL."""
    server = await aiohttp_server(central.app())
    return str(server.make_url("/ingest/v1/heartbeats"))


async def run_agent(daemon: Daemon, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """One agent command beside the daemon, with the daemon's environment."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        cwd=daemon.tmp_path,
        env=daemon.env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def make_read_only(point: Path) -> None:
    """Cover ``point`` with a read-only bind mount of itself: every new write under it fails with EROFS.

    A plain ``remount,ro`` is refused while the daemon holds files open for
    writing (its lock file); the bind mount on top is not, and
    :func:`make_writable` lifts it again.
    """
    subprocess.run(["mount", "--bind", str(point), str(point)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], check=True)


def make_writable(point: Path) -> None:
    """Undo :func:`make_read_only`."""
    subprocess.run(["umount", str(point)], check=True)


def fill(point: Path) -> Path:
    """Fill the file system at ``point`` to the last byte with a ballast file; its path."""
    ballast = point / "ballast"
    chunk = b"\0" * 4096
    with ballast.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\0")
        except OSError:
            pass
    return ballast


__all__ = [
    "INTERVAL",
    "STARTUP_TIMEOUT",
    "TOKEN",
    "Central",
    "Daemon",
    "assert_delivered",
    "assert_keeps_rhythm",
    "assert_seq_rhythm",
    "daemon_for",
    "events",
    "fill",
    "make_read_only",
    "make_writable",
    "rejected_ids",
    "run_agent",
    "run_ticks",
    "start_central",
    "ticks",
    "ticks_during",
    "wait_for",
]
