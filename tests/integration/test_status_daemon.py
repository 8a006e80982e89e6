"""`agent status` against the real daemon: running, in an outage, stopped, never started."""

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
from tests.integration.test_daemon import daemon_for, start_central


def agent_status(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`agent status` with the daemon's own environment, as an operator beside the service runs it."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=daemon.tmp_path,
        env=daemon.env,
    )


async def test_status_follows_the_daemon_through_its_life(aiohttp_server: Any, tmp_path: Path) -> None:
    """Never started is 3, running and healthy is 0, in an outage 150, stopped 3 again; each names the state dir."""
    central = Central()
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central), POP_AGENT_ALERTS__OUTAGE_AFTER="0.5")
    state_dir = str(daemon.state_dir.resolve())
    never = agent_status(daemon)
    assert 3 == never.returncode
    assert f"daemon: never started with state dir {state_dir}" in never.stdout.splitlines()

    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 2)
    running = agent_status(daemon, "--json")
    assert 0 == running.returncode, running.stdout
    report = json.loads(running.stdout)
    assert ("running", daemon.proc.pid if daemon.proc else None, state_dir) == (
        report["daemon"]["state"],
        report["daemon"]["pid"],
        report["daemon"]["state_dir"],
    )

    central.respond = lambda batch: web.Response(status=503)
    await wait_for(lambda: agent_status(daemon).returncode == 150, timeout=60, step=0.5)
    outage = json.loads(agent_status(daemon, "--json").stdout)
    assert ["delivery"] == outage["health"]["outages"]

    assert 0 == await daemon.stop()
    stopped = agent_status(daemon)
    assert 3 == stopped.returncode
    assert stopped.stdout.splitlines()[1].startswith("daemon: stopped (last status ")
    assert stopped.stdout.splitlines()[1].endswith(f"s ago); state dir {state_dir}")


async def test_status_ignores_what_a_one_shot_push_wrote(aiohttp_server: Any, tmp_path: Path) -> None:
    """The status file `agent --once --push` leaves is not the daemon's: status says stopped, without its numbers."""
    central = Central()
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central))
    # Asynchronously: the push talks to central, whose server runs on this test's loop.
    pushed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "--once", "--push", cwd=tmp_path, env=daemon.env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(pushed.communicate(), 60)
    assert 0 == pushed.returncode, stderr
    assert (daemon.state_dir / "status.json").exists()
    report = json.loads(agent_status(daemon, "--json").stdout)
    assert {"state": "stopped", "state_dir": str(daemon.state_dir.resolve())} == report["daemon"]
    assert "sinks" not in report


async def test_status_is_rewritten_once_a_flush_and_at_once_on_a_change(tmp_path: Path) -> None:
    """Between flushes `status.json` stays as written; a collector's change of status is written on its tick."""
    access_log = tmp_path / "access.log"
    daemon = Daemon(
        tmp_path,
        POP_AGENT_INTERVAL="0.2",
        POP_AGENT_DELIVERY__FLUSH_INTERVAL="60",  # a flush every 300 ticks: none within this test
        POP_AGENT_COLLECTORS__REQUESTS__ACCESS_LOG=str(access_log),
    )
    status = daemon.written_status
    await daemon.start()
    try:
        await wait_for(lambda: status().get("collectors", {}).get("requests", {}).get("status") == "missing")
        written = status()["updated"]
        ticks = len(daemon.pending())
        await wait_for(lambda: len(daemon.pending()) >= ticks + 5)
        unchanged = status()["updated"] == written
        access_log.write_text("")
        await wait_for(lambda: status()["collectors"]["requests"]["status"] == "ok", timeout=20)
    finally:
        assert 0 == await daemon.stop()
    assert unchanged


async def test_an_ack_reaches_status_on_the_next_tick_not_a_flush_later(aiohttp_server: Any, tmp_path: Path) -> None:
    """The first flush (at start) is acked; `status.json` shows it within ticks, though the next flush is 60 s away."""
    central = Central()
    url = await start_central(aiohttp_server, central)
    daemon = daemon_for(tmp_path, url, POP_AGENT_DELIVERY__FLUSH_INTERVAL="60")
    await daemon.start()
    try:
        await wait_for(lambda: len(central.acked) >= 1)
        await wait_for(
            lambda: daemon.written_status().get("sinks", {}).get("central", {}).get("last_ack") is not None, timeout=20
        )
    finally:
        assert 0 == await daemon.stop()
