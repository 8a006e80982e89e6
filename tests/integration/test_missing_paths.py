"""A configured path that does not exist is never "ok": missing locally, error in the heartbeat, logged once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunAgent
from tests.integration.daemon import Daemon, wait_for


def test_once_reports_a_missing_access_log(run_agent: RunAgent, tmp_path: Path) -> None:
    """`agent --once` with a missing access log exits 1, names it missing, and the heartbeat says error."""
    result = run_agent("--once", POP_AGENT_COLLECTORS__REQUESTS__ACCESS_LOG=str(tmp_path / "access.log"))
    assert 1 == result.returncode
    assert "error" == json.loads(result.stdout)["collectors"]["requests"]
    assert "agent: collector requests: missing" in result.stderr.splitlines()


async def test_daemon_shows_missing_until_the_log_appears(tmp_path: Path) -> None:
    """The daemon logs `missing` once, `agent status` shows it, and it turns ok when the file appears."""
    access_log = tmp_path / "access.log"
    daemon = Daemon(tmp_path, POP_AGENT_INTERVAL="0.2", POP_AGENT_COLLECTORS__REQUESTS__ACCESS_LOG=str(access_log))

    def requests_status() -> str | None:
        return daemon.written_status().get("collectors", {}).get("requests", {}).get("status")

    await daemon.start()
    try:
        await wait_for(lambda: requests_status() == "missing" and len(daemon.pending()) >= 3)
        shown = subprocess.run(
            [sys.executable, "-m", "agent", "status"], capture_output=True, text=True, env=daemon.env, timeout=60
        )
        assert any(line.startswith("collector requests: missing (errors ") for line in shown.stdout.splitlines())
        heartbeat = json.loads(daemon.pending()[-1].read_text())
        assert "error" == heartbeat["collectors"]["requests"]
        access_log.write_text("")
        await wait_for(lambda: requests_status() == "ok")
    finally:
        assert 0 == await daemon.stop()
    failed = [line for line in daemon.logs() if line.get("event") == "collector_failed"]
    assert [("requests", "missing", "missing")] == [
        (line["collector"], line["status"], line["code"]) for line in failed
    ]
