"""An access log rotated every tick, by rename and by copytruncate in turn, under the running daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import (
    INTERVAL,
    Central,
    assert_delivered,
    assert_keeps_rhythm,
    events,
    start_central,
    wait_for,
)

LINES_PER_TICK = 50


def access_lines(count: int, first: int) -> bytes:
    """``count`` combined-format lines stamped now, from documentation addresses."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    return b"".join(
        f'203.0.113.{(first + i) % 250} - - [{stamp}] "GET /v HTTP/1.1" 200 512 "-" "probe"\n'.encode()
        for i in range(count)
    )


async def rotate_every_tick(log: Path, stop: asyncio.Event, *, copytruncate: bool) -> int:
    """Append a tick's worth of lines, then rotate by rename, or by rename and copytruncate in turn."""
    written = 0
    rotations = 0
    while not stop.is_set():
        with log.open("ab") as handle:
            handle.write(access_lines(LINES_PER_TICK, written))
        written += LINES_PER_TICK
        await asyncio.sleep(INTERVAL / 2)
        if not copytruncate or rotations % 2 == 0:
            os.replace(log, log.with_name(log.name + ".1"))
            log.touch()
        else:
            data = log.read_bytes()
            log.with_name(log.name + ".1").write_bytes(data)
            os.truncate(log, 0)
        rotations += 1
        await asyncio.sleep(INTERVAL / 2)
    return written


@pytest.mark.parametrize("copytruncate", [False, True], ids=["rename", "rename_and_copytruncate"])
async def test_log_rotated_every_tick(
    copytruncate: bool, aiohttp_server: Any, make_daemon: Any, tmp_path: Path
) -> None:
    """The requests collector follows a log rotated every tick: ticks go on, nothing is double counted or leaked."""
    log = tmp_path / "access.log"
    log.touch()
    central = Central()
    daemon = make_daemon(
        await start_central(aiohttp_server, central),
        POP_AGENT_COLLECTORS__DISABLED='["vaults","janitor"]',
        POP_AGENT_COLLECTORS__REQUESTS__ACCESS_LOG=str(log),
    )
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3 and "requests_total" in central.acked[-1]["metrics"])
    stop = asyncio.Event()
    writer = asyncio.create_task(rotate_every_tick(log, stop, copytruncate=copytruncate))
    try:
        await assert_keeps_rhythm(daemon, seconds=3.0)
    finally:
        stop.set()
        written = await writer
    acked = len(central.acked)
    await wait_for(lambda: len(central.acked) >= acked + 5 and not daemon.pending())
    assert 0 == await daemon.stop()
    assert_delivered(daemon, central)
    # A tick whose requests collector was busy or timed out (at most a quarter, below) carries no count.
    counted = max(doc["metrics"].get("requests_total", 0) for doc in central.acked)
    # Lines a copytruncate empties before they were read are gone, and so is a file renamed twice between two
    # reads (tail -F's limits too); a renamed file is read to its end. Nothing is counted twice.
    assert (written // 2 if copytruncate else written * 3 // 4) <= counted <= written
    statuses = [doc["collectors"]["requests"] for doc in central.acked]
    assert statuses.count("ok") >= len(statuses) * 3 // 4
    assert events(daemon, "tick_failed") == []
    with contextlib.suppress(FileNotFoundError):
        assert b"203.0.113." not in (daemon.state_dir / "collectors" / "requests.json").read_bytes()
    assert not any("203.0.113." in str(doc) for doc in central.received)
