"""``agent sent`` as an operator runs it: --since, --json and --verify's exit codes."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from agent.ledger import Ledger
from agent.ledger_record import SentRecord, sha256_hex
from tests.conftest import RunAgent


def _ntfy_records(tmp_path: Path, *ages: float, body: bytes = b"{}") -> None:
    """Append one ntfy record per age (seconds ago), its body kept."""
    directory = tmp_path / "state" / "ledger"
    ledger = Ledger(directory, max_age=86_400, max_bytes=1 << 20, keep_bodies=True, bodies_max_bytes=1 << 20)
    where = "https://ntfy.sh:443/********"
    records = [SentRecord(time.time() - age, "ntfy", "POST", where, len(body), sha256_hex(body), 200) for age in ages]
    ledger.append([(record, body) for record in records])
    ledger.close()


def test_since_keeps_only_recent_records(run_agent: RunAgent, tmp_path: Path) -> None:
    """--since 30m lists the record from a minute ago, not the one from two hours ago."""
    _ntfy_records(tmp_path, 7200, 60)
    done = run_agent("sent", "--since", "30m", "--json")
    times = [datetime.fromisoformat(json.loads(line)["time"]).timestamp() for line in done.stdout.splitlines()]

    assert 0 == done.returncode
    assert 1 == len(times) and time.time() - times[0] < 1800


def test_verify_passes_a_clean_text_body_and_fails_one_holding_an_address(run_agent: RunAgent, tmp_path: Path) -> None:
    """An ntfy message with no address verifies; one naming an address exits 1 without printing it."""
    _ntfy_records(tmp_path, 10, body=b"POP ams1: heartbeat delivery is back after 5m 00s.")
    clean = run_agent("sent", "--verify")
    _ntfy_records(tmp_path, 5, body=b"POP ams1 lost 192.0.2.44")
    dirty = run_agent("sent", "--verify")

    assert (0, "1 requests, 0 heartbeats, 0 findings") == (clean.returncode, clean.stdout.splitlines()[-1])
    assert 1 == dirty.returncode
    assert "record 2 (" in dirty.stderr and "192.0.2.44" not in dirty.stderr + dirty.stdout
