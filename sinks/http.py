"""HTTP helpers every upload sink shares: the session, ``Retry-After``, and error codes.

Library exceptions and status codes are translated here, at the boundary, into
:class:`~agent.errors.TransientSinkError` (keep and retry) or
:class:`~agent.errors.PermanentSinkError` (retrying the same request cannot help),
each with a fixed code such as ``"timeout"``, ``"connect"`` or ``"http_503"``.
Neither exception text nor response bodies are carried along.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC

import aiohttp
import structlog

from agent.errors import PermanentSinkError, SinkError, TransientSinkError
from agent.ledger_hook import upload_trace_config
from agent.ledger_record import RequestIds
from agent.network_codes import network_code

# A receiver asking for more than a day is treated as asking for a day: the value
# only decides when to knock again, and the spool keeps the data meanwhile.
MAX_RETRY_AFTER = 86_400.0
# Answers are drained so the connection can be reused; central's are tiny, and a
# huge one is cut off (the connection is then closed instead of reused).
MAX_DRAIN_BYTES = 65_536

# Compressing a body this large would hold the event loop for milliseconds.
THREAD_GZIP_BYTES = 262_144

log = structlog.get_logger("sinks")

# How a sink reads an answer: the error it means, or None when it is an ack.
Judge = Callable[[aiohttp.ClientResponse], Awaitable[SinkError | None]]

_DELTA_SECONDS = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?", re.ASCII)


# How long an idle connection is kept for the next send: past the default
# delivery.flush_interval (30 s) and a tick, so a flush reuses its connection
# (a TLS handshake costs more CPU than the request it opens), and within nginx's
# default 75 s, after which the receiver would close it anyway.
KEEPALIVE_S = 60.0


def make_session(
    *,
    connect_timeout: float,
    read_timeout: float,
    user_agent: str = "pop-agent",
    limit: int = 4,
) -> aiohttp.ClientSession:
    """A client session with TLS verification on, bounded timeouts and no redirects to surprise it.

    Must be called inside the running event loop. ``trust_env`` stays off so that
    neither proxy variables nor ``.netrc`` credentials change where data goes.
    Cookies a receiver sets are neither kept nor sent back: a request carries only
    what the sink put in it (and no jar is consulted on every send).
    Every request it makes is recorded in the sent ledger (:mod:`agent.ledger_hook`).
    """
    # ssl=True: aiohttp's verifying context (the system's trust store, hostnames
    # checked), built once when aiohttp is imported. A context of our own would read
    # the CA bundle on the event loop and hold a second copy of it: 0.8 MiB resident.
    # A private CA installed later (update-ca-certificates) is still trusted without
    # a restart: OpenSSL looks its hashed name up in /etc/ssl/certs when verifying.
    connector = aiohttp.TCPConnector(ssl=True, limit=limit, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_S)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": user_agent},
        raise_for_status=False,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trace_configs=[upload_trace_config()],
    )


class SessionHolder:
    """A sink's HTTP session: one passed in (borrowed, never closed here) or one made on first use.

    Made lazily because a session must be created inside the running event loop;
    an owned session closed by accident is made anew rather than failing every send.
    """

    def __init__(self, session: aiohttp.ClientSession | None, *, connect_timeout: float, read_timeout: float) -> None:
        self._session = session
        self._owned = session is None
        self._timeouts = (connect_timeout, read_timeout)

    def get(self) -> aiohttp.ClientSession:
        """The session to send with."""
        if self._session is None or (self._owned and self._session.closed):
            connect, read = self._timeouts
            self._session = make_session(connect_timeout=connect, read_timeout=read)
        return self._session

    async def aclose(self) -> None:
        """Close the session if it was made here."""
        if self._owned and self._session is not None:
            session, self._session = self._session, None
            await session.close()


def request_timeout(connect: float, read: float, remaining: float) -> aiohttp.ClientTimeout:
    """Per-request timeouts: the configured ones, never longer than the deadline leaves."""
    total = None if remaining == float("inf") else remaining
    return aiohttp.ClientTimeout(total=total, sock_connect=min(connect, remaining), sock_read=min(read, remaining))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or ``None``.

    The result is clamped to ``[0, MAX_RETRY_AFTER]``; a date in the past means now.
    Anything unparseable is ``None`` (the back-off then decides alone).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP-dates are GMT anyway
        when = when.replace(tzinfo=UTC)
    try:
        delay = when.timestamp() - (time.time() if now is None else now)
    except (OverflowError, OSError, ValueError):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def error_for_status(status: int, headers: Mapping[str, str]) -> SinkError | None:
    """``None`` for 2xx, else the error the status means, with a fixed code.

    408, 429 and 5xx are transient (``http_<status>``, with ``Retry-After``).
    Permanent ones: 401/403 ``auth``, 413 ``too_large``, 400/422 ``malformed``,
    anything else ``http_<status>``. Permanent means "the same request will fail
    again"; whether the data is then rejected or kept is the sink's decision.
    """
    if 200 <= status < 300:
        return None
    if status in (408, 429) or 500 <= status < 600:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return TransientSinkError(f"http_{status}", code=f"http_{status}", retry_after=retry_after)
    if status in (401, 403):
        return PermanentSinkError("auth", code="auth")
    if status == 413:
        return PermanentSinkError("too_large", code="too_large")
    if status in (400, 422):
        return PermanentSinkError("malformed", code="malformed")
    code = f"http_{status}" if 100 <= status < 1000 else "http_other"
    return PermanentSinkError(code, code=code)


def error_for_exception(exc: BaseException) -> TransientSinkError:
    """The transient error (fixed code, no text) a client-side failure means.

    Every network failure keeps the data. The code is :func:`agent.network_codes.network_code`'s,
    the one the sent ledger and the alert hooks use: ``timeout``, ``tls``, ``dns``,
    ``connect``, ``disconnected``, ``protocol``, else ``client_error``.
    """
    code = network_code(exc)
    return TransientSinkError(code, code=code)


async def judge_status(response: aiohttp.ClientResponse) -> SinkError | None:
    """The usual reading of an answer: its status decides; an ack's body is drained so the connection is reused.

    The status is the ack: a body that then fails to arrive changes nothing.
    """
    error = error_for_status(response.status, response.headers)
    if error is None:
        await drain_quietly(response)
    return error


async def request_once(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    sink: str,
    data: bytes,
    headers: Mapping[str, str],
    client_timeout: aiohttp.ClientTimeout,
    sent: RequestIds | None = None,
    judge: Judge = judge_status,
) -> None:
    """Make one request, once; raise the :class:`SinkError` its outcome means.

    No retry here: the delivery loop's backoff decides when to try again, so
    retries never multiply across layers. No redirect is followed. ``sent`` (the
    request's heartbeat ids) goes to the sent ledger's trace.
    """
    error: SinkError | None
    try:
        async with session.request(
            method,
            url,
            data=data,
            headers=headers,
            timeout=client_timeout,
            allow_redirects=False,
            trace_request_ctx=sent,
        ) as response:
            error = await judge(response)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        error = error_for_exception(exc)
    if error is not None:
        log.debug("attempt_failed", sink=sink, code=error.code)
        raise error


def gzip_bytes(body: bytes) -> bytes:
    """``body`` as one gzip member.

    Level 1: heartbeats still shrink about 8x, at a third of the CPU of level 5
    (measured by bench/drain_bench.py), and the POP's CPU belongs to the vaults.
    """
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


async def gzipped(body: bytes) -> bytes:
    """:func:`gzip_bytes`, in a thread when the body is large enough to hold the event loop up."""
    return await asyncio.to_thread(gzip_bytes, body) if len(body) >= THREAD_GZIP_BYTES else gzip_bytes(body)


async def drain_quietly(response: aiohttp.ClientResponse) -> None:
    """:func:`drain`, where a body that fails to arrive changes nothing."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
        await drain(response)


async def drain(response: aiohttp.ClientResponse, limit: int = MAX_DRAIN_BYTES) -> None:
    """Read and discard up to ``limit`` bytes of an answer so its connection can be reused."""
    left = limit
    while left > 0:
        chunk = await response.content.read(min(left, 16_384))
        if not chunk:
            return
        left -= len(chunk)
