"""The ntfy hook against a real HTTP server speaking ntfy's publish API."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from agent.settings import AlertsSettings, Settings
from alerts.events import AlarmKind, OutageEnded, OutageStarted
from alerts.ntfy import NtfyHook, format_duration, render

TOKEN = "tk_ntfysecretTOKEN0123456789"
STARTED = OutageStarted(
    AlarmKind.DELIVERY, "ams1", at=1_000_300.0, since=1_000_000.0, failure="http_503", backlog=31, sink="loki"
)
ENDED = OutageEnded(
    AlarmKind.DELIVERY, "ams1", at=1_000_725.0, duration_s=725.0, backlog=42, drain_per_s=12.5, sink="loki"
)


@dataclass
class Published:
    """One request the fake ntfy server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: str


@dataclass
class FakeNtfy:
    """A scripted ntfy server: answers ``status`` and records every publish."""

    url: str
    received: list[Published] = field(default_factory=list)
    status: int = 200


@pytest.fixture
async def ntfy(aiohttp_server: Callable[..., Any]) -> FakeNtfy:
    """An ntfy stand-in on 127.0.0.1 that accepts POST /<topic> like ntfy does."""
    app = web.Application()
    server_state: dict[str, FakeNtfy] = {}

    async def publish(request: web.Request) -> web.Response:
        fake = server_state["fake"]
        body = await request.text()
        fake.received.append(Published(request.method, request.path, dict(request.headers), body))
        if fake.status != 200:
            return web.json_response({"code": 40001, "error": "nope"}, status=fake.status)
        topic = request.match_info["topic"]
        return web.json_response({"id": "abc", "event": "message", "topic": topic, "message": body})

    app.router.add_post("/{topic}", publish)
    server = await aiohttp_server(app)
    fake = FakeNtfy(str(server.make_url("/pop-alerts")))
    server_state["fake"] = fake
    return fake


@pytest.fixture
async def hanging_url(aiohttp_server: Callable[..., Any]) -> AsyncIterator[str]:
    """A server that accepts the request and never answers (until the test ends)."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    server = await aiohttp_server(app)
    yield str(server.make_url("/pop-alerts"))
    release.set()


@pytest.fixture
def refused_url() -> str:
    """A 127.0.0.1 URL on a port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/pop-alerts"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_outage_message_uses_ntfy_headers_and_fixed_template(
    ntfy: FakeNtfy, session: aiohttp.ClientSession
) -> None:
    """An outage start is one POST with title, high priority, tags, bearer token and a fixed body naming the sink."""
    hook = NtfyHook(ntfy.url, TOKEN, session=session, timeout=5)
    assert await hook.notify(STARTED) is True
    [message] = ntfy.received
    assert (message.method, message.path) == ("POST", "/pop-alerts")
    assert message.headers["Title"] == "ams1: heartbeat delivery outage (loki)"
    assert message.headers["Priority"] == "high"
    assert message.headers["Tags"] == "rotating_light,pop-agent,delivery"
    assert f"Bearer {TOKEN}" == message.headers["Authorization"]
    expected = (
        "POP ams1 has not delivered heartbeats to loki for 5m 00s.\n"
        "Cause: loki answers HTTP 503 (http_503).\n"
        "31 heartbeats held in the spool on the POP; nothing is lost while the spool has room."
    )
    assert expected == message.body


async def test_recovery_message_gives_length_backlog_and_drain_rate(
    ntfy: FakeNtfy, session: aiohttp.ClientSession
) -> None:
    """A recovery is one POST at default priority with the outage's length, the backlog and the drain rate."""
    hook = NtfyHook(ntfy.url, None, session=session, timeout=5)
    assert await hook.notify(ENDED) is True
    [message] = ntfy.received
    assert (message.headers["Title"], message.headers["Priority"]) == (
        "ams1: heartbeat delivery to loki recovered",
        "default",
    )
    assert message.headers["Tags"] == "white_check_mark,pop-agent,delivery"
    assert "Authorization" not in message.headers
    expected = (
        "POP ams1 delivers heartbeats to loki again, after an outage of 12m 05s.\n"
        "42 heartbeats held back during the outage are still waiting, delivered at 12.5 per second: about 3s to go."
    )
    assert expected == message.body


@pytest.mark.parametrize("kind", list(AlarmKind))
def test_every_alarm_kind_has_templates(kind: AlarmKind) -> None:
    """Every alarm kind renders a start and an end message naming the POP."""
    started = render(OutageStarted(kind, "ams1", at=10.0, since=0.0, failure="timeout", backlog=1))
    ended = render(OutageEnded(kind, "ams1", at=20.0, duration_s=20.0, backlog=0, drain_per_s=None))
    assert all("ams1" in message[0] and "ams1" in message[3] for message in (started, ended))
    assert ended[3].endswith(("Nothing is waiting in the spool.", "nothing is waiting."))


