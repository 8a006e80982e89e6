"""Delivery that paces itself: the real daemon against a central that is down, slow to recover, or says wait.

Counts, not clocks: each test compares how many requests central saw with how
many ticks the daemon made meanwhile, so a loaded machine changes neither side
of the comparison much.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import REPO
from tests.reliability.harness import (
    Central,
    assert_delivered,
    events,
    fill,
    start_central,
    ticks,
    wait_for,
)

# The backoff as shipped (the harness makes it fast for the other scenarios).
SHIPPED_BACKOFF = {"POP_AGENT_DELIVERY__BACKOFF_INITIAL": "1", "POP_AGENT_DELIVERY__BACKOFF_MAX": "120"}
TICKS = 30

STALLED_PLUGIN = """
import os
from agent.plugin_api import NoSettings
from agent.sample import Delivery

class Stalled:
    name = "stalled"
    max_batch = 5
    settings_model = NoSettings

    @classmethod
    def from_settings(cls, cfg, context):
        return cls()

    async def send(self, batch, deadline):
        with open(os.environ["STALLED_SINK_LOG"], "a") as log:
            log.write("call\\n")
        return Delivery()  # no ack, no reject, no failure

    async def aclose(self):
        pass
"""


def stalled_site(tmp_path: Path) -> Path:
    """A site directory holding a sink plugin that never makes progress and never says why."""
    site = tmp_path / "site"
    info = site / "pop_agent_stalled-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pop-agent-stalled\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pop_agent.sinks]\nstalled = stalledsink:Stalled\n")
    (site / "stalledsink.py").write_text(textwrap.dedent(STALLED_PLUGIN))
    return site


def down(batch: Any) -> web.Response:
    """Central overloaded, with no word on when to come back."""
    return web.Response(status=503)


def come_back_in_an_hour(batch: Any) -> web.Response:
    """Central rate-limiting this POP for an hour."""
    return web.Response(status=429, headers={"Retry-After": "3600"})


async def test_503_without_retry_after_backs_off_across_ticks(aiohttp_server: Any, make_daemon: Any) -> None:
    """Central down without Retry-After: over 30 ticks it sees a handful of requests, not several per tick."""
    central = Central(respond=down)
    daemon = make_daemon(await start_central(aiohttp_server, central), **SHIPPED_BACKOFF)
    await daemon.start()
    await wait_for(lambda: len(ticks(daemon)) >= TICKS)
    assert 0 == await daemon.stop()
    assert 1 <= central.requests <= len(ticks(daemon)) // 4, (
        f"{central.requests} requests in {len(ticks(daemon))} ticks"
    )


async def test_retry_after_holds_across_passes(aiohttp_server: Any, make_daemon: Any) -> None:
    """A 429 with Retry-After: 3600 is the last request for the rest of the run, however many ticks pass."""
    central = Central(respond=come_back_in_an_hour)
    daemon = make_daemon(await start_central(aiohttp_server, central), **SHIPPED_BACKOFF)
    await daemon.start()
    await wait_for(lambda: len(ticks(daemon)) >= TICKS)
    assert 0 == await daemon.stop()
    assert 1 == central.requests


async def test_sink_without_progress_is_paced_like_a_failure(
    aiohttp_server: Any, make_daemon: Any, tmp_path: Path
) -> None:
    """A sink that acks nothing, rejects nothing and reports no failure is called a few times, not in a busy loop."""
    calls = tmp_path / "stalled.log"
    central = Central()
    daemon = make_daemon(
        await start_central(aiohttp_server, central),
        PYTHONPATH=f"{REPO}:{stalled_site(tmp_path)}",
        STALLED_SINK_LOG=str(calls),
        **SHIPPED_BACKOFF,
    )
    await daemon.start()
    await wait_for(lambda: len(ticks(daemon)) >= TICKS)
    assert 0 == await daemon.stop()
    made = len(calls.read_text().splitlines())
    assert 1 <= made <= len(ticks(daemon)) // 4, f"{made} calls in {len(ticks(daemon))} ticks"
    assert ["no_progress"] == [line["code"] for line in events(daemon, "delivery_failed") if line["sink"] == "stalled"]


async def test_restart_on_a_full_disk_still_delivers_the_backlog(
    aiohttp_server: Any, make_daemon: Any, small_fs: Any
) -> None:
    """Restarted on a full disk (no seq can be reserved, every tick fails), the daemon still delivers its backlog."""
    state = small_fs("1m")
    central = Central(respond=down)
    url = await start_central(aiohttp_server, central)
    daemon = make_daemon(url)
    await daemon.start()
    await wait_for(lambda: len(daemon.pending()) >= 5)
    assert 0 == await daemon.stop()
    backlog = len(daemon.pending())
    ballast = fill(state)
    central.respond = None
    await daemon.start()
    try:
        await wait_for(lambda: not daemon.pending())
    finally:
        ballast.unlink()
    assert 0 == await daemon.stop()
    assert backlog <= len(central.acked)
    assert_delivered(daemon, central)
