"""The shared HTTP helpers: Retry-After parsing, status and exception codes, the session."""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import PermanentSinkError, SinkError, TransientSinkError
from agent.ledger import Ledger, read_ledger
from agent.ledger_hook import LedgerWriter, sending
from sinks.http import (
    MAX_RETRY_AFTER,
    drain,
    error_for_exception,
    error_for_status,
    make_session,
    parse_retry_after,
    request_timeout,
)

NOW = datetime(2026, 11, 22, 7, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("99999999999", MAX_RETRY_AFTER),
        ("Sun, 22 Nov 2026 07:00:30 GMT", 30.0),
        ("Sunday, 22-Nov-26 07:01:00 GMT", 60.0),
        ("Sun Nov 22 07:00:10 2026", 10.0),
        ("Sun, 22 Nov 2026 06:00:00 GMT", 0.0),
        ("-3", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("soon", None),
        ("1e3", None),
        ("\u0663", None),
    ],
)
def test_parse_retry_after_reads_both_forms(header: str | None, expected: float | None) -> None:
    """Delta-seconds and the three HTTP-date forms parse; past dates mean now; junk means no hint."""
    assert expected == parse_retry_after(header, now=NOW)


@given(st.text(max_size=60))
def test_parse_retry_after_never_raises_and_stays_in_bounds(header: str) -> None:
    """Any header value gives None or a wait between 0 and MAX_RETRY_AFTER."""
    parsed = parse_retry_after(header, now=NOW)

    assert parsed is None or 0.0 <= parsed <= MAX_RETRY_AFTER


@given(st.integers(-10_000, 100_000))
def test_http_dates_give_the_seconds_until_them(offset: int) -> None:
    """An IMF-fixdate ``offset`` seconds from now waits ``offset`` seconds (0 if past, capped at a day)."""
    header = format_datetime(datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=offset), usegmt=True)

    assert min(max(offset, 0), MAX_RETRY_AFTER) == parse_retry_after(header, now=NOW)


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (200, None, None),
        (202, None, None),
        (204, None, None),
        (408, TransientSinkError, "http_408"),
        (429, TransientSinkError, "http_429"),
        (500, TransientSinkError, "http_500"),
        (503, TransientSinkError, "http_503"),
        (599, TransientSinkError, "http_599"),
        (401, PermanentSinkError, "auth"),
        (403, PermanentSinkError, "auth"),
        (413, PermanentSinkError, "too_large"),
        (400, PermanentSinkError, "malformed"),
        (422, PermanentSinkError, "malformed"),
        (404, PermanentSinkError, "http_404"),
        (307, PermanentSinkError, "http_307"),
    ],
)
def test_statuses_map_to_fixed_codes(status: int, kind: type[SinkError] | None, code: str | None) -> None:
    """Each status maps to no error (2xx), a transient or a permanent error with a fixed code."""
    error = error_for_status(status, {})

    assert (kind, code) == ((type(error), error.code) if error is not None else (None, None))


def test_transient_statuses_carry_retry_after() -> None:
    """A 429's Retry-After travels on the error for the retry policy to honour."""
    error = error_for_status(429, {"Retry-After": "12"})

    assert isinstance(error, TransientSinkError)
    assert error.retry_after == 12.0


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeoutError(), "timeout"),
        (aiohttp.ServerTimeoutError("read timed out: secret"), "timeout"),
        (aiohttp.ServerDisconnectedError(), "disconnected"),
        (aiohttp.ClientPayloadError("truncated"), "protocol"),
        (ConnectionRefusedError(111, "refused"), "connect"),
        (aiohttp.ClientConnectionError("x"), "connect"),
        (ssl.SSLError("bad"), "tls"),
        (aiohttp.ClientError("other"), "client_error"),
    ],
)
def test_exceptions_map_to_transient_codes_without_text(exc: BaseException, code: str) -> None:
    """Client-side failures become transient errors holding only a fixed code, never the exception text."""
    error = error_for_exception(exc)

    assert (TransientSinkError, code, code) == (type(error), error.code, str(error))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def codes_of(url: str, **session_kwargs: Any) -> tuple[str, str | int]:
    """The code a real request to ``url`` through ``make_session`` fails with, and the sent ledger's status for it."""
    with tempfile.TemporaryDirectory() as directory:
        writer = LedgerWriter(Ledger(Path(directory), max_age=3600, max_bytes=1 << 20))
        session = make_session(**{"connect_timeout": 5.0, "read_timeout": 5.0, **session_kwargs})
        code = "ok"
        try:
            with sending(writer, "central"):
                async with session.post(url, data=b"{}") as response:
                    await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            code = error_for_exception(exc).code
        finally:
            await session.close()
            await writer.aclose()
        (record,) = read_ledger(Path(directory)).records
    return code, record.status


