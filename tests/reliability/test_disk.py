"""The state directory on a real small file system that fills up or turns read-only under the daemon."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tests.reliability.harness import (
    Central,
    assert_delivered,
    assert_keeps_rhythm,
    assert_seq_rhythm,
    events,
    fill,
    make_read_only,
    make_writable,
    start_central,
    ticks,
    unavailable,
    wait_for,
)

FAULT_SECONDS = 2.0


async def test_full_disk_keeps_ticking_logs_once_and_resumes(
    aiohttp_server: Any, make_daemon: Any, small_fs: Any
) -> None:
    """ENOSPC on the spool: ticks go on, the failure is logged once, spooling resumes when space returns."""
    state = small_fs("1m")
    central = Central()
    daemon = make_daemon(await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3)
    central.respond = unavailable  # what is spooled before the disk fills must survive it
    await wait_for(lambda: len(daemon.pending()) >= 3)
    loop = asyncio.get_running_loop()
    before, started = max(ticks(daemon)), loop.time()
    ballast = fill(state)
    await wait_for(lambda: bool(events(daemon, "spool_write_failed")))
    await asyncio.sleep(FAULT_SECONDS)
    assert daemon.proc is not None and daemon.proc.returncode is None
    ballast.unlink()
    spooled_before = len(ticks(daemon))
    await wait_for(lambda: len(ticks(daemon)) > spooled_before)
    assert_seq_rhythm(before, ticks(daemon)[spooled_before], loop.time() - started)
    await assert_keeps_rhythm(daemon)
    central.respond = None
    await wait_for(lambda: not daemon.pending() and len(central.acked) > len(ticks(daemon)) // 2)
    assert 0 == await daemon.stop()
    assert_delivered(daemon, central)
    assert [line["code"] for line in events(daemon, "spool_write_failed")] == ["enospc"]
    assert len(events(daemon, "spool_write_recovered")) == 1


async def test_backlog_that_fills_the_disk_drains_when_central_returns(
    aiohttp_server: Any, make_daemon: Any, small_fs: Any
) -> None:
    """Central down until the backlog fills the disk: once it is back, delivery makes room and spooling resumes."""
    state = small_fs("1m")
    central = Central()
    central.respond = unavailable
    daemon = make_daemon(await start_central(aiohttp_server, central))
    ballast = fill(state)
    os.truncate(ballast, ballast.stat().st_size - 48 * 1024)  # room for a backlog of a dozen or two
    await daemon.start()
    await wait_for(lambda: bool(events(daemon, "spool_write_failed")))
    stuck = len(daemon.pending())
    assert stuck >= 3
    central.respond = None
    await wait_for(lambda: bool(events(daemon, "spool_write_recovered")))
    await assert_keeps_rhythm(daemon)
    assert 0 == await daemon.stop()
    assert_delivered(daemon, central)


async def test_full_disk_at_start_never_hands_out_a_seq_twice(
    aiohttp_server: Any, make_daemon: Any, small_fs: Any
) -> None:
    """Started on a full disk, then killed once space is back: no heartbeat number is used twice."""
    state = small_fs("1m")
    central = Central()
    daemon = make_daemon(await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3)
    assert 0 == await daemon.stop()
    ballast = fill(state)
    await daemon.start()
    await asyncio.sleep(FAULT_SECONDS)
    assert daemon.proc is not None and daemon.proc.returncode is None
    ballast.unlink()
    acked = len(central.acked)
    await wait_for(lambda: len(central.acked) >= acked + 5)
    daemon.kill()
    await daemon.proc.wait()
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= acked + 10)
    assert 0 == await daemon.stop()
    by_seq: dict[int, set[str]] = {}
    for doc in central.acked:
        by_seq.setdefault(doc["seq"], set()).add(doc["id"])
    assert {} == {seq: ids for seq, ids in by_seq.items() if len(ids) > 1}


async def test_read_only_state_dir(aiohttp_server: Any, make_daemon: Any, small_fs: Any) -> None:
    """The state directory turns read-only: ticks go on, nothing is lost, and all is delivered once it is writable.

    Read-only by a bind mount on top (see ``make_read_only``): whatever the spool
    does through directories it already holds open still reaches the disk below.
    """
    state = small_fs("4m")
    central = Central()
    daemon = make_daemon(await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3)
    central.respond = unavailable
    await wait_for(lambda: len(daemon.pending()) >= 3)
    loop = asyncio.get_running_loop()
    before, started = max(ticks(daemon)), loop.time()
    make_read_only(state)
    try:
        await wait_for(lambda: bool(events(daemon, "spool_write_failed")))
        central.respond = None  # acks arrive while nothing can be deleted
        await asyncio.sleep(FAULT_SECONDS)
        assert daemon.proc is not None and daemon.proc.returncode is None
    finally:
        make_writable(state)
    spooled_before = len(ticks(daemon))
    await wait_for(lambda: len(ticks(daemon)) > spooled_before)
    assert_seq_rhythm(before, ticks(daemon)[spooled_before], loop.time() - started)
    await assert_keeps_rhythm(daemon)
    await wait_for(lambda: not daemon.pending(), timeout=15)
    assert 0 == await daemon.stop()
    assert_delivered(daemon, central)
    assert [line["code"] for line in events(daemon, "spool_write_failed")] == ["erofs"]


async def test_read_only_state_dir_at_start(aiohttp_server: Any, make_daemon: Any, small_fs: Any) -> None:
    """Started on a read-only state directory the daemon refuses with a one-line reason, and nothing is lost."""
    state = small_fs("4m")
    central = Central()
    central.respond = unavailable
    daemon = make_daemon(await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(daemon.pending()) >= 3)
    assert 0 == await daemon.stop()
    kept = daemon.pending()
    make_read_only(state)
    try:
        await daemon.start()
        assert daemon.proc is not None
        code = await asyncio.wait_for(daemon.proc.wait(), 30)
    finally:
        make_writable(state)
    assert code == 78  # an unwritable state directory is the operator's to fix: systemd does not restart it
    assert "Traceback" not in daemon.log_path.read_text()
    assert "not writable (Read-only file system)" in daemon.log_path.read_text()
    assert kept == daemon.pending()
