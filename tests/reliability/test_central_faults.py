"""Central misbehaving: slow, slow to accept, hung, resetting, answering garbage, flapping every second.

In each case the daemon must keep its rhythm while central misbehaves, and once
central is well again every heartbeat it spooled must arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.reliability.harness import Central, assert_delivered, assert_keeps_rhythm, events, wait_for

FAULT_SECONDS = 2.5
Fault = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


class FaultyCentral(Central):
    """A :class:`Central` whose every request first meets ``fault`` (``None`` from it means: answer normally)."""

    fault: Fault | None = None
    attempts: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        fault = self.fault
        if fault is not None:
            response = await fault(request)
            if response is not None:
                self.requests += 1
                return response
        return await super().handle(request)


async def slow(request: web.Request) -> None:
    await asyncio.sleep(0.7)  # longer than the interval, shorter than the read timeout


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)  # until the client gives up (read timeout) and the server is torn down
    raise AssertionError("unreachable")


async def reset(request: web.Request) -> web.StreamResponse:
    """Closes the connection with a RST, half the time before and half the time after reading the body."""
    if next(_coin):
        await request.read()
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert request.transport is not None
    request.transport.abort()
    raise ConnectionResetError


_coin = itertools.cycle((True, False))
_garbage = itertools.count()


def garbage(central: FaultyCentral) -> Fault:
    """Answers whose bodies are garbage: random bytes, lying headers, a body cut short, HTML errors."""

    async def answer(request: web.Request) -> web.StreamResponse | None:
        kind = next(_garbage) % 5
        if kind == 0:
            return web.Response(status=500, text="<html><body>oops</body></html>", content_type="text/html")
        if kind == 1:
            return web.Response(status=502, body=os.urandom(5000), headers={"Retry-After": "soon-ish"})
        if kind == 2:
            # A 200 whose body is random bytes claiming to be gzip: still an ack, by status.
            central.respond = lambda batch: web.Response(body=os.urandom(300_000), headers={"Content-Encoding": "gzip"})
            return None
        if kind == 3:
            # A 200 that promises far more body than it sends, then hangs up.
            batch = json.loads(await request.read())["heartbeats"]
            response = web.StreamResponse(status=200, headers={"Content-Length": "100000"})
            await response.prepare(request)
            central.received.extend(batch)
            central.acked.extend(batch)
            await response.write(b'{"accep')
            assert request.transport is not None
            request.transport.close()
            return response
        central.respond = lambda batch: web.Response(status=200, body=b"\x00\xff not json")
        return None

    return answer


def flapping(central: FaultyCentral) -> Fault:
    """Well in even seconds; in odd seconds 503, a reset or a hang, in turn."""
    bad = itertools.cycle((lambda r: _unavailable(), reset, hang))

    async def answer(request: web.Request) -> web.StreamResponse | None:
        if int(time.monotonic()) % 2 == 0:
            return None
        return await next(bad)(request)

    return answer


async def _unavailable() -> web.StreamResponse:
    return web.Response(status=503, headers={"Retry-After": "0"})


class SlowAcceptRelay:
    """A TCP relay to central that accepts each connection only ``delay`` seconds after the previous one."""

    def __init__(self, target: str, delay: float) -> None:
        netloc, _, self._path = target.split("//", 1)[1].partition("/")
        self._host, port = netloc.split(":")
        self._port = int(port)
        self._delay = delay
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/{self._path}"

    def start(self) -> None:
        self._spawn(self._accept_slowly())

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._listener.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_slowly(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._delay)
            conn, _ = await loop.sock_accept(self._listener)
            self.accepted += 1
            self._spawn(self._relay(conn))

    async def _relay(self, conn: socket.socket) -> None:
        client_r, client_w = await asyncio.open_connection(sock=conn)
        server_r, server_w = await asyncio.open_connection(self._host, self._port)
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.mark.parametrize("mode", ["slow", "slow_accept", "hang", "reset", "garbage", "flapping"])
async def test_central_misbehaving(mode: str, aiohttp_server: Any, make_daemon: Any, tmp_path: Path) -> None:
    """While central misbehaves the daemon keeps ticking; once it is well, every spooled heartbeat arrives."""
    central = FaultyCentral()
    server = await aiohttp_server(central.app())
    url = str(server.make_url("/ingest/v1/heartbeats"))
    relay: SlowAcceptRelay | None = None
    env: dict[str, str] = {}
    if mode == "slow":
        central.fault = slow
        env["POP_AGENT_SINKS__CENTRAL__READ_TIMEOUT"] = "3"
    elif mode == "slow_accept":
        relay = SlowAcceptRelay(url, delay=0.5)
        relay.start()
        url = relay.url
        # One request per connection, so that every request waits to be accepted.
        central.respond = lambda batch: web.json_response({"accepted": len(batch)}, headers={"Connection": "close"})
    elif mode == "hang":
        central.fault = hang
    elif mode == "reset":
        central.fault = reset
    elif mode == "garbage":
        central.fault = garbage(central)
    else:
        central.fault = flapping(central)
    daemon = make_daemon(url, **env)
    await daemon.start()
    await wait_for(lambda: central.attempts >= 1, timeout=20)
    await assert_keeps_rhythm(daemon, seconds=FAULT_SECONDS)
    central.fault = None
    central.respond = None
    await wait_for(lambda: len(central.acked) >= 5 and not daemon.pending(), timeout=30)
    assert 0 == await daemon.stop()
    if relay is not None:
        relay.close()
        assert relay.accepted >= 3
    assert_delivered(daemon, central)
    assert events(daemon, "tick_failed") == []
    assert [] == list((daemon.state_dir / "spool" / "rejected").glob("*.json"))
