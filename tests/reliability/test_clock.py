"""The wall clock jumping backwards and forwards under the running daemon (libfaketime, Debian's ``faketime``).

Only the wall clock moves, as an NTP step or an operator's ``date -s`` would move
it; the monotonic clock the tick runs on does not. Heartbeat ids are UUIDv7 and
so follow the wall clock: after a step back, new heartbeats sort before old ones.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import (
    Central,
    assert_delivered,
    assert_keeps_rhythm,
    events,
    start_central,
    ticks,
    wait_for,
)

LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))

pytestmark = pytest.mark.skipif(not LIBFAKETIME, reason="libfaketime is not installed (apt-get install faketime)")


def fake_clock_env(offset_file: Path) -> dict[str, str]:
    """Environment that shifts the daemon's wall clock by whatever ``offset_file`` says, re-read on every call."""
    offset_file.write_text("+0\n")
    return {
        "LD_PRELOAD": LIBFAKETIME[0],
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # Its "monotonic fix" makes every thread start take tens of milliseconds, and the
        # daemon starts one per blocking call (agent/threads.py): the ticks would overrun.
        "FAKETIME_FORCE_MONOTONIC_FIX": "0",
    }


async def test_wall_clock_jumps(aiohttp_server: Any, make_daemon: Any, tmp_path: Path) -> None:
    """A day forward, an hour back, then home, then a restart in the past: every heartbeat arrives, seq keeps rising."""
    offset = tmp_path / "clock-offset"
    central = Central()
    daemon = make_daemon(await start_central(aiohttp_server, central), **fake_clock_env(offset))
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3)
    for step in ("+86400", "-3600", "+0", "-7200"):
        offset.write_text(f"{step}\n")
        await assert_keeps_rhythm(daemon, seconds=1.5)
    assert 0 == await daemon.stop()
    await daemon.start()  # restarted while the clock is two hours behind the heartbeats already sent
    acked = len(central.acked)
    await wait_for(lambda: len(central.acked) >= acked + 5)
    offset.write_text("+0\n")
    await assert_keeps_rhythm(daemon, seconds=1.5)
    await wait_for(lambda: not daemon.pending())
    assert 0 == await daemon.stop()
    assert_delivered(daemon, central)
    seqs = ticks(daemon)
    assert seqs == sorted(set(seqs))
    stamps = {doc["ts"][:10] for doc in central.acked}
    assert len(stamps) >= 2  # the jumps did reach the daemon's clock
    assert events(daemon, "tick_failed") == []
    assert events(daemon, "heartbeat_rejected") == []
