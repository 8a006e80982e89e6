"""The runner in-process against a real central on 127.0.0.1: what it does on the event loop, and what it does not."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.plugins import discover
from agent.runner import Runner
from agent.settings import settings_class
from agent.wiring import allowed_metrics
from alerts.health import HEALTH_METRICS
from sinks.central import CentralSink


async def until(condition: Callable[[], bool], tries: int = 3000) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def test_no_fsync_runs_on_the_event_loop(aiohttp_server: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Seq reservation, the health alarms' file, status and the shutdown's writes all fsync off the loop's thread."""

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/ingest", unavailable)
    server = await aiohttp_server(app)
    settings = settings_class(discover(third_party=False))(
        state_dir=tmp_path / "state",
        interval=0.1,
        telemetry="on",
        alerts={"outage_after": 0.2},
        sinks={"central": {"url": str(server.make_url("/ingest")), "token": "t0k3n"}},
    )
    fsynced_on: set[str] = set()
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsynced_on.add(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    sink = CentralSink(settings.sinks.central, token="t0k3n")
    runner = Runner(
        settings,
        edition="community",
        version="0.1.0",
        telemetry=True,
        collectors=[],
        allowed=allowed_metrics([], HEALTH_METRICS),
        sinks=[sink],
    )
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
