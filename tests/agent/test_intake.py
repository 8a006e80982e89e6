"""Intake from ``agent enqueue``: only regular files are read, and nothing there can block the spool's thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import heartbeat, intake
from agent.sample import MetricKind, MetricSpec, Sample
from agent.scrubber import Allowlist
from agent.settings import SpoolSettings
from agent.spool import Spool
from agent.state import INCOMING
from tests.heartbeats import make_heartbeat

ALLOWED = Allowlist([MetricSpec("cpu_percent", MetricKind.GAUGE, "CPU.", "%")], collectors=["cpu"])


def off_thread(call: Callable[[], object], seconds: float = 20.0) -> object:
    """Run ``call`` in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "blocked"
    return result[0]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer is refused at once: opened non-blocking, then found not to be a regular file."""
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)

    def read() -> str:
        try:
            intake.read_regular(fifo)
        except ValueError:
            return "refused"
        return "read"

    assert "refused" == off_thread(read)


@pytest.mark.parametrize("kind", ["symlink", "directory", "oversized"])
def test_anything_but_a_heartbeat_sized_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    """A link (even to a good file), a directory or a file past the size bound is not read."""
    good = tmp_path / "good.json"
    good.write_bytes(b"{}")
    path = tmp_path / "x.json"
    if kind == "symlink":
        path.symlink_to(good)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b" " * (intake.MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(ValueError):
        intake.read_regular(path)


def test_take_incoming_spools_good_documents_and_drops_fifos(tmp_path: Path) -> None:
    """Beside a FIFO named like a heartbeat, a good document is spooled; the FIFO is refused, counted and removed."""
    spool = Spool(tmp_path / "spool", SpoolSettings(), sinks=("central",), fsync=False)
    spool.open()
    try:
        incoming = spool.root / INCOMING
        incoming.mkdir()
        good = make_heartbeat(1, [Sample("cpu_percent", 3.0)])
        (incoming / f"{good['id']}.json").write_bytes(heartbeat.dumps(good))
        fifo_id = heartbeat.uuid7()
        os.mkfifo(incoming / f"{fifo_id}.json")
        refused = off_thread(lambda: intake.take_incoming(spool, ALLOWED))
        assert (1, [], 1) == (refused, sorted(incoming.iterdir()), spool.stats().pending)
    finally:
        spool.close()
