"""The remote-write sink against real aiohttp servers on 127.0.0.1: wire format and every kind of answer."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import cramjam
import pytest
import structlog
from aiohttp import web

from agent.deadline import Deadline
from agent.sample import Pending
from agent.settings import RemoteWriteSinkSettings
from sinks.remote_write import RemoteWriteSink, refusal_code
from sinks.series import families, timestamp_ms
from tests.sinks.realprocs import heartbeat
from tests.sinks.rwdecode import Decoded, decode_body, decode_protobuf, label_names

PATH = "/api/v1/write"
TOKEN = "rw-s3cr3t-token-0123456789"


@dataclass
class Request:
    """What the test receiver got in one request."""

    headers: dict[str, str]
    body: bytes
    series: Decoded

    @property
    def timestamps(self) -> set[int]:
        return {ts for _, samples in self.series for ts, _ in samples}

    def values(self, name: str) -> list[float]:
        return [value for labels, samples in self.series if labels["__name__"] == name for _, value in samples]


Respond = Callable[[Request], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Receiver:
    """A remote-write receiver that decodes and records every request; ``respond`` decides each answer."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    respond: Respond | None = None

    @property
    def accepted(self) -> list[Request]:
        return [request for request in self.requests if getattr(request, "status", 204) < 300]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        got = Request(dict(request.headers), body, decode_body(body))
        self.requests.append(got)
        answer = self.respond(got) if self.respond else web.Response(status=204)
        if asyncio.iscoroutine(answer):
            answer = await answer
        got.status = answer.status  # type: ignore[attr-defined]
        return answer  # type: ignore[return-value]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[Callable[[Respond | None], Awaitable[Receiver]]]:
    """Factory: a started receiver with the given responder."""

    async def make(respond: Respond | None = None) -> Receiver:
        recorder = Receiver(respond=respond)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(PATH, recorder.handle)
        server = await aiohttp_server(app)
        recorder.url = str(server.make_url(PATH))
        return recorder

    yield make


@pytest.fixture
async def make_sink() -> AsyncIterator[Callable[..., RemoteWriteSink]]:
    """Factory: a sink for a URL, closed after the test."""
    made: list[RemoteWriteSink] = []

    def make(url: str, *, auth: str | None = None, **settings: Any) -> RemoteWriteSink:
        cfg = RemoteWriteSinkSettings(url=url, **settings)
        sink = RemoteWriteSink(cfg, authorization=auth)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        await sink.aclose()


def beats(count: int, *, start: float | None = None, step: float = 10.0, pop: str = "ams1") -> list[Pending]:
    """``count`` heartbeats of one POP, ``step`` seconds apart, the newest a few seconds old."""
    first = (time.time() - 5 - step * count) if start is None else start
    return [
        heartbeat(pop, seq=i, ts=first + i * step, metrics={"cpu_percent": float(i), "requests_total": 100 * i})
        for i in range(count)
    ]


def ms(item: Pending) -> int:
    return timestamp_ms(item.doc)


async def test_body_is_snappy_block_protobuf_with_the_spec_headers(receiver: Any, make_sink: Any) -> None:
    """One request: the four spec headers, a bearer token, the tenant, and a snappy block-format body."""
    server = await receiver()
    sink = make_sink(server.url, auth=f"Bearer {TOKEN}", tenant_id="fleet-eu")

    delivery = await sink.send(beats(2), Deadline(30))

    (request,) = server.requests
    expected_headers = {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
        "Authorization": f"Bearer {TOKEN}",
        "X-Scope-OrgID": "fleet-eu",
    }
    assert expected_headers == {key: request.headers.get(key) for key in expected_headers}
    assert request.headers["User-Agent"].startswith("pop-agent/")
    raw = bytes(cramjam.snappy.decompress_raw(request.body))
    assert decode_protobuf(raw) == request.series
    with pytest.raises(cramjam.DecompressionError):
        cramjam.snappy.decompress(request.body)  # the framed format: a block body is not one
    assert (2, None) == (len(delivery.acked), delivery.failure)


