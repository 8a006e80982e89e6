"""The real daemon delivering by remote write, and a backlog spooled for it before it starts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent import heartbeat
from agent.sample import Sample
from agent.settings import SpoolSettings
from agent.spool import Spool
from tests.integration.daemon import Daemon

POP = "test-pop"  # the daemon's pop id in tests (tests.conftest.agent_env)
# Collectors that need a data source these tests do not give.
NOT_HERE = '["vaults","janitor","requests"]'


def rw_daemon(tmp_path: Path, url: str, **env: str) -> Daemon:
    """The real daemon at a 0.2 s interval, delivering to the remote-write receiver at ``url`` only."""
    settings = {
        "POP_AGENT_TELEMETRY": "on",
        "POP_AGENT_INTERVAL": "0.2",
        "POP_AGENT_SINKS__REMOTE_WRITE__URL": url,
        "POP_AGENT_SINKS__REMOTE_WRITE__MAX_RETRY_DELAY": "0.2",
        "POP_AGENT_SINKS__REMOTE_WRITE__READ_TIMEOUT": "2",
        "POP_AGENT_SHUTDOWN_DEADLINE": "3",
        "POP_AGENT_COLLECTORS__DISABLED": NOT_HERE,
    }
    return Daemon(tmp_path, **{**settings, **env})


def spool_backlog(daemon: Daemon, timestamps: list[float], sinks: tuple[str, ...] = ("remote_write",)) -> list[dict]:
    """Spool one valid heartbeat per time in ``timestamps`` (its id and ``ts`` from that time); the documents."""
    docs = []
    spool = Spool(daemon.state_dir / "spool", SpoolSettings(), sinks=sinks)
    daemon.state_dir.mkdir(parents=True, exist_ok=True)
    spool.open()
    try:
        for seq, when in enumerate(timestamps):
            doc = heartbeat.build(
                pop=POP,
                seq=seq,
                edition="community",
                version="0.1.0",
                interval=60.0,
                samples=[Sample("cpu_percent", float(seq % 100)), Sample("load1", seq / 10)],
                collectors={"cpu": "ok"},
                now_ns=int(when * 1e9),
            )
            spool.put(doc["id"], json.dumps(doc).encode())
            docs.append(doc)
    finally:
        spool.close()
    return docs


def minutes_back(minutes: int, *, every: float = 60.0) -> list[float]:
    """Times from ``minutes`` ago up to a minute ago, ``every`` seconds apart."""
    now = time.time()
    return [now - minutes * 60 + i * every for i in range(int((minutes - 1) * 60 / every))]


def sink_status(daemon: Daemon) -> dict:
    """The remote-write sink's entry in the daemon's status.json (empty until the first one is written)."""
    path = daemon.state_dir / "status.json"
    try:
        return dict(json.loads(path.read_text())["sinks"]["remote_write"])
    except (OSError, ValueError, KeyError):
        return {}
