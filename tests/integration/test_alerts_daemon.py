"""Outage alerting end to end: the real daemon, a real central, ntfy and Kuma servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.integration.centralserver import Central
from tests.integration.daemon import Daemon, wait_for

CENTRAL_TOKEN = "CENTRALTOKEN-7f3a9c"
NTFY_TOKEN = "tk_NTFYTOKEN8b2d"
KUMA_TOKEN = "KUMAPUSHTOKEN5e1"


@dataclass
class Hooks:
    """ntfy (POST /<topic>) and Uptime Kuma (GET /api/push/<token>) as they speak on the wire."""

    ntfy: list[dict[str, Any]] = field(default_factory=list)
    kuma: list[dict[str, str]] = field(default_factory=list)

    async def ntfy_publish(self, request: web.Request) -> web.Response:
        self.ntfy.append({"headers": dict(request.headers), "body": await request.text(), "path": request.path})
        return web.json_response({"id": "x1", "event": "message", "topic": request.match_info["topic"]})

    async def kuma_push(self, request: web.Request) -> web.Response:
        assert request.match_info["token"] == KUMA_TOKEN
        self.kuma.append(dict(request.query))
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{topic}", self.ntfy_publish)
        app.router.add_get("/api/push/{token}", self.kuma_push)
        return app

    def kuma_statuses(self) -> list[str]:
        """The sequence of Kuma statuses, repeats collapsed."""
        collapsed: list[str] = []
        for push in self.kuma:
            if not collapsed or collapsed[-1] != push["status"]:
                collapsed.append(push["status"])
        return collapsed


async def test_outage_restart_and_recovery_alert_once_and_leak_nothing(aiohttp_server: Any, tmp_path: Path) -> None:
    """One outage message, one recovery, none extra after a restart mid-outage; no secret anywhere."""
    central = Central()
    central_server = await aiohttp_server(central.app())
    hooks = Hooks()
    hook_server = await aiohttp_server(hooks.app())
    daemon = Daemon(
        tmp_path,
        POP_AGENT_TELEMETRY="on",
        POP_AGENT_INTERVAL="0.2",
        POP_AGENT_ALERTS__OUTAGE_AFTER="1.5",
        POP_AGENT_SINKS__CENTRAL__URL=str(central_server.make_url("/ingest/v1/heartbeats")),
        POP_AGENT_SINKS__CENTRAL__TOKEN=CENTRAL_TOKEN,
        POP_AGENT_DELIVERY__BACKOFF_INITIAL="0.05",
        POP_AGENT_DELIVERY__BACKOFF_MAX="0.2",
        NTFY_ALERT_URL=str(hook_server.make_url("/pop-alerts")),
        NTFY_ALERT_TOKEN=NTFY_TOKEN,
        KUMA_PUSH_URL=str(hook_server.make_url(f"/api/push/{KUMA_TOKEN}")) + "?status=up&msg=OK&ping=",
    )
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3 and len(hooks.kuma) >= 3)

    # Every failure path in turn: a rotated token (401), a server error, then nothing listening.
    central.respond = lambda batch: web.Response(status=401, text=f"bad token {CENTRAL_TOKEN}")
    await asyncio.sleep(0.6)
    central.respond = lambda batch: web.Response(status=500, text="Traceback: boom 10.1.2.3")
    await wait_for(lambda: len(hooks.ntfy) == 1, timeout=20)
    assert await daemon.stop() == 0

    await daemon.start()  # a restart in the middle of the outage
    await wait_for(lambda: any(p["status"] == "down" for p in hooks.kuma[-3:]), timeout=20)
    await asyncio.sleep(1.0)
    assert len(hooks.ntfy) == 1

    central.respond = None
    await wait_for(lambda: len(hooks.ntfy) == 2 and not daemon.pending(), timeout=30)
    await wait_for(lambda: hooks.kuma[-1]["status"] == "up", timeout=10)
    assert await daemon.stop() == 0

    outage, recovery = hooks.ntfy
    assert outage["headers"]["Priority"] == "high"
    assert "test-pop" in outage["headers"]["Title"]
    assert recovery["headers"]["Priority"] == "default"
    assert outage["headers"]["Authorization"] == f"Bearer {NTFY_TOKEN}"
    assert hooks.kuma_statuses() == ["up", "down", "up"]
    assert all(set(push) == {"status", "msg", "ping"} for push in hooks.kuma)

    # Nothing secret, no address and no exception text anywhere it could be read.
    places = {
        "daemon output": daemon.all_output(),
        # Authorization carries the ntfy token and Host the server's address, both by design.
        "ntfy messages": repr(
            [
                {**m, "headers": {k: v for k, v in m["headers"].items() if k not in ("Authorization", "Host")}}
                for m in hooks.ntfy
            ]
        ),
        "kuma messages": repr([{k: v for k, v in push.items()} for push in hooks.kuma]),
    }
    for path in daemon.state_dir.rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_text(errors="replace")
    ledger = str(daemon.state_dir / "ledger")
    for where, text in places.items():
        for secret in (CENTRAL_TOKEN, NTFY_TOKEN, KUMA_TOKEN, "10.1.2.3", "Traceback", "boom", "127.0.0.1"):
            if secret == "127.0.0.1" and where.startswith(ledger):
                continue  # the sent ledger names each request's destination host, by design
            assert secret not in text, (secret, where)


async def test_dead_hooks_change_nothing(aiohttp_server: Any, tmp_path: Path, unused_tcp_port: int) -> None:
    """A Kuma that hangs and an ntfy that refuses connections neither slow ticks nor stop delivery or shutdown."""
    central = Central()
    central_server = await aiohttp_server(central.app())
    hang = asyncio.Event()

    async def hanging(request: web.Request) -> web.Response:
        await hang.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/api/push/{token}", hanging)
    kuma_server = await aiohttp_server(app)
    daemon = Daemon(
        tmp_path,
        POP_AGENT_TELEMETRY="on",
        POP_AGENT_INTERVAL="0.2",
        POP_AGENT_ALERTS__OUTAGE_AFTER="0.5",
        # Far longer than the windows below, so a tick or a stop that waited for a hook could not pass.
        POP_AGENT_ALERTS__HOOK_TIMEOUT="30",
        POP_AGENT_SINKS__CENTRAL__URL=str(central_server.make_url("/ingest/v1/heartbeats")),
        POP_AGENT_SINKS__CENTRAL__TOKEN=CENTRAL_TOKEN,
        NTFY_ALERT_URL=f"http://127.0.0.1:{unused_tcp_port}/pop-alerts",
        KUMA_PUSH_URL=str(kuma_server.make_url(f"/api/push/{KUMA_TOKEN}")),
    )
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3)
    first = len(central.acked)
    await asyncio.sleep(3.0)
    # 15 ticks fit in 3 s at 0.2 s; ticks that waited for the hanging Kuma (30 s timeout) would give at most one.
    # Four leaves room for a loaded machine.
    assert len(central.acked) - first >= 4
    central.respond = lambda batch: web.Response(status=503)  # an outage: ntfy (refusing) must be tried
    await asyncio.sleep(1.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await daemon.stop(timeout=30) == 0
    assert loop.time() - started < 25  # a stop that waited for the hanging Kuma would take its 30 s
    events = [line["event"] for line in daemon.logs()]
    assert events.count("alert_hook_failing") <= 2  # once per hook, not once per tick
    hang.set()


async def test_a_loki_outage_pages_as_loki_not_as_central(aiohttp_server: Any, tmp_path: Path) -> None:
    """Central delivers while Loki answers 503: the outage message names loki as the receiver, and never central."""
    central = Central()
    central_server = await aiohttp_server(central.app())

    async def loki_down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    loki_app = web.Application()
    loki_app.router.add_post("/loki/api/v1/push", loki_down)
    loki_server = await aiohttp_server(loki_app)
    hooks = Hooks()
    hook_server = await aiohttp_server(hooks.app())
    daemon = Daemon(
        tmp_path,
        POP_AGENT_TELEMETRY="on",
        POP_AGENT_INTERVAL="0.2",
        POP_AGENT_ALERTS__OUTAGE_AFTER="0.5",
        POP_AGENT_SINKS__CENTRAL__URL=str(central_server.make_url("/ingest/v1/heartbeats")),
        POP_AGENT_SINKS__CENTRAL__TOKEN=CENTRAL_TOKEN,
        POP_AGENT_SINKS__LOKI__URL=str(loki_server.make_url("")),
        POP_AGENT_DELIVERY__BACKOFF_INITIAL="0.05",
        POP_AGENT_DELIVERY__BACKOFF_MAX="0.2",
        NTFY_ALERT_URL=str(hook_server.make_url("/pop-alerts")),
    )
    await daemon.start()
    await wait_for(lambda: len(hooks.ntfy) >= 1 and len(central.acked) >= 3, timeout=30)
    assert await daemon.stop() == 0
    outage = hooks.ntfy[0]
    text = outage["headers"]["Title"] + "\n" + outage["body"]
    assert "loki" in text
    assert "central" not in text


async def test_kuma_sends_no_stale_ping_and_no_down_once_delivery_recovered(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """Through an outage Kuma's ping is empty, and after central takes heartbeats again no push says down."""
    central = Central()
    central_server = await aiohttp_server(central.app())
    hooks = Hooks()
    loop = asyncio.get_running_loop()
    recovered_at: list[float] = []
    pushed_at: list[tuple[float, str, str]] = []

    def record_push(push: dict[str, str]) -> None:
        pushed_at.append((loop.time(), push["status"], push["ping"]))

    original = hooks.kuma_push

    async def kuma_push(request: web.Request) -> web.Response:
        answer = await original(request)
        record_push(hooks.kuma[-1])
        return answer

    hooks.kuma_push = kuma_push  # type: ignore[method-assign]
    hook_server = await aiohttp_server(hooks.app())
    daemon = Daemon(
        tmp_path,
        POP_AGENT_TELEMETRY="on",
        POP_AGENT_INTERVAL="0.5",
        POP_AGENT_ALERTS__OUTAGE_AFTER="1",
        POP_AGENT_SINKS__CENTRAL__URL=str(central_server.make_url("/ingest/v1/heartbeats")),
        POP_AGENT_SINKS__CENTRAL__TOKEN=CENTRAL_TOKEN,
        POP_AGENT_DELIVERY__BACKOFF_INITIAL="0.05",
        POP_AGENT_DELIVERY__BACKOFF_MAX="0.2",
        KUMA_PUSH_URL=str(hook_server.make_url(f"/api/push/{KUMA_TOKEN}")),
    )
    central.respond = lambda batch: web.Response(status=503)
    await daemon.start()
    try:
        await wait_for(lambda: sum(status == "down" for _, status, _ in pushed_at) >= 3, timeout=30)

        def recover(batch: list[dict[str, Any]]) -> web.StreamResponse:
            if not recovered_at:
                recovered_at.append(loop.time())
            return web.json_response({"accepted": len(batch)})

        central.respond = recover
        await wait_for(lambda: bool(recovered_at), timeout=30)
        await wait_for(
            lambda: sum(status == "up" and at > recovered_at[0] for at, status, _ in pushed_at) >= 3, timeout=30
        )
    finally:
        assert 0 == await daemon.stop()
    assert all("" == ping for _, status, ping in pushed_at if status == "down")
    assert [] == [(at, status) for at, status, _ in pushed_at if status == "down" and at > recovered_at[0]]
