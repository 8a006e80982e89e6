"""The tick's Kuma push says how this tick's delivery went, and never carries a stale ping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.pacing import BackoffPolicy
from agent.plugins import discover
from agent.runner import Runner
from agent.settings import settings_class
from agent.wiring import allowed_metrics
from alerts.health import HEALTH_METRICS
from sinks.central import CentralSink


async def test_push_follows_the_ticks_own_delivery_and_no_stale_ping(aiohttp_server: Any, tmp_path: Path) -> None:
    """Healthy: up with a ping; the tick whose delivery fails: failing, no ping; after recovery: up with a ping."""
    central_status = [200]
    pushes: list[dict[str, str]] = []

    async def ingest(request: web.Request) -> web.Response:
        batch = (await request.json())["heartbeats"]
        if central_status[0] != 200:
            return web.Response(status=central_status[0])
        return web.json_response({"accepted": len(batch)})

    async def kuma(request: web.Request) -> web.Response:
        pushes.append(dict(request.query))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/ingest", ingest)
    app.router.add_get("/api/push/{token}", kuma)
    server = await aiohttp_server(app)
    settings = settings_class(discover(third_party=False))(
        state_dir=tmp_path / "state",
        interval=10,
        telemetry="on",
        delivery={"flush_interval": 0},  # every tick delivers, as the test follows it tick by tick
        sinks={"central": {"url": str(server.make_url("/ingest")), "token": "t0k3n"}},
        kuma_push_url=str(server.make_url("/api/push/KUMATOKEN")),
    )
    runner = Runner(
        settings,
        edition="community",
        version="0.1.0",
        telemetry=True,
        collectors=[],
        allowed=allowed_metrics([], HEALTH_METRICS),
        sinks=[CentralSink(settings.sinks.central, token="t0k3n")],
        backoff=BackoffPolicy(initial=0.05, cap=0.05),
    )
    await runner.start()
    runner.delivery.start()

    async def tick() -> tuple[str, str, bool]:
        """One tick as the loop runs it; the push it made: status, msg, whether it carried a ping."""
        before = len(pushes)
        async with runner.tick_lock:
            await runner._safe_tick()
        await runner.hooks.flush(5)
        assert before + 1 == len(pushes)
        return pushes[-1]["status"], pushes[-1]["msg"], pushes[-1]["ping"] != ""

    try:
        for _ in range(50):  # the first wake-up at start delivers nothing yet: wait until the loop is idle
            await asyncio.sleep(0.01)
        healthy = await tick()
        central_status[0] = 503
        failing = await tick()
        central_status[0] = 200
        for _ in range(500):  # the loop's own retry, after its backoff, delivers
            if runner.health.status()["state"] == "healthy":
                break
            await asyncio.sleep(0.01)
        recovered = await tick()
    finally:
        await runner.delivery.stop()
        await runner.aclose()
    assert [("up", "healthy", True), ("up", "failing", False), ("up", "healthy", True)] == [healthy, failing, recovered]
