"""SIGKILL again and again while the daemon drains a large backlog and keeps spooling its own heartbeats.

tests/integration/test_daemon.py kills a daemon whose spool holds a few
heartbeats; this one kills it in the middle of draining thousands, with the
ticks going on beside the drain.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent import heartbeat
from agent.settings import SpoolSettings
from agent.spool import Spool
from tests.heartbeats import make_heartbeat
from tests.reliability.harness import (
    STARTUP_TIMEOUT,
    Central,
    assert_delivered,
    assert_keeps_rhythm,
    start_central,
    ticks,
    wait_for,
)

BACKLOG = 4000
BACKLOG_SEQ = 10_000_000  # far above anything the daemon hands out in a test


def spool_backlog(state_dir: Path, count: int) -> set[str]:
    """``count`` heartbeats written the way the daemon writes them, as if left by a long outage; their ids."""
    ids = set()
    with Spool(state_dir / "spool", SpoolSettings(), sinks=["central"], fsync=False) as spool:
        for index in range(count):
            doc = make_heartbeat(BACKLOG_SEQ + index, collectors={}, interval=0.1)
            spool.put(doc["id"], heartbeat.dumps(doc))
            ids.add(doc["id"])
    return ids


def more_acks_than(central: Central, count: int) -> Callable[[], bool]:
    return lambda: len(central.acked) > count


async def test_sigkill_during_a_large_drain(aiohttp_server: Any, make_daemon: Any, tmp_path: Path) -> None:
    """Killed eight times while draining 4,000 heartbeats: all of them and every tick's heartbeat reach central."""
    central = Central()
    delay = [0.05]  # so that the drain spans several kills, and goes on beside the ticks of the last run

    async def slowly(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay[0])
        return await central.handle(request)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/ingest/v1/heartbeats", slowly)
    server = await aiohttp_server(app)
    daemon = make_daemon(str(server.make_url("/ingest/v1/heartbeats")), POP_AGENT_SINKS__CENTRAL__BATCH_MAX_COUNT="50")
    backlog = spool_backlog(daemon.state_dir, BACKLOG)
    rounds = random.Random(3)
    progress = []
    for _ in range(8):
        await daemon.start()
        await wait_for(more_acks_than(central, len(central.acked)), timeout=STARTUP_TIMEOUT)  # the drain is under way
        await asyncio.sleep(rounds.uniform(0.0, 0.3))
        daemon.kill()
        assert daemon.proc is not None
        await daemon.proc.wait()
        for path in daemon.pending():
            json.loads(path.read_bytes())  # every file in pending/ is whole
        progress.append(len(backlog & central.acked_ids))
    assert progress[-1] < BACKLOG, "the drain finished before the last kill: make it slower"
    assert progress[0] > 0  # killed mid-drain every time, not before it began
    await daemon.start()
    await assert_keeps_rhythm(daemon)  # the rest of the drain goes on beside the ticks
    # Central at full speed from here: at 0.05 s an answer, a tick's heartbeat may wait in pending/ for the
    # next one on a loaded machine, and the spool is seldom seen empty.
    delay[0] = 0.0
    await wait_for(lambda: backlog <= central.acked_ids and len(ticks(daemon)) >= 20, timeout=120)
    await wait_for(lambda: not daemon.pending(), timeout=120)
    assert 0 == await daemon.stop()
    assert set() == backlog - central.acked_ids
    assert_delivered(daemon, central)
    assert [] == list((daemon.state_dir / "spool" / "quarantine").iterdir())
    assert len(ticks(daemon)) >= 20


async def test_sigkill_while_central_refuses_and_accepts(aiohttp_server: Any, make_daemon: Any) -> None:
    """Killed while central alternates 503 and 200 under a backlog: nothing spooled is lost, nothing quarantined."""
    central = Central()
    coin = random.Random(5)
    central.respond = lambda batch: web.Response(status=503 if coin.random() < 0.5 else 200)
    daemon = make_daemon(await start_central(aiohttp_server, central), POP_AGENT_SINKS__CENTRAL__BATCH_MAX_COUNT="20")
    backlog = spool_backlog(daemon.state_dir, 600)
    rounds = random.Random(13)
    for _ in range(6):
        await daemon.start()
        await asyncio.sleep(rounds.uniform(0.4, 1.0))
        daemon.kill()
        assert daemon.proc is not None
        await daemon.proc.wait()
    central.respond = None
    await daemon.start()
    await wait_for(lambda: not daemon.pending(), timeout=60)
    assert 0 == await daemon.stop()
    assert set() == backlog - central.acked_ids
    assert_delivered(daemon, central)
    assert [] == list((daemon.state_dir / "spool" / "quarantine").iterdir())
