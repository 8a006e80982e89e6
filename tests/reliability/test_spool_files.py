"""Corrupted, truncated, empty and foreign files in every spool folder and state file, before start and after."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent import heartbeat
from agent.spool_store import RECENT_BYTES
from tests.heartbeats import make_heartbeat
from tests.reliability.harness import (
    Central,
    assert_delivered,
    assert_keeps_rhythm,
    events,
    start_central,
    ticks,
    unavailable,
    wait_for,
)
from tests.reliability.test_crash import spool_backlog

GARBAGE: dict[str, bytes] = {
    "empty": b"",
    "truncated": b'{"schema":"pop-heartbeat/1","id":"01',
    "binary": bytes(range(256)) * 4,
    "not_utf8": b'{"id": "\xff\xfe"}',
    "foreign": b"notes from an operator\n",
    "array": b"[1, 2, 3]",
    "deep": b"[" * 100_000,
    "huge_number": b'{"id": 1e999999}',
}
STATE_FILES = ("seq.json", "status.json", "alerts.json", "collectors/cpu.json", "spool/state.json", "spool/lock")
FOLDERS = ("pending", "incoming", "tmp", "trash", "quarantine", "rejected")


def litter(folder: Path, tag: str) -> int:
    """Put every kind of garbage into ``folder``: files, id-named files, a directory, a symlink, a FIFO."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for kind, data in GARBAGE.items():
        (folder / f"{tag}-{kind}").write_bytes(data)
        (folder / f"{heartbeat.uuid7()}.json").write_bytes(data)
        (folder / f"{heartbeat.uuid7()}.reason.json").write_bytes(data)
        count += 3
    (folder / f"{heartbeat.uuid7()}.json").mkdir()
    (folder / f"{tag}-dir").mkdir()
    (folder / f"{tag}-dir" / "inside").write_bytes(b"x")
    (folder / f"{heartbeat.uuid7()}.json").symlink_to("/etc/hostname")
    os.mkfifo(folder / f"{heartbeat.uuid7()}.json")
    # A valid heartbeat under the wrong name.
    doc = make_heartbeat(1, collectors={}, interval=1.0)
    (folder / f"{heartbeat.uuid7()}.json").write_bytes(heartbeat.dumps(doc))
    return count + 5


def damage_state_files(state_dir: Path, data: bytes, names: tuple[str, ...] = STATE_FILES) -> None:
    for name in names:
        path = state_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def sent_only_heartbeats(central: Central, valid: set[str]) -> None:
    """Central received nothing but heartbeats the agent made or spooled whole."""
    for doc in central.received:
        assert doc["schema"] == "pop-heartbeat/1"
        assert doc["pop"] == "test-pop"
    assert {doc["id"] for doc in central.received} >= valid


async def test_garbage_everywhere_before_start(aiohttp_server: Any, make_daemon: Any) -> None:
    """A state directory littered with garbage: the daemon starts, sets it aside, delivers every real heartbeat."""
    central = Central()
    daemon = make_daemon(await start_central(aiohttp_server, central))
    backlog = spool_backlog(daemon.state_dir, 20)
    spool = daemon.state_dir / "spool"
    for folder in FOLDERS:
        litter(spool / folder, folder)
    damage_state_files(daemon.state_dir, b'{"reserved": "many", "cursors": [')
    await daemon.start()
    await wait_for(lambda: backlog <= central.acked_ids and len(central.acked) >= len(backlog) + 5)
    await assert_keeps_rhythm(daemon)
    assert 0 == await daemon.stop()
    assert_delivered(daemon, central)
    sent_only_heartbeats(central, backlog)
    assert [] == [path.name for path in (spool / "pending").iterdir()]
    assert events(daemon, "tick_failed") == []


async def test_garbage_everywhere_while_running(aiohttp_server: Any, make_daemon: Any) -> None:
    """Spooled heartbeats damaged, and garbage dropped in every folder, under a running daemon with a backlog."""
    central = Central()
    central.respond = unavailable
    daemon = make_daemon(await start_central(aiohttp_server, central))
    await daemon.start()
    # Files the daemon no longer holds in memory (newer heartbeats fill its RECENT_BYTES):
    # from here on, their bytes on disk are all there is of them.
    await wait_for(lambda: sum(path.stat().st_size for path in daemon.pending()[12:]) > RECENT_BYTES)
    spool = daemon.state_dir / "spool"
    damaged: set[int] = set()
    for path, data in zip(daemon.pending()[2:10], GARBAGE.values(), strict=True):
        damaged.add(json.loads(path.read_bytes())["seq"])
        path.write_bytes(data)  # in place, as a failing disk would
    unreadable = daemon.pending()[11]  # a file whose every read fails, as on a failing disk
    damaged.add(json.loads(unreadable.read_bytes())["seq"])
    unreadable.unlink()
    unreadable.mkdir()
    fifo = daemon.pending()[10]  # reading it would wait for a writer that never comes
    damaged.add(json.loads(fifo.read_bytes())["seq"])
    fifo.unlink()
    os.mkfifo(fifo)
    for folder in FOLDERS:
        litter(spool / folder, f"late-{folder}")
    # seq.json too: its twin seq.json.1 keeps seq rising across the restart below.
    damage_state_files(daemon.state_dir, b"\x00" * 100, STATE_FILES)
    await assert_keeps_rhythm(daemon)
    central.respond = None
    await wait_for(lambda: len(central.acked) >= len(ticks(daemon)) - len(damaged) - 3)
    assert 0 == await daemon.stop()
    # The next start sets aside what was dropped into pending/ meanwhile, and goes on.
    acked = len(central.acked)
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= acked + 5 and not daemon.pending())
    assert 0 == await daemon.stop()
    assert daemon.pending() == []
    spooled = set(ticks(daemon)) - damaged
    acked = {doc["seq"] for doc in central.acked}
    assert set() == spooled - acked
    assert set() == damaged & acked  # set aside, not sent
    assert len(list((spool / "quarantine").iterdir())) >= len(damaged)
    assert events(daemon, "tick_failed") == []


async def test_an_unwritable_status_file_costs_one_warning(aiohttp_server: Any, make_daemon: Any) -> None:
    """status.json blocked by a directory: ticks, delivery and shutdown go on; one warning, then one all-clear."""
    central = Central()
    daemon = make_daemon(await start_central(aiohttp_server, central))
    blocker = daemon.state_dir / "status.json"
    blocker.mkdir(parents=True)
    (blocker / "inside").write_bytes(b"x")  # a non-empty directory: the atomic rename onto it fails
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3)
    await assert_keeps_rhythm(daemon)
    (blocker / "inside").unlink()
    blocker.rmdir()
    await wait_for(lambda: bool(events(daemon, "status_written_again")))
    assert 0 == await daemon.stop()
    assert_delivered(daemon, central)
    assert [line["code"] for line in events(daemon, "status_not_written")] == ["io"]  # fixed codes only
    assert events(daemon, "tick_failed") == []
    assert json.loads(blocker.read_bytes())["pop"] == "test-pop"