async def test_series_are_the_shared_mapping_with_job_and_pop(receiver: Any, make_sink: Any) -> None:
    """Every series is one of the mapping's, carries job and pop, and has its labels sorted by name."""
    server = await receiver()
    item = heartbeat("fra2", seq=4, series=[{"name": "disk_used_percent", "labels": {"mount": "/srv"}, "value": 77.5}])

    await make_sink(server.url).send([item], Deadline(30))

    (request,) = server.requests
    expected = {
        (name, labels, float(value))
        for name, samples in families(item.doc).items()
        for labels, value in samples.items()
    }
    sent = {
        (labels["__name__"], tuple(sorted((k, v) for k, v in labels.items() if k not in ("__name__", "job", "pop"))), v)
        for labels, samples in request.series
        for _, v in samples
    }
    assert expected == sent
    assert {("pop_agent", "fra2")} == {(labels["job"], labels["pop"]) for labels, _ in request.series}
    assert all(names == sorted(names) for names in label_names(bytes(cramjam.snappy.decompress_raw(request.body))))
    assert {ms(item)} == request.timestamps


async def test_samples_of_each_series_go_in_timestamp_order(receiver: Any, make_sink: Any) -> None:
    """A shuffled backlog arrives as one sample per heartbeat per series, each series oldest first."""
    server = await receiver()
    backlog = beats(40)
    shuffled = random.Random(7).sample(backlog, len(backlog))

    delivery = await make_sink(server.url).send(shuffled, Deadline(30))

    assert {item.id for item in backlog} == delivery.acked
    (request,) = server.requests
    for _, samples in request.series:
        assert [ms(item) for item in backlog] == [ts for ts, _ in samples]
    assert [float(i) for i in range(40)] == request.values("cpu_percent")


async def test_heartbeats_older_than_max_sample_age_are_skipped_counted_and_logged_once(
    receiver: Any, make_sink: Any
) -> None:
    """Old heartbeats are settled as skipped without being sent; the log says so once, not per batch."""
    server = await receiver()
    sink = make_sink(server.url, max_sample_age=600)
    old = beats(5, start=time.time() - 3600)
    fresh = beats(3)

    with structlog.testing.capture_logs() as logs:
        first = await sink.send(old[:3] + fresh, Deadline(30))
        second = await sink.send(old[3:], Deadline(30))

    assert {item.id: "too_old" for item in old[:3]} == first.skipped
    assert {item.id for item in old[:3] + fresh} == first.acked
    assert ({item.id for item in old[3:]}, {}) == (second.acked, second.rejected)
    assert [{ms(item) for item in fresh}] == [request.timestamps for request in server.requests]
    assert 5 == sink.skipped_total
    assert 1 == len([line for line in logs if line["event"] == "remote_write_skipped_old"])


async def test_a_400_for_one_sample_is_bisected_to_that_heartbeat(receiver: Any, make_sink: Any) -> None:
    """A receiver refusing one heartbeat's sample (the whole request undone) gets every other one, in order."""
    backlog = beats(16)
    poisoned = ms(backlog[11])

    def respond(request: Request) -> web.Response:
        if poisoned in request.timestamps:
            return web.Response(status=400, text="out of order sample")
        return web.Response(status=204)

    server = await receiver(respond)
    delivery = await make_sink(server.url).send(backlog, Deadline(30))

    assert {backlog[11].id: "out_of_order"} == delivery.rejected
    assert {item.id for item in backlog} - {backlog[11].id} == delivery.acked
    delivered = [ts for request in server.accepted for ts in sorted(request.timestamps)]
    assert [ms(item) for item in backlog if item is not backlog[11]] == delivered


