"""`agent status`: whether the daemon runs, and what it last said about itself.

Whether it runs comes from the spool's lock, not from the status file: the
daemon holds an exclusive ``flock`` on ``spool/lock`` for as long as it lives,
and the kernel lists the holder's pid in ``/proc/locks``. Reading that list
takes no lock, so `agent status` can never make a starting daemon find its
spool "locked". The status file is the daemon's last word; one written by
another command (``agent upload``, ``agent --once --push``) is not the daemon's
and is ignored.

Exit codes follow ``systemctl status``: 0 the daemon runs and nothing is in an
outage; 3 no daemon runs; 150 it runs but an outage is on (all from :mod:`agent.exits`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.exits import EX_NOT_RUNNING, EX_OK, EX_RUNNING_OUTAGE
from agent.state import read_json
from agent.status_file import STATUS_FILE

PROC_LOCKS = Path("/proc/locks")

DaemonState = Literal["running", "stopped", "never started", "busy"]


@dataclass
class Daemon:
    """What can be known of the daemon from the state directory alone."""

    state: DaemonState
    pid: int | None = None
    status: dict[str, Any] = field(default_factory=dict)


def lock_holder(lock_file: Path, proc_locks: Path = PROC_LOCKS) -> int | None:
    """The pid holding an ``flock`` on ``lock_file``, or ``None`` when nobody holds it."""
    try:
        info = lock_file.stat()
        listing = proc_locks.read_text()
    except OSError:
        return None
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in listing.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; blocked waiters carry a "->" first.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and fields[4].isdigit():
            return int(fields[4])
    return None


def inspect(state_dir: Path, proc_locks: Path = PROC_LOCKS) -> Daemon:
    """Running, stopped, never started, or busy (another command holds the spool)."""
    lock = state_dir / "spool" / "lock"
    if not lock.exists():
        return Daemon("never started")
    status = read_json(state_dir / STATUS_FILE) or {}
    daemon_status = status if status.get("daemon") is True else {}
    holder = lock_holder(lock, proc_locks)
    if holder is None:
        return Daemon("stopped", daemon_status.get("pid"), daemon_status)
    if daemon_status.get("pid") == holder:
        return Daemon("running", holder, daemon_status)
    # A daemon that has not written its first status yet, or `agent upload` draining by hand.
    return Daemon("busy", holder, {})


def exit_code(daemon: Daemon) -> int:
    """0 running and no outage on; 3 not running; 150 running in an outage."""
    if daemon.state != "running":
        return EX_NOT_RUNNING
    return EX_RUNNING_OUTAGE if daemon.status.get("health", {}).get("outages") else EX_OK


def report(daemon: Daemon, state_dir: Path, base: dict[str, Any]) -> dict[str, Any]:
    """The status report: ``base`` (edition, spool on disk) with the daemon's state and last word."""
    result = dict(base)
    entry: dict[str, Any] = {"state": daemon.state, "state_dir": str(state_dir.resolve())}
    if daemon.pid is not None:
        entry["pid"] = daemon.pid
    if "updated" in daemon.status:
        entry["updated_age_s"] = round(time.time() - float(daemon.status["updated"]), 1)
    result["daemon"] = entry
    if daemon.state == "running":
        for key in ("sinks", "collectors", "health", "counters"):
            if key in daemon.status:
                result[key] = daemon.status[key]
    return result


def render(report_: dict[str, Any], as_json: bool) -> str:
    """The report as text for people, or as JSON."""
    if as_json:
        return json.dumps(report_, indent=2, sort_keys=True)
    lines = [f"edition: {report_['edition']}  version: {report_['version']}  telemetry: {report_['telemetry']}"]
    daemon = report_["daemon"]
    lines.append(f"daemon: {_daemon_line(daemon)}")
    spool = report_.get("spool", {})
    if "error" in spool:
        lines.append(f"spool: unreadable ({spool['error']})")
    elif spool:
        lines.append(
            f"spool: {spool['pending']} pending, {spool['bytes']} bytes, oldest {spool['oldest_age_s']} s; "
            f"dropped {spool['dropped_total']}, quarantined {spool['quarantined_total']}, "
            f"rejected {spool['rejected_total']}"
        )
    for name, sink in report_.get("sinks", {}).items():
        last_ack = sink.get("last_ack")
        ack = f"{round(time.time() - last_ack, 1)} s ago" if last_ack else "never"
        lines.append(
            f"sink {name}: last ack {ack}, consecutive failures {sink['consecutive_failures']}"
            + (f", failing: {sink['last_failure']}" if sink.get("last_failure") else "")
        )
    health = report_.get("health")
    if health:
        lines.append("health: " + ", ".join(f"{k}={v}" for k, v in sorted(health.items())))
    for name, collector in report_.get("collectors", {}).items():
        lines.append(f"collector {name}: {collector['status']} (errors {collector['errors_total']})")
    return "\n".join(lines)


def _daemon_line(daemon: dict[str, Any]) -> str:
    where = f"state dir {daemon['state_dir']}"
    state = daemon["state"]
    if state == "running":
        return f"running (pid {daemon['pid']}, last status {daemon.get('updated_age_s', '?')} s ago); {where}"
    if state == "busy":
        return f"not running; another agent command (pid {daemon['pid']}) holds the spool; {where}"
    if state == "stopped":
        seen = f" (last status {daemon['updated_age_s']} s ago)" if "updated_age_s" in daemon else ""
        return f"stopped{seen}; {where}"
    return f"never started with {where}"
