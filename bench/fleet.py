"""What the remote-write benches share: heartbeat documents as a POP sends them, and a process's CPU and RSS."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from agent.heartbeat import rfc3339, uuid7
from agent.sample import Pending

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MOUNTS = ("/", "/var", "/var/lib/vaults")
CLASSES = ("2xx", "3xx", "4xx", "5xx")


def heartbeat_doc(pop: str, seq: int, ts: float, rand: random.Random) -> dict[str, Any]:
    """A ``pop-heartbeat/1`` document shaped like the daemon's: every built-in collector's metrics and the agent's."""
    metrics: dict[str, float | int] = {
        "cpu_percent": round(rand.uniform(0, 100), 1),
        "load1": round(rand.uniform(0, 4), 2),
        "load5": round(rand.uniform(0, 4), 2),
        "load15": round(rand.uniform(0, 4), 2),
        "cpu_count": 8,
        "mem_used_percent": round(rand.uniform(20, 90), 1),
        "mem_total_bytes": 34_359_738_368,
        "mem_available_bytes": rand.randrange(2**30, 2**34),
        "swap_used_percent": 0.0,
        "net_bytes_sent_total": 10**9 + seq * 4096,
        "net_bytes_recv_total": 10**10 + seq * 8192,
        "net_errors_in_total": 0,
        "net_errors_out_total": 0,
        "uptime_seconds": 86_400 + seq * 10,
        "process_count": 180 + seq % 7,
        "vault_count": 1200 + seq % 50,
        "requests_total": 1_000_000 + seq * 37,
        "requests_per_s": round(rand.uniform(0, 300), 2),
        "unique_ips_1h": rand.randrange(5000),
        "unique_ips_24h": rand.randrange(50000),
        "spool_pending": rand.randrange(3),
        "spool_bytes": rand.randrange(3) * 1500,
        "spool_oldest_age_seconds": round(rand.uniform(0, 10), 3),
        "spool_dropped_total": 0,
        "spool_rejected_total": 0,
        "scrub_rejected_total": 0,
        "collector_errors_total": seq // 1000,
        "tick_overruns_total": 0,
        "agent_uptime_seconds": seq * 10.0,
        "outage_active": 0,
        "delivery_failures_consecutive": 0,
    }
    series = [
        {"name": "disk_used_percent", "labels": {"mount": m}, "value": round(rand.uniform(5, 95), 1)} for m in MOUNTS
    ]
    series += [{"name": "disk_free_bytes", "labels": {"mount": m}, "value": rand.randrange(2**36)} for m in MOUNTS]
    series += [
        {"name": "requests_class_per_s", "labels": {"class": c}, "value": round(rand.uniform(0, 50), 2)}
        for c in CLASSES
    ]
    return {
        "schema": "pop-heartbeat/1",
        "id": uuid7(int(ts * 1e9)),
        "pop": pop,
        "ts": rfc3339(ts),
        "seq": seq,
        "edition": "commercial",
        "agent_version": "0.1.0",
        "interval_s": 10.0,
        "metrics": metrics,
        "series": series,
        "collectors": {"cpu": "ok", "memory": "ok", "disk": "ok", "network": "ok", "system": "ok", "requests": "ok"},
    }


def pending(doc: dict[str, Any]) -> Pending:
    """The document as the spool hands it to a sink (compact JSON, parsed again by the sink)."""
    return Pending(doc["id"], json.dumps(doc, separators=(",", ":")).encode())


def pid_listening_on(port: int) -> int:
    """The pid of the process started with ``127.0.0.1:<port>`` on its command line."""
    needle = f"127.0.0.1:{port}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    raise LookupError(f"no process listens on {port}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    """The process's resident set (``VmRSS``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