async def test_prometheus_2_42s_500_for_too_old_samples_is_settled_not_retried_forever(
    receiver: Any, make_sink: Any
) -> None:
    """A 500 whose body says "too old sample" rejects the old heartbeats and delivers the rest, in bounded requests."""
    backlog = beats(8)
    cutoff = ms(backlog[3])

    def respond(request: Request) -> web.Response:
        if min(request.timestamps) < cutoff:
            return web.Response(status=500, text="too old sample")
        return web.Response(status=204)

    server = await receiver(respond)
    delivery = await make_sink(server.url).send(backlog, Deadline(30))

    assert {item.id: "too_old" for item in backlog[:3]} == delivery.rejected
    assert {item.id for item in backlog[3:]} == delivery.acked
    assert None is delivery.failure
    assert len(server.requests) <= 2 * len(backlog)


async def test_a_404_is_settled_for_this_sink_and_logged_once(receiver: Any, make_sink: Any) -> None:
    """Another 4xx rejects the request's heartbeats with a fixed code, logged once across sends, never retried."""
    server = await receiver(lambda request: web.Response(status=404, text="no such endpoint at /srv/x"))
    sink = make_sink(server.url)
    first, second = beats(3), beats(2, pop="fra1")

    with structlog.testing.capture_logs() as logs:
        deliveries = [await sink.send(first, Deadline(30)), await sink.send(second, Deadline(30))]

    assert [{item.id: "http_404" for item in part} for part in (first, second)] == [d.rejected for d in deliveries]
    assert [None, None] == [d.failure for d in deliveries]
    assert 2 == len(server.requests)
    refusals = [line for line in logs if line["event"] == "remote_write_refused"]
    assert [{"event": "remote_write_refused", "reason": "http_404", "count": 3, "log_level": "warning"}] == refusals
    assert "/srv/x" not in repr(logs) + repr(deliveries)


async def test_a_413_splits_the_request_until_it_fits(receiver: Any, make_sink: Any) -> None:
    """413 halves the request; parts that fit are delivered, a lone heartbeat still too large is rejected."""
    backlog = beats(8)
    huge = backlog[5]

    def respond(request: Request) -> web.Response:
        if len(request.timestamps) > 2 or ms(huge) in request.timestamps:
            return web.Response(status=413)
        return web.Response(status=204)

    server = await receiver(respond)
    delivery = await make_sink(server.url).send(backlog, Deadline(30))

    assert {huge.id: "too_large"} == delivery.rejected
    assert {item.id for item in backlog if item is not huge} == delivery.acked


async def test_a_429_is_kept_with_the_receivers_retry_after(receiver: Any, make_sink: Any) -> None:
    """429 with Retry-After: one request, the batch kept, and the receiver's Retry-After handed to the loop."""
    server = await receiver(lambda request: web.Response(status=429, headers={"Retry-After": "7"}))
    backlog = beats(3)

    delivery = await make_sink(server.url).send(backlog, Deadline(30))

    assert (frozenset(), {}, "http_429", 7.0) == (
        delivery.acked,
        delivery.rejected,
        delivery.failure,
        delivery.retry_after,
    )
    assert 1 == len(server.requests)


async def test_a_429_then_a_204_delivers_on_the_next_pass(receiver: Any, make_sink: Any) -> None:
    """A receiver that asks to wait once gets the same samples on the next pass, and takes them."""
    answers = iter([web.Response(status=429, headers={"Retry-After": "0"}), web.Response(status=204)])
    server = await receiver(lambda request: next(answers))
    backlog = beats(3)
    sink = make_sink(server.url)

    first = await sink.send(backlog, Deadline(30))
    second = await sink.send(backlog, Deadline(30))

    assert ("http_429", {item.id for item in backlog}, 2) == (first.failure, second.acked, len(server.requests))
    assert server.requests[0].series == server.requests[1].series


async def test_a_plain_500_is_kept(receiver: Any, make_sink: Any) -> None:
    """A 500 that names no sample error is transient: kept, its text never carried along."""
    server = await receiver(lambda request: web.Response(status=500, text="panic: at /srv/vm/app.go:12"))
    backlog = beats(2)

    with structlog.testing.capture_logs() as logs:
        delivery = await make_sink(server.url).send(backlog, Deadline(30))

    assert (frozenset(), {}, "http_500", 1) == (
        delivery.acked,
        delivery.rejected,
        delivery.failure,
        len(server.requests),
    )
    assert "panic" not in repr(logs) + repr(delivery)


