"""The runner in-process against a real central on 127.0.0.1: what it does on the event loop, and what it does not."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent import heartbeat
from agent.delivery import flush_ticks
from agent.plugins import discover
from agent.runner import Runner
from agent.scrubber import Allowlist
from agent.settings import settings_class
from agent.spool import SpoolStats
from agent.state import INCOMING
from agent.wiring import allowed_metrics
from alerts.health import HEALTH_METRICS
from sinks.central import CentralSink
from tests.heartbeats import make_heartbeat


async def until(condition: Callable[[], bool], tries: int = 3000) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def central_at(aiohttp_server: Any, ingest: Callable[[web.Request], Awaitable[web.Response]]) -> str:
    """The URL of a central on 127.0.0.1 that answers with ``ingest``."""
    app = web.Application()
    app.router.add_post("/ingest", ingest)
    return str((await aiohttp_server(app)).make_url("/ingest"))


def central_runner(tmp_path: Path, url: str, **settings: Any) -> Runner:
    """A runner with no collectors and the central sink on, its state under ``tmp_path``."""
    effective = settings_class(discover(third_party=False))(
        state_dir=tmp_path / "state",
        telemetry="on",
        sinks={"central": {"url": url, "token": "t0k3n"}},
        **settings,
    )
    return Runner(
        effective,
        edition="community",
        version="0.1.0",
        telemetry=True,
        collectors=[],
        allowed=allowed_metrics([], HEALTH_METRICS),
        sinks=[CentralSink(effective.sinks.central, token="t0k3n")],
    )


async def test_no_fsync_runs_on_the_event_loop(aiohttp_server: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Seq reservation, the health alarms' file, status and the shutdown's writes all fsync off the loop's thread."""

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503)

    runner = central_runner(
        tmp_path, await central_at(aiohttp_server, unavailable), interval=0.1, alerts={"outage_after": 0.2}
    )
    settings = runner.settings
    fsynced_on: set[str] = set()
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsynced_on.add(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    task = asyncio.create_task(runner.run())
    alerts = settings.state_dir / "alerts.json"
    try:
        await until(lambda: alerts.exists() and json.loads(alerts.read_bytes())["alarms"]["delivery"]["active"])
    finally:
        runner.request_stop()
        await task
    assert (settings.state_dir / "seq.json").exists()
    assert fsynced_on, "nothing was fsynced at all"
    assert threading.main_thread().name not in fsynced_on


def record_trips(runner: Runner) -> list[str]:
    """The names of the functions the runner hands its file thread from now on, in order."""
    trips: list[str] = []
    real_call, real_submit = runner.files.call, runner.files.submit

    async def call(func: Callable[..., Any], *args: Any) -> Any:
        trips.append(getattr(func, "__name__", "?"))
        return await real_call(func, *args)

    def submit(func: Callable[..., None], *args: Any) -> None:
        trips.append(getattr(func, "__name__", "?"))
        real_submit(func, *args)

    runner.files.call = call  # type: ignore[method-assign]
    runner.files.submit = submit  # type: ignore[method-assign]
    return trips


async def test_a_tick_with_central_up_makes_two_trips_to_the_file_thread(aiohttp_server: Any, tmp_path: Path) -> None:
    """One trip stores the heartbeat (and reads the sink's batch), one settles it after the send.

    Each trip wakes a thread, and on an idle POP a wake-up costs more CPU than the work it carries.
    """
    received: list[int] = []

    async def ingest(request: web.Request) -> web.Response:
        received.append(len(json.loads(await request.read())["heartbeats"]))
        return web.json_response({"accepted": received[-1]})

    runner = central_runner(tmp_path, await central_at(aiohttp_server, ingest), interval=3600)
    trips = record_trips(runner)
    await runner.start()
    runner.delivery.start()
    try:
        loops = runner.delivery.loops.values()
        await until(lambda: all(loop.idle for loop in loops))
        per_tick = []
        for ticks in range(1, 4):
            trips.clear()
            await runner.tick()
            await until(lambda n=ticks: len(received) == n and all(loop.idle for loop in loops))
            per_tick.append(list(trips))
    finally:
        await runner.delivery.stop()
        await runner.aclose()
    assert [1, 1, 1] == received
    # The first tick may reserve a block of seq numbers; the others are the steady state.
    assert [["_store", "_after_send"]] * 2 == per_tick[1:]


async def tick_and_its_flush(runner: Runner) -> None:
    """One tick as the tick loop runs it, then the central sink's pass, if the tick started one, to its end."""
    loop = runner.delivery.loops["central"]
    async with runner.tick_lock:
        await runner._safe_tick()
    if not loop.skips_tick:
        await asyncio.wait_for(loop.tried.wait(), 10)  # this tick's flush has its answer
    await until(lambda: loop.idle)


async def test_a_tick_between_flushes_makes_one_trip_and_its_push_waits_for_no_delivery(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """Between flushes a tick only stores its heartbeat; Kuma's push does not wait for a pass it did not start."""

    async def ingest(request: web.Request) -> web.Response:
        return web.json_response({"accepted": len(json.loads(await request.read())["heartbeats"])})

    runner = central_runner(
        tmp_path, await central_at(aiohttp_server, ingest), interval=10, delivery={"flush_interval": 30}
    )
    trips = record_trips(runner)
    await runner.start()
    runner.delivery.start()
    loop = runner.delivery.loops["central"]
    per_tick, waited_for = [], []
    try:
        await asyncio.wait_for(loop.tried.wait(), 10)  # the wake-up at start found nothing to send
        for _ in range(4):
            trips.clear()
            await tick_and_its_flush(runner)
            per_tick.append(list(trips))
            waited_for.append(loop.attempts_on_wake)  # what the push after this tick waits for
    finally:
        await runner.delivery.stop()
        await runner.aclose()
    # Tick 1 flushes at once (and may reserve seq numbers first); 2 and 3 wait; 4 flushes.
    assert [["_store"], ["_store"], ["_store", "_after_send"]] == per_tick[1:]
    assert [True, False, False, True] == waited_for


async def test_enqueued_heartbeats_are_taken_in_on_a_tick_whose_own_heartbeat_is_rejected(tmp_path: Path) -> None:
    """Intake rides the tick's store trip; a tick that has nothing to store still takes in `agent enqueue`'s files."""
    runner = central_runner(tmp_path, "http://127.0.0.1:9/ingest", interval=3600)
    runner.allowed = Allowlist([], collectors=[])  # the agent's own health metrics are undeclared: every tick rejected
    enqueued = make_heartbeat(7, collectors={})
    incoming = tmp_path / "state" / "spool" / INCOMING
    incoming.mkdir(parents=True)
    (incoming / f"{enqueued['id']}.json").write_bytes(heartbeat.dumps(enqueued))
    await runner.start()
    try:
        assert await runner.tick() is None
    finally:
        await runner.aclose()
    assert ([], [f"{enqueued['id']}.json"]) == (
        sorted(path.name for path in incoming.iterdir()),
        sorted(path.name for path in (tmp_path / "state" / "spool" / "pending").iterdir()),
    )


def test_an_older_spool_snapshot_never_replaces_a_newer_one(tmp_path: Path) -> None:
    """A delivery's figures can reach the loop after the store trip's newer ones: the heartbeat shows the newer."""
    runner = central_runner(tmp_path, "http://127.0.0.1:9/ingest")
    older = SpoolStats(5, 500, 20.0, 0, 0, 0, taken_at=100.0)
    newer = dataclasses.replace(older, pending=6, taken_at=101.0)
    runner.spool_seen.saw(newer)
    runner.spool_seen.saw(older)
    assert 6 == runner.spool_seen.now().pending


async def test_with_a_flush_interval_ticks_wait_and_their_heartbeats_go_together(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """delivery.flush_interval: the first tick sends at once, later ones wait; their heartbeats go in one request."""
    received: list[int] = []

    async def ingest(request: web.Request) -> web.Response:
        received.append(len(json.loads(await request.read())["heartbeats"]))
        return web.json_response({"accepted": received[-1]})

    runner = central_runner(
        tmp_path, await central_at(aiohttp_server, ingest), interval=10, delivery={"flush_interval": 30}
    )
    await runner.start()
    runner.delivery.start()
    loop = runner.delivery.loops["central"]
    try:
        await asyncio.wait_for(loop.tried.wait(), 10)  # the wake-up at start found nothing to send
        for _ in range(7):
            await tick_and_its_flush(runner)
    finally:
        await runner.delivery.stop()
        await runner.aclose(grace=5)
    # Ticks 1, 4 and 7 flush: the first at once, then what three ticks spooled.
    assert [1, 3, 3] == received
    assert (3, 0) == (loop.flush_ticks, runner.spool.stats().pending)


def test_ticks_per_flush_are_the_whole_ticks_that_fit_in_the_flush_interval() -> None:
    """A flush never waits longer than flush_interval; at most an interval (or 0) means every tick."""
    cases = [(30, 10), (25, 10), (10, 10), (5, 10), (0, 10), (0.3, 0.1), (3600, 0.1)]
    assert [3, 2, 1, 1, 1, 3, 36000] == [flush_ticks(flush, interval) for flush, interval in cases]
