"""The remote-write sink's requests within one send: several per batch, in order, stopping at the first failure."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from agent.deadline import Deadline
from agent.sample import Pending
from tests.sinks.test_remote_write import beats, make_sink, ms, receiver

__all__ = ["make_sink", "receiver"]  # the fixtures, shared with the sink's other tests


async def test_a_send_goes_as_several_requests_in_spool_order_each_series_oldest_first(
    receiver: Any, make_sink: Any
) -> None:
    """The runner hands over four requests' worth; they go one after the other, and each series stays in time order."""
    server = await receiver()
    sink = make_sink(server.url, batch_max_count=70)  # above the size that is read and encoded in a thread
    backlog = beats(250)

    delivery = await sink.send(backlog, Deadline(30))

    assert (280, {item.id for item in backlog}, None) == (sink.max_batch, delivery.acked, delivery.failure)
    assert [70, 70, 70, 40] == [len(request.timestamps) for request in server.requests]
    sent = [ts for request in server.requests for _, samples in request.series[:1] for ts, _ in samples]
    assert [ms(item) for item in backlog] == sent
    assert [float(i) for i in range(250)] == [v for request in server.requests for v in request.values("cpu_percent")]


async def test_a_failure_mid_send_acks_the_requests_before_it_and_sends_none_after(
    receiver: Any, make_sink: Any
) -> None:
    """A 503 on the second request: the first is acked, the rest kept, nothing sent past the failure."""
    answers = iter([204, 503, 204, 204])
    server = await receiver(lambda request: web.Response(status=next(answers)))
    backlog = beats(260)

    delivery = await make_sink(server.url, batch_max_count=65).send(backlog, Deadline(30))

    assert ({item.id for item in backlog[:65]}, {}, "http_503") == (
        delivery.acked,
        delivery.rejected,
        delivery.failure,
    )
    assert 2 == len(server.requests)


async def test_heartbeats_skipped_or_refused_in_a_later_request_are_settled_with_the_rest(
    receiver: Any, make_sink: Any
) -> None:
    """Too old and malformed heartbeats of every request of a send are settled, and counted once each."""
    server = await receiver()
    sink = make_sink(server.url, batch_max_count=4, max_sample_age=600)
    old = beats(3, start=time.time() - 3600)
    broken = Pending("01broken", b'{"pop": "ams1", "ts": "yesterday"}')
    fresh = beats(6)
    batch = [*fresh[:4], *old, broken, *fresh[4:]]

    delivery = await sink.send(batch, Deadline(30))

    assert {item.id: "too_old" for item in old} == delivery.skipped
    assert {broken.id: "malformed"} == delivery.rejected
    assert {item.id for item in fresh + old} == delivery.acked
    assert (3, [4, 2]) == (sink.skipped_total, [len(request.timestamps) for request in server.requests])
