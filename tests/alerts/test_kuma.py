"""The Uptime Kuma push hook against a real HTTP server speaking Kuma's push API."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs
from yarl import URL

from agent.settings import Settings
from alerts.kuma import KumaHook, push_url

PUSH_TOKEN = "kumaPushTOKEN42xyz"


@dataclass
class FakeKuma:
    """A Kuma stand-in: records each push's token and query, answers like Kuma's /api/push route."""

    base: URL
    pushes: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    known_tokens: set[str] = field(default_factory=lambda: {PUSH_TOKEN})

    def url(self, query: str = "") -> str:
        return f"{self.base}/api/push/{PUSH_TOKEN}{query}"


@pytest.fixture
async def kuma(aiohttp_server: Callable[..., Any]) -> FakeKuma:
    """Kuma's push endpoint: 200 {"ok": true} for a known token, 404 {"ok": false, ...} otherwise."""
    holder: dict[str, FakeKuma] = {}

    async def push(request: web.Request) -> web.Response:
        fake = holder["fake"]
        token = request.match_info["token"]
        fake.pushes.append((token, list(request.query.items())))
        if token not in fake.known_tokens:
            return web.json_response({"ok": False, "msg": "Monitor not found or not active."}, status=404)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/api/push/{token}", push)
    server = await aiohttp_server(app)
    fake = FakeKuma(server.make_url(""))
    holder["fake"] = fake
    return fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_push_sends_status_msg_and_ping(kuma: FakeKuma, session: aiohttp.ClientSession) -> None:
    """A push is one GET /api/push/<token> with status, msg and ping."""
    hook = KumaHook(kuma.url(), session=session, timeout=5)
    assert await hook.push("up", "healthy", 12.34) is True
    assert kuma.pushes == [(PUSH_TOKEN, [("status", "up"), ("msg", "healthy"), ("ping", "12.3")])]


async def test_push_without_ping_sends_it_empty(kuma: FakeKuma, session: aiohttp.ClientSession) -> None:
    """Without a last delivery time, ping goes empty, as in the URL Kuma hands out."""
    hook = KumaHook(kuma.url(), session=session, timeout=5)
    assert await hook.push("down", "outage_delivery", None) is True
    assert kuma.pushes[0][1] == [("status", "down"), ("msg", "outage_delivery"), ("ping", "")]


async def test_existing_status_msg_ping_are_replaced_and_others_kept(
    kuma: FakeKuma, session: aiohttp.ClientSession
) -> None:
    """The URL as copied from Kuma (status=up&msg=OK&ping=) gets its values replaced, other parameters kept."""
    hook = KumaHook(kuma.url("?status=up&msg=OK&ping=&region=eu&status=down"), session=session, timeout=5)
    assert await hook.push("down", "outage_delivery", 5.0) is True
    query = kuma.pushes[0][1]
    assert sorted([("status", "down"), ("msg", "outage_delivery"), ("ping", "5.0"), ("region", "eu")]) == sorted(query)


@given(
    extra=st.lists(
        st.tuples(st.sampled_from(["status", "msg", "ping", "a", "region", "x_y"]), st.text(max_size=10)),
        max_size=8,
    ),
    status=st.sampled_from(["up", "down"]),
    ping=st.none() | st.floats(min_value=0, max_value=1e6),
)
def test_push_url_sets_each_parameter_once(extra: list[tuple[str, str]], status: str, ping: float | None) -> None:
    """Whatever query the push URL carries, status, msg and ping appear once each and the rest survive."""
    base = URL.build(scheme="https", host="kuma.example", path=f"/api/push/{PUSH_TOKEN}", query=extra)
    url = push_url(base, status, "healthy", ping)  # type: ignore[arg-type]
    ours = ("status", "msg", "ping")
    assert [status] == url.query.getall("status")
    assert url.query.getall("msg") == ["healthy"]
    assert len(url.query.getall("ping")) == 1
    assert [kv for kv in extra if kv[0] not in ours] == [kv for kv in url.query.items() if kv[0] not in ours]
    assert base.path == url.path


async def test_msg_that_is_not_a_short_code_is_replaced(kuma: FakeKuma, session: aiohttp.ClientSession) -> None:
    """A msg with URL-ish or long text goes out as "other"."""
    hook = KumaHook(kuma.url(), session=session, timeout=5)
    assert await hook.push("down", "connect to http://10.0.0.1/x?token=abc", None) is True
    assert kuma.pushes[0][1][1] == ("msg", "other")