@given(
    failure=st.text(max_size=80),
    pop=st.text(max_size=40),
    backlog=st.integers(min_value=-(10**9), max_value=10**12),
)
def test_free_text_never_reaches_a_message(failure: str, pop: str, backlog: int) -> None:
    """Whatever failure text or POP id an event carries, the message holds only fixed codes and numbers."""
    event = OutageStarted(AlarmKind.DELIVERY, pop, at=60.0, since=0.0, failure=failure, backlog=backlog)
    title, priority, tags, body = render(event)
    code = body.split("\n")[1].rsplit(" (", 1)[1].removesuffix(").")
    assert code == failure or code == "other"
    assert code.replace("_", "").isalnum() and code.isascii()
    shown_pop = title.split(":")[0]
    assert shown_pop == pop or shown_pop == "pop"
    assert all(text.isascii() and "\r" not in text for text in (title, priority, tags))


async def test_message_holds_no_token_and_no_url(ntfy: FakeNtfy, session: aiohttp.ClientSession) -> None:
    """Neither the body nor the message headers hold the token, a URL or an address."""
    hook = NtfyHook(ntfy.url, TOKEN, session=session, timeout=5)
    leaky = OutageStarted(
        AlarmKind.DELIVERY, "ams1", at=400.0, since=0.0, failure=f"connect to {ntfy.url} with {TOKEN}", backlog=3
    )
    for event in (leaky, ENDED):
        assert await hook.notify(event) is True
    for message in ntfy.received:
        visible = [message.body] + [message.headers[name] for name in ("Title", "Priority", "Tags")]
        for text in visible:
            assert TOKEN not in text
            assert "http" not in text and "127.0.0.1" not in text
    assert "Cause: a failure without a known cause (other)." in ntfy.received[0].body


async def test_refused_connection_returns_false(refused_url: str, session: aiohttp.ClientSession) -> None:
    """A server refusing connections makes notify return False, not raise."""
    hook = NtfyHook(refused_url, TOKEN, session=session, timeout=5)
    assert await hook.notify(STARTED) is False
    assert hook.status.failures_total == 1


async def test_hanging_server_returns_false_after_the_timeout(hanging_url: str, session: aiohttp.ClientSession) -> None:
    """A server that never answers makes notify return False once its timeout is spent."""
    hook = NtfyHook(hanging_url, TOKEN, session=session, timeout=0.2)
    # The outer bound only keeps a broken hook from hanging the test run.
    assert await asyncio.wait_for(hook.notify(STARTED), timeout=30) is False


async def test_failures_are_logged_once_per_transition_without_secrets(
    ntfy: FakeNtfy, session: aiohttp.ClientSession
) -> None:
    """Repeated failures log one warning, the next success one recovery line, and no line holds the URL or token."""
    hook = NtfyHook(ntfy.url, TOKEN, session=session, timeout=5)
    ntfy.status = 500
    with capture_logs() as logs:
        results = [await hook.notify(STARTED) for _ in range(3)]
        ntfy.status = 200
        results += [await hook.notify(ENDED) for _ in range(2)]
    assert results == [False, False, False, True, True]
    expected = [
        {"event": "alert_hook_failing", "hook": "ntfy", "failure": "http_500", "log_level": "warning"},
        {"event": "alert_hook_recovered", "hook": "ntfy", "log_level": "info"},
    ]
    assert expected == logs
    assert (hook.status.sent_total, hook.status.failures_total) == (2, 3)


def test_from_settings_is_none_without_url() -> None:
    """Without NTFY_ALERT_URL the hook is off."""
    settings = Settings(pop_id="ams1")
    assert NtfyHook.from_settings(settings, session=None) is None  # type: ignore[arg-type]


async def test_from_settings_uses_url_token_and_hook_timeout(ntfy: FakeNtfy, session: aiohttp.ClientSession) -> None:
    """NTFY_ALERT_URL and NTFY_ALERT_TOKEN configure the hook."""
    settings = Settings(
        pop_id="ams1",
        ntfy_alert_url=SecretStr(ntfy.url),
        ntfy_alert_token=SecretStr(TOKEN),
        alerts=AlertsSettings(hook_timeout=2.0),
    )
    hook = NtfyHook.from_settings(settings, session)
    assert hook is not None
    assert await hook.notify(STARTED) is True
    assert f"Bearer {TOKEN}" == ntfy.received[0].headers["Authorization"]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "0s"), (42.4, "42s"), (300, "5m 00s"), (725, "12m 05s"), (7384, "2h 03m 04s"), (-5, "0s")],
)
def test_format_duration(seconds: float, expected: str) -> None:
    """Durations read as seconds, minutes and hours."""
    assert expected == format_duration(seconds)