async def test_a_hanging_receiver_times_out_and_keeps_the_batch(receiver: Any, make_sink: Any) -> None:
    """A receiver that never answers costs the read timeout per try; the batch is kept as "timeout"."""
    release = asyncio.Event()

    async def hang(request: Request) -> web.Response:
        await release.wait()
        return web.Response(status=204)

    server = await receiver(hang)
    try:
        delivery = await make_sink(server.url, read_timeout=0.3).send(beats(2), Deadline(30))
    finally:
        release.set()
    assert (frozenset(), "timeout") == (delivery.acked, delivery.failure)


async def test_a_hanging_receiver_never_outlasts_the_deadline(receiver: Any, make_sink: Any) -> None:
    """With a read timeout longer than the pass's deadline, the deadline ends the wait and the batch is kept."""
    release = asyncio.Event()

    async def hang(request: Request) -> web.Response:
        await release.wait()
        return web.Response(status=204)

    server = await receiver(hang)
    try:
        delivery = await make_sink(server.url, read_timeout=300).send(beats(2), Deadline(0.5))
    finally:
        release.set()
    assert frozenset() == delivery.acked
    assert delivery.failure in {"timeout", "deadline"}


def test_refusal_codes_follow_the_receivers_words() -> None:
    """Prometheus', Mimir's and Thanos' sample refusals map to fixed codes; anything else is none."""
    cases = {
        (400, "out of bounds"): "too_old",
        (500, "too old sample"): "too_old",
        (400, "err-mimir-sample-out-of-order"): "out_of_order",
        (400, "duplicate sample for timestamp"): "duplicate",
        (409, "conflict"): "conflict",
        (500, "internal error"): None,
        (400, "snappy: corrupt input"): None,
    }
    assert cases == {key: refusal_code(*key) for key in cases}


async def test_a_value_no_double_can_hold_rejects_only_its_heartbeat(receiver: Any, make_sink: Any) -> None:
    """A heartbeat with an integer beyond a double's range is rejected "malformed"; the rest are delivered."""
    server = await receiver()
    backlog = beats(4)
    huge = heartbeat("ams1", seq=9, metrics={"requests_total": 10**400})

    delivery = await make_sink(server.url).send([*backlog, huge], Deadline(30))

    assert ({huge.id: "malformed"}, {item.id for item in backlog}) == (delivery.rejected, delivery.acked)


async def test_a_batch_whose_series_change_still_goes_in_order_per_series(receiver: Any, make_sink: Any) -> None:
    """Interleaved POPs and a heartbeat with an extra series: every series gets each sample once, oldest first."""
    server = await receiver()
    backlog = beats(20) + beats(12, pop="fra1")
    odd = heartbeat("ams1", seq=50, ts=time.time() - 100, metrics={"cpu_percent": 99.0, "vault_count": 7})
    batch = random.Random(3).sample([*backlog, odd], len(backlog) + 1)

    delivery = await make_sink(server.url).send(batch, Deadline(30))

    assert {item.id for item in batch} == delivery.acked
    (request,) = server.requests
    merged: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    for labels, samples in request.series:
        merged.setdefault(tuple(sorted(labels.items())), []).extend(samples)
    for pop in ("ams1", "fra1"):
        items = sorted((item for item in batch if item.doc["pop"] == pop), key=ms)
        key = (("__name__", "cpu_percent"), ("job", "pop_agent"), ("pop", pop))
        expected = [(ms(item), float(item.doc["metrics"]["cpu_percent"])) for item in items]
        assert expected == merged[key]
    assert [(ms(odd), 7.0)] == merged[(("__name__", "vault_count"), ("job", "pop_agent"), ("pop", "ams1"))]