async def test_unknown_monitor_returns_false(kuma: FakeKuma, session: aiohttp.ClientSession) -> None:
    """Kuma's 404 {"ok": false} for an unknown push token makes push return False."""
    hook = KumaHook(f"{kuma.base}/api/push/wrongtoken", session=session, timeout=5)
    assert await hook.push("up", "healthy", None) is False
    assert hook.status.failures_total == 1


async def test_ok_false_with_200_returns_false(
    aiohttp_server: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    """A 200 whose JSON says ok: false counts as a failure."""

    async def paused(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "msg": "Monitor paused"})

    app = web.Application()
    app.router.add_get("/api/push/{token}", paused)
    server = await aiohttp_server(app)
    hook = KumaHook(str(server.make_url(f"/api/push/{PUSH_TOKEN}")), session=session, timeout=5)
    assert await hook.push("up", "healthy", None) is False


async def test_refused_connection_returns_false(session: aiohttp.ClientSession) -> None:
    """A Kuma refusing connections makes push return False, not raise."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = KumaHook(f"http://127.0.0.1:{port}/api/push/{PUSH_TOKEN}", session=session, timeout=5)
    assert await hook.push("up", "healthy", None) is False


async def test_hanging_server_returns_false(aiohttp_server: Callable[..., Any], session: aiohttp.ClientSession) -> None:
    """A Kuma that never answers makes push return False once its timeout is spent."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/api/push/{token}", hang)
    server = await aiohttp_server(app)
    hook = KumaHook(str(server.make_url(f"/api/push/{PUSH_TOKEN}")), session=session, timeout=0.2)
    try:
        # The outer bound only keeps a broken hook from hanging the test run.
        assert await asyncio.wait_for(hook.push("up", "healthy", None), timeout=30) is False
    finally:
        release.set()


async def test_failures_are_logged_with_the_code_every_part_uses(
    aiohttp_server: Callable[..., Any], session: aiohttp.ClientSession, self_signed: tuple[Path, Path]
) -> None:
    """An untrusted certificate reads "tls", as for the sinks and the ledger; a 200 that is not JSON "bad_answer"."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>")

    app = web.Application()
    app.router.add_get("/api/push/{token}", not_json)
    tls_server = await aiohttp_server(app, ssl=context)
    plain_server = await aiohttp_server(app)
    failures = []
    for server, scheme in ((tls_server, "https"), (plain_server, "http")):
        hook = KumaHook(f"{scheme}://127.0.0.1:{server.port}/api/push/{PUSH_TOKEN}", session=session, timeout=5)
        with capture_logs() as logs:
            assert await hook.push("up", "healthy", None) is False
        failures.extend(entry["failure"] for entry in logs)
    assert ["tls", "bad_answer"] == failures


async def test_logs_name_kuma_never_its_url(kuma: FakeKuma, session: aiohttp.ClientSession) -> None:
    """Failures and recovery are logged once each under the label "kuma", never with the URL or push token."""
    kuma.known_tokens.clear()
    hook = KumaHook(kuma.url(), session=session, timeout=5)
    with capture_logs() as logs:
        results = [await hook.push("up", "healthy", None) for _ in range(3)]
        kuma.known_tokens.add(PUSH_TOKEN)
        results.append(await hook.push("up", "healthy", None))
    assert results == [False, False, False, True]
    expected = [
        {"event": "alert_hook_failing", "hook": "kuma", "failure": "http_404", "log_level": "warning"},
        {"event": "alert_hook_recovered", "hook": "kuma", "log_level": "info"},
    ]
    assert expected == logs
    assert PUSH_TOKEN not in repr(logs)


def test_from_settings_is_none_without_url() -> None:
    """Without KUMA_PUSH_URL the hook is off."""
    assert KumaHook.from_settings(Settings(pop_id="ams1"), session=None) is None  # type: ignore[arg-type]


async def test_from_settings_pushes_to_kuma_push_url(kuma: FakeKuma, session: aiohttp.ClientSession) -> None:
    """KUMA_PUSH_URL configures the hook."""
    hook = KumaHook.from_settings(Settings(pop_id="ams1", kuma_push_url=SecretStr(kuma.url())), session)
    assert hook is not None
    assert await hook.push("up", "healthy", 1.0) is True
    assert kuma.pushes[0][0] == PUSH_TOKEN
