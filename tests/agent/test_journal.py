"""Logs under systemd: a `<N>` priority prefix journald reads, and no second timestamp."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import agent_env
from tests.integration.centralserver import Central
from tests.integration.daemon import wait_for
from tests.integration.test_daemon import TOKEN


def journal_env(stream: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The agent's environment with ``JOURNAL_STREAM`` naming ``stream`` as systemd names the journal's socket."""
    info = os.stat(stream)
    return agent_env(tmp_path, JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}", **extra)


def parse(line: str) -> tuple[int, dict[str, Any]]:
    """A journald-style line: its priority and its JSON body."""
    assert line.startswith("<") and line[2] == ">", line
    return int(line[1]), json.loads(line[3:])


async def test_daemon_lines_carry_their_priority(aiohttp_server: Any, tmp_path: Path) -> None:
    """Under JOURNAL_STREAM, info lines are <6>, an outage is <3>, and no line has its own timestamp."""
    central = Central()
    central.respond = lambda batch: web.Response(status=503)
    server = await aiohttp_server(central.app())
    url = str(server.make_url("/ingest/v1/heartbeats"))
    stderr_path = tmp_path / "journal.log"
    stderr_path.touch()
    env = journal_env(
        stderr_path,
        tmp_path,
        POP_AGENT_TELEMETRY="on",
        POP_AGENT_INTERVAL="0.2",
        POP_AGENT_SINKS__CENTRAL__URL=url,
        POP_AGENT_SINKS__CENTRAL__TOKEN=TOKEN,
        POP_AGENT_ALERTS__OUTAGE_AFTER="0.3",
    )
    with stderr_path.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", cwd=tmp_path, env=env, stderr=stderr
        )
    try:
        await wait_for(lambda: '"outage_started"' in stderr_path.read_text(), timeout=60)
    finally:
        proc.terminate()
        assert 0 == await asyncio.wait_for(proc.wait(), 30)
    lines = [parse(line) for line in stderr_path.read_text().splitlines()]
    by_event = {body["event"]: priority for priority, body in lines}
    assert (6, 4, 3) == (by_event["agent_started"], by_event["delivery_failed"], by_event["outage_started"])
    assert all("timestamp" not in body for _, body in lines)


def test_configuration_error_line_is_priority_err(tmp_path: Path) -> None:
    """The one line of a refused start is <3> in the journal, so `journalctl -p err` shows why the unit stopped."""
    stderr_path = tmp_path / "journal.log"
    stderr_path.touch()
    with stderr_path.open("ab") as stderr:
        result = subprocess.run(
            [sys.executable, "-m", "agent", "run"],
            stderr=stderr,
            env=journal_env(stderr_path, tmp_path, POP_AGENT_INTERVAL="0"),
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    assert 78 == result.returncode
    expected = (
        "<3>agent: configuration error: invalid setting: interval (env POP_AGENT_INTERVAL): "
        "Input should be greater than or equal to 0.1"
    )
    assert [expected] == stderr_path.read_text().splitlines()


def test_plain_file_output_is_unchanged(tmp_path: Path) -> None:
    """Without JOURNAL_STREAM matching stderr, lines are plain JSON with a timestamp, as before."""
    stderr_path = tmp_path / "plain.log"
    other = tmp_path / "other"
    other.touch()
    with stderr_path.open("ab") as stderr:
        subprocess.run(
            [sys.executable, "-m", "agent", "--once"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=journal_env(other, tmp_path, POP_AGENT_COLLECTORS__VAULTS__PATH=str(tmp_path / "no-vaults")),
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    events = [json.loads(line) for line in stderr_path.read_text().splitlines() if line.startswith("{")]
    assert events, stderr_path.read_text()
    assert all("timestamp" in event for event in events)