async def test_a_closed_port_is_connect() -> None:
    """A refused connection is "connect", for the sink and in the sent ledger alike."""
    assert await codes_of(f"http://127.0.0.1:{closed_port()}/") == ("connect", "connect")


async def test_a_server_that_hangs_up_is_disconnected() -> None:
    """A server that reads the request and closes the connection is "disconnected", for the sink and the ledger."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await codes_of(f"http://127.0.0.1:{port}/") == ("disconnected", "disconnected")


async def test_a_server_that_never_answers_is_timeout() -> None:
    """A server that accepts and stays silent past the read timeout is "timeout", for the sink and the ledger."""
    stop = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stop.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        codes = await codes_of(f"http://127.0.0.1:{port}/", read_timeout=0.2)
        stop.set()
    assert codes == ("timeout", "timeout")


def answer(response: web.Response) -> Any:
    """A handler that always gives ``response``."""

    async def handler(request: web.Request) -> web.Response:
        return response

    return handler


async def test_make_session_verifies_tls(aiohttp_server: Any, self_signed: tuple[Path, Path]) -> None:
    """The shared session refuses a certificate no trusted authority signed: "tls", for the sink and the ledger."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)
    app = web.Application()
    app.router.add_post("/", answer(web.Response()))
    server = await aiohttp_server(app, ssl=context)

    assert await codes_of(f"https://127.0.0.1:{server.port}/") == ("tls", "tls")


async def test_make_session_never_sends_back_a_cookie(aiohttp_server: Any) -> None:
    """A cookie a receiver sets is not kept: the next request carries no ``Cookie`` header.

    By name, not by address: a default jar keeps no cookie from an IP address at all.
    """
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response()
        response.set_cookie("session", "tracking-me")
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    session = make_session(connect_timeout=5, read_timeout=5)
    try:
        for _ in range(2):
            async with session.post(f"http://localhost:{server.port}/", data=b"{}") as response:
                assert response.cookies["session"].value == "tracking-me"
    finally:
        await session.close()

    assert seen == [None, None]


def test_request_timeouts_never_outlast_the_deadline() -> None:
    """Connect and read timeouts are shortened to what the deadline leaves; no deadline means no total."""
    capped = request_timeout(5.0, 15.0, 2.0)
    free = request_timeout(5.0, 15.0, float("inf"))

    assert (capped.total, capped.sock_connect, capped.sock_read) == (2.0, 2.0, 2.0)
    assert (free.total, free.sock_connect, free.sock_read) == (None, 5.0, 15.0)


async def test_drain_reads_at_most_its_limit(aiohttp_server: Any) -> None:
    """Draining a large answer stops at the limit instead of reading it all."""
    app = web.Application()
    app.router.add_get("/", answer(web.Response(body=b"x" * 1_000_000)))
    server = await aiohttp_server(app)

    async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as response:
        await drain(response, limit=20_000)
        left = len(await response.read())

    assert 1_000_000 - left <= 20_000 + 16_384
