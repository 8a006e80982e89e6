"""The ledger's one hook: every request of an upload session or the hooks' session becomes a record."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent.ledger import Ledger, read_ledger
from agent.ledger_hook import LedgerWriter, hook_trace_config, sending
from agent.ledger_record import RequestIds
from sinks.http import make_session


def _writer(directory: Path, *, keep_bodies: bool = False) -> LedgerWriter:
    return LedgerWriter(
        Ledger(directory, max_age=86_400, max_bytes=1 << 20, keep_bodies=keep_bodies, bodies_max_bytes=1 << 20)
    )


async def _echo_server(aiohttp_server: Any) -> Any:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return await aiohttp_server(app)


async def test_a_request_without_context_is_still_recorded(aiohttp_server: Any, tmp_path: Path) -> None:
    """A sink that passes no RequestIds is recorded under its name, with no ids, digest and status intact."""
    server = await _echo_server(aiohttp_server)
    writer = _writer(tmp_path)
    body = b"x" * 5000
    session = make_session(connect_timeout=5, read_timeout=5)
    try:
        with sending(writer, "custom"):
            async with session.post(server.make_url("/push?token=S3CRET"), data=body) as response:
                assert 202 == response.status
    finally:
        await session.close()
        await writer.aclose()
    (record,) = read_ledger(tmp_path).records

    assert ("custom", (), None, 5000, hashlib.sha256(body).hexdigest(), 202) == (
        record.sink,
        record.ids,
        record.seq,
        record.bytes,
        record.sha256,
        record.status,
    )
    assert f"http://127.0.0.1:{server.port}/push" == record.destination


async def test_request_ids_passed_by_the_sink_land_in_the_record(aiohttp_server: Any, tmp_path: Path) -> None:
    """Ids and the seq range a sink passes as trace_request_ctx are the record's."""
    server = await _echo_server(aiohttp_server)
    writer = _writer(tmp_path, keep_bodies=True)
    session = make_session(connect_timeout=5, read_timeout=5)
    try:
        with sending(writer, "central"):
            ids = RequestIds(("a", "b"), (4, 5))
            async with session.post(server.make_url("/"), data=b"{}", trace_request_ctx=ids) as response:
                await response.read()
    finally:
        await session.close()
        await writer.aclose()
    (record,) = read_ledger(tmp_path).records

    assert (("a", "b"), (4, 5), True) == (record.ids, record.seq, record.kept)


async def test_a_refused_connection_is_recorded_with_a_fixed_code(tmp_path: Path, unused_tcp_port: int) -> None:
    """A request that got no answer is a record too: nothing sent, status ``connect``."""
    writer = _writer(tmp_path)
    session = make_session(connect_timeout=5, read_timeout=5)
    try:
        with sending(writer, "central"):
            try:
                async with session.post(f"http://127.0.0.1:{unused_tcp_port}/", data=b"{}"):
                    pass
            except aiohttp.ClientError:
                pass
    finally:
        await session.close()
        await writer.aclose()
    (record,) = read_ledger(tmp_path).records

    assert ("central", "connect", 0) == (record.sink, record.status, record.bytes)


async def test_outside_a_delivery_an_upload_session_records_nothing(aiohttp_server: Any, tmp_path: Path) -> None:
    """Without a ledger in the task (a sink used on its own), requests go through unrecorded."""
    server = await _echo_server(aiohttp_server)
    session = make_session(connect_timeout=5, read_timeout=5)
    try:
        async with session.post(server.make_url("/"), data=b"{}") as response:
            assert 202 == response.status
    finally:
        await session.close()

    assert [] == read_ledger(tmp_path / "ledger").records


async def test_hook_requests_are_labelled_by_their_url_and_masked(aiohttp_server: Any, tmp_path: Path) -> None:
    """The hooks' session names ntfy and Kuma by URL, masking the topic and the push token."""
    server = await _echo_server(aiohttp_server)
    writer = _writer(tmp_path)
    kuma = str(server.make_url("/api/push/KUMATOKEN"))
    ntfy = str(server.make_url("/topic-secret"))
    config = hook_trace_config(writer, {"kuma": kuma + "?status=up", "ntfy": ntfy})
    try:
        async with aiohttp.ClientSession(trace_configs=[config]) as session:
            async with session.get(kuma + "?status=down&msg=x&ping=") as response:
                await response.read()
            async with session.post(ntfy, data=b"POP test-pop is back.") as response:
                await response.read()
    finally:
        await writer.aclose()
    records = read_ledger(tmp_path).records
    base = f"http://127.0.0.1:{server.port}"

    assert [("kuma", f"{base}/api/push/********"), ("ntfy", f"{base}/********")] == [
        (record.sink, record.destination) for record in records
    ]


async def test_aiohttps_silent_second_attempt_is_a_record_of_its_own(aiohttp_server: Any, tmp_path: Path) -> None:
    """A PUT whose connection dies unanswered is sent again by aiohttp; each attempt is one record, as received."""
    received: list[str] = []

    async def first_drops(request: web.Request) -> web.Response:
        received.append(hashlib.sha256(await request.read()).hexdigest())
        if len(received) == 1:
            assert request.transport is not None
            request.transport.close()  # the body arrived; the answer never leaves
        return web.Response(status=200)

    app = web.Application()
    app.router.add_put("/metrics/job/pop_agent/pop/ams1", first_drops)
    server = await aiohttp_server(app)
    writer = _writer(tmp_path)
    body = b"pop_agent_up 1\n"
    session = make_session(connect_timeout=5, read_timeout=5)
    try:
        with sending(writer, "pushgateway"):
            async with session.put(server.make_url("/metrics/job/pop_agent/pop/ams1"), data=body) as response:
                assert 200 == response.status
    finally:
        await session.close()
        await writer.aclose()
    records = read_ledger(tmp_path).records

    assert received == [record.sha256 for record in records]
    assert ["disconnected", 200] == [record.status for record in records]
