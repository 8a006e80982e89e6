"""The central ingest sink against real aiohttp servers on 127.0.0.1, scripted per case."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent.deadline import Deadline
from agent.errors import ConfigError
from agent.plugin_api import PluginContext
from agent.sample import Delivery, Pending
from sinks.central import CentralSink, plan_requests, read_token, request_body
from sinks.central_settings import CentralSinkSettings

TOKEN = "s3cr3t-central-token-0123456789"
PATH = "/ingest/v1/heartbeats"


def heartbeat(seq: int, **extra: Any) -> Pending:
    """A spooled heartbeat as the spool hands it over."""
    doc = {
        "schema": "pop-heartbeat/1",
        "id": f"01930000-0000-7000-8000-{seq:012d}",
        "pop": "ams1",
        "ts": "2026-11-22T07:00:00.123Z",
        "seq": seq,
        "edition": "community",
        "agent_version": "0.1.0",
        "metrics": {"cpu_percent": 12.5, "spool_pending": seq},
        **extra,
    }
    return Pending(doc["id"], json.dumps(doc).encode())


def backlog(count: int, **extra_at: dict[str, Any]) -> list[Pending]:
    """``count`` heartbeats; ``extra_at={"7": {...}}`` adds fields to heartbeat 7."""
    return [heartbeat(seq, **extra_at.get(str(seq), {})) for seq in range(count)]


def ids(batch: list[Pending]) -> list[str]:
    return [item.id for item in batch]


@dataclass
class Request:
    """What the test central received in one request."""

    headers: dict[str, str]
    body: bytes
    docs: list[dict[str, Any]]

    @property
    def ids(self) -> list[str]:
        return [doc["id"] for doc in self.docs]


Respond = Callable[[Request, int], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Central:
    url: str
    received: list[Request] = field(default_factory=list)

    @property
    def accepted_ids(self) -> list[str]:
        return [i for request in self.received for i in request.ids]


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> web.Response:
    return web.Response(status=code, headers=headers or {}, body=body)


def scripted(*responses: Callable[[], web.Response]) -> Respond:
    """Answer the n-th request with the n-th response, repeating the last."""

    def respond(request: Request, count: int) -> web.Response:
        return responses[min(count, len(responses)) - 1]()

    return respond


def ok() -> web.Response:
    return status(200)


@pytest.fixture
def central(aiohttp_server: Any) -> Callable[..., Awaitable[Central]]:
    """Start a scripted central; ``respond(request, n)`` decides each answer."""

    async def start(respond: Respond, *, port: int | None = None, **server_kwargs: Any) -> Central:
        state = Central(url="")

        async def ingest(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            record = Request(dict(request.headers), body, json.loads(body)["heartbeats"])
            state.received.append(record)
            answer = respond(record, len(state.received))
            if asyncio.iscoroutine(answer):
                answer = await answer
            return answer  # type: ignore[return-value]

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(PATH, ingest)
        server = await aiohttp_server(app, port=port, **server_kwargs)
        state.url = str(server.make_url(PATH))
        return state

    return start


@pytest.fixture
async def sink() -> AsyncIterator[Callable[..., CentralSink]]:
    """Build central sinks; closed after the test."""
    made: list[CentralSink] = []

    def make(url: str, *, token: str = TOKEN, **cfg: Any) -> CentralSink:
        settings = CentralSinkSettings(url=url, **{"gzip_min_bytes": 1 << 30, **cfg})
        made.append(CentralSink(settings, token=token))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_2xx_acks_every_heartbeat_with_the_contract_headers(central, sink) -> None:
    """A 200 acknowledges the whole batch, sent once with bearer token and JSON content type."""
    server = await central(scripted(ok))
    batch = backlog(20)

    delivery = await sink(server.url).send(batch, Deadline(30))

    assert Delivery(acked=frozenset(ids(batch))) == delivery
    assert [ids(batch)] == [request.ids for request in server.received]
    headers = server.received[0].headers
    assert (f"Bearer {TOKEN}", "application/json", None) == (
        headers["Authorization"],
        headers["Content-Type"],
        headers.get("Content-Encoding"),
    )


async def test_body_joins_the_spooled_bytes_without_reserialising(central, sink) -> None:
    """The body is the spooled documents' exact bytes, joined inside the envelope."""
    server = await central(scripted(ok))
    batch = [Pending("a", b'{"id":  "a" ,"seq" : 1.50}'), Pending("b", b'{ "id":"b","seq":2e0 }\n')]

    await sink(server.url).send(batch, Deadline(30))

    assert server.received[0].body == b'{"heartbeats":[{"id":  "a" ,"seq" : 1.50},{ "id":"b","seq":2e0 }\n]}'


async def test_gzip_is_used_at_the_threshold_and_central_decodes_it(central, sink) -> None:
    """Bodies at or above gzip_min_bytes go gzip-encoded; central decodes the same documents."""
    server = await central(scripted(ok))
    small, large = backlog(1), backlog(40)
    threshold = len(request_body(large))
    gzip_sink = sink(server.url, gzip_min_bytes=threshold)

    await gzip_sink.send(small, Deadline(30))
    await gzip_sink.send(large, Deadline(30))

    assert [request.headers.get("Content-Encoding") for request in server.received] == [None, "gzip"]
    assert [json.loads(item.raw) for item in large] == server.received[1].docs


async def test_central_down_keeps_the_batch_then_delivers_when_up(central, sink) -> None:
    """Connection refused keeps everything with code "connect"; once central is up the batch goes."""
    port = closed_port()
    down_sink = sink(f"http://127.0.0.1:{port}{PATH}")
    batch = backlog(5)

    down = await down_sink.send(batch, Deadline(30))
    server = await central(scripted(ok), port=port)
    up = await down_sink.send(batch, Deadline(30))

    assert Delivery(failure="connect") == down
    assert Delivery(acked=frozenset(ids(batch))) == up
    assert ids(batch) == server.accepted_ids


async def test_503_with_retry_after_ends_the_send_and_reports_the_wait(central, sink) -> None:
    """A 503 with Retry-After: 3 is one request, kept with retry_after 3.0; the next send delivers."""
    server = await central(scripted(lambda: status(503, {"Retry-After": "3"}), ok))
    batch = backlog(3)
    the_sink = sink(server.url)

    kept = await the_sink.send(batch, Deadline(60))
    delivered = await the_sink.send(batch, Deadline(60))

    assert Delivery(failure="http_503", retry_after=3.0) == kept
    assert Delivery(acked=frozenset(ids(batch))) == delivered
    assert [ids(batch), ids(batch)] == [request.ids for request in server.received]


async def test_retry_after_as_http_date_is_reported_in_seconds(central, sink) -> None:
    """A Retry-After HTTP-date 20 s ahead is reported as the seconds until that date."""
    when = datetime.now(UTC) + timedelta(seconds=20)
    server = await central(scripted(lambda: status(503, {"Retry-After": format_datetime(when, usegmt=True)})))

    delivery = await sink(server.url).send(backlog(2), Deadline(60))

    assert "http_503" == delivery.failure
    assert delivery.retry_after is not None and 10 < delivery.retry_after <= 20


async def test_a_long_retry_after_is_reported_as_given(central, sink) -> None:
    """Retry-After: 3600 reaches the delivery loop whole: clamping it is the backoff's job, not the sink's."""
    server = await central(scripted(lambda: status(429, {"Retry-After": "3600"})))

    delivery = await sink(server.url).send(backlog(1), Deadline(60))

    assert Delivery(failure="http_429", retry_after=3600.0) == delivery


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_keep_the_batch_after_one_request(central, sink, code: int) -> None:
    """408, 429 and 5xx keep the batch after a single request; the next send delivers the same batch."""
    server = await central(scripted(lambda: status(code), ok))
    batch = backlog(4)
    the_sink = sink(server.url)

    kept = await the_sink.send(batch, Deadline(30))
    delivered = await the_sink.send(batch, Deadline(30))

    assert Delivery(failure=f"http_{code}") == kept
    assert Delivery(acked=frozenset(ids(batch))) == delivered
    assert [ids(batch), ids(batch)] == [request.ids for request in server.received]


async def test_a_failed_request_keeps_the_batch_with_a_fixed_code(central, sink) -> None:
    """A 503 is tried once, nothing acked; the failure is "http_503" with central's Retry-After, never its body."""
    server = await central(scripted(lambda: status(503, {"Retry-After": "7"}, b"upstream exploded: secret")))
    batch = backlog(3)

    delivery = await sink(server.url).send(batch, Deadline(30))

    assert Delivery(failure="http_503", retry_after=7.0) == delivery
    assert len(server.received) == 1


@pytest.mark.parametrize("code", [401, 403])
async def test_auth_failure_keeps_the_batch_without_retrying_and_a_new_token_delivers(central, sink, code: int) -> None:
    """401/403 is tried once and kept as "auth"; a sink with the fixed token delivers; no token is logged."""

    def respond(request: Request, count: int) -> web.Response:
        return ok() if request.headers["Authorization"] == "Bearer fixed-token-abcdef" else status(code)

    server = await central(respond)
    batch = backlog(5)

    with structlog.testing.capture_logs() as logs:
        refused = await sink(server.url).send(batch, Deadline(30))
        delivered = await sink(server.url, token="fixed-token-abcdef").send(batch, Deadline(30))

    assert Delivery(failure="auth") == refused
    assert Delivery(acked=frozenset(ids(batch))) == delivered
    assert len(server.received) == 2
    for text in (repr(logs), repr(refused), repr(delivered), repr(sink(server.url))):
        assert TOKEN not in text
        assert "fixed-token-abcdef" not in text


async def test_413_splits_the_batch_in_halves_until_it_fits(central, sink) -> None:
    """A 413 halves the request recursively; every heartbeat is delivered exactly once."""
    server = await central(lambda request, n: status(413) if len(request.ids) > 25 else ok())
    batch = backlog(100)

    delivery = await sink(server.url).send(batch, Deadline(30))

    assert Delivery(acked=frozenset(ids(batch))) == delivery
    assert [len(request.ids) for request in server.received] == [100, 50, 25, 25, 50, 25, 25]
    accepted = [i for request in server.received if len(request.ids) <= 25 for i in request.ids]
    assert ids(batch) == accepted


async def test_413_on_a_single_heartbeat_rejects_it_as_too_large(central, sink) -> None:
    """A lone heartbeat central still refuses with 413 is rejected "too_large"; the rest go."""
    server = await central(lambda request, n: status(413) if any("blob" in d for d in request.docs) else ok())
    batch = backlog(8, **{"5": {"blob": "x" * 1000}})

    delivery = await sink(server.url).send(batch, Deadline(30))

    assert {batch[5].id: "too_large"} == delivery.rejected
    assert frozenset(ids(batch)) - {batch[5].id} == delivery.acked
    assert delivery.failure is None


def poison_aware(code: int) -> Respond:
    return lambda request, n: status(code, body=b"bad doc") if any(d.get("poison") for d in request.docs) else ok()


@pytest.mark.parametrize("code", [400, 422])
async def test_one_poisoned_heartbeat_in_100_is_rejected_and_99_acked(central, sink, code: int) -> None:
    """Bisection on 400/422 rejects exactly the bad heartbeat as "malformed" and acks the other 99."""
    server = await central(poison_aware(code))
    batch = backlog(100, **{"61": {"poison": True}})

    delivery = await sink(server.url).send(batch, Deadline(30))

    assert {batch[61].id: "malformed"} == delivery.rejected
    assert frozenset(ids(batch)) - {batch[61].id} == delivery.acked
    assert delivery.failure is None
    assert len(server.received) <= 2 * 7 + 1


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 40), data=st.data())
async def test_bisection_rejects_exactly_the_poisoned_heartbeats(central, sink, size: int, data: st.DataObject) -> None:
    """Whatever heartbeats are poisoned, exactly those are rejected and all others acked."""
    poisoned = data.draw(st.sets(st.integers(0, size - 1)))
    server = await central(poison_aware(422))
    batch = backlog(size, **{str(i): {"poison": True} for i in poisoned})

    delivery = await sink(server.url, batch_max_count=16).send(batch, Deadline(30))

    assert {batch[i].id: "malformed" for i in poisoned} == delivery.rejected
    assert {batch[i].id for i in range(size) if i not in poisoned} == delivery.acked


async def test_a_central_that_never_answers_times_out_and_keeps_everything(central, sink) -> None:
    """A server that accepts and never answers ends in "timeout" with nothing acked."""
    server = await central(lambda request, n: asyncio.Event().wait())
    batch = backlog(3)

    delivery = await sink(server.url, read_timeout=0.2).send(batch, Deadline(30))

    assert Delivery(failure="timeout") == delivery
    assert len(server.received) == 1


async def test_the_deadline_cuts_a_request_shorter_than_its_read_timeout(central, sink) -> None:
    """With a 15 s read timeout, a 0.3 s deadline still ends the send, as "timeout", nothing acked."""
    server = await central(lambda request, n: asyncio.Event().wait())
    deadline = Deadline(0.3)

    delivery = await asyncio.wait_for(sink(server.url, read_timeout=15).send(backlog(3), deadline), 10)

    assert Delivery(failure="timeout") == delivery
    assert deadline.expired


async def test_a_shutdown_mid_drain_returns_what_was_acked_so_far(central, sink) -> None:
    """When the deadline is brought forward after the first request, later requests are not sent."""
    deadline = Deadline(60)

    def respond(request: Request, count: int) -> web.Response:
        deadline.cap(0)
        return ok()

    server = await central(respond)
    batch = backlog(30)

    delivery = await sink(server.url, batch_max_count=10).send(batch, deadline)

    assert Delivery(acked=frozenset(ids(batch[:10])), failure="deadline") == delivery
    assert [ids(batch[:10])] == [request.ids for request in server.received]


async def test_a_cancelled_send_acks_nothing(central, sink) -> None:
    """Cancelling a send mid-request (SIGTERM) yields no Delivery, so nothing can be deleted."""
    arrived = asyncio.Event()

    async def respond(request: Request, count: int) -> web.Response:
        arrived.set()
        await asyncio.Event().wait()
        return ok()

    server = await central(respond)
    task = asyncio.create_task(sink(server.url).send(backlog(3), Deadline(30)))
    await arrived.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(server.received) == 1


async def test_a_garbage_body_with_200_still_acks(central, sink) -> None:
    """The 2xx status is the acknowledgement; the body is never parsed."""
    server = await central(scripted(lambda: status(200, {"Content-Type": "application/json"}, b"\x00{not json")))
    batch = backlog(4)

    delivery = await sink(server.url).send(batch, Deadline(30))

    assert Delivery(acked=frozenset(ids(batch))) == delivery


async def test_other_statuses_keep_the_batch_without_retrying(central, sink) -> None:
    """A 404 (wrong URL) keeps every heartbeat, tried once, with code "http_404"."""
    server = await central(scripted(lambda: status(404)))

    delivery = await sink(server.url).send(backlog(3), Deadline(30))

    assert Delivery(failure="http_404") == delivery
    assert len(server.received) == 1


async def test_redirects_are_not_followed(central, sink, aiohttp_server) -> None:
    """A 307 is not followed, so the token and data never reach the other address."""
    elsewhere: list[str] = []

    async def record(request: web.Request) -> web.Response:
        elsewhere.append(request.headers.get("Authorization", ""))
        return ok()

    app = web.Application()
    app.router.add_post("/other", record)
    other = await aiohttp_server(app)
    server = await central(scripted(lambda: status(307, {"Location": str(other.make_url("/other"))})))

    delivery = await sink(server.url).send(backlog(2), Deadline(30))

    assert (Delivery(failure="http_307"), []) == (delivery, elsewhere)


async def test_batches_are_cut_by_count_and_bytes_in_order(central, sink) -> None:
    """A batch over batch_max_bytes goes as several requests, each within the bound, in order."""
    server = await central(scripted(ok))
    batch = backlog(50, **{str(i): {"pad": "p" * 300} for i in range(50)})
    max_bytes = 4096

    delivery = await sink(server.url, batch_max_bytes=max_bytes).send(batch, Deadline(30))

    assert Delivery(acked=frozenset(ids(batch))) == delivery
    assert ids(batch) == server.accepted_ids
    assert len(server.received) > 1
    assert all(len(request.body) <= max_bytes for request in server.received)


async def test_an_empty_batch_sends_nothing(central, sink) -> None:
    """An empty batch makes no request and reports no failure."""
    server = await central(scripted(ok))

    assert Delivery() == await sink(server.url).send([], Deadline(30))
    assert server.received == []


@given(
    sizes=st.lists(st.integers(1, 3000), max_size=60),
    max_count=st.integers(1, 20),
    max_bytes=st.integers(1024, 8192),
)
def test_plan_requests_keeps_order_and_bounds(sizes: list[int], max_count: int, max_bytes: int) -> None:
    """Requests concatenate back to the batch, hold at most max_count, and fit max_bytes unless alone."""
    batch = [Pending(str(i), b"x" * size) for i, size in enumerate(sizes)]

    planned = plan_requests(batch, max_count, max_bytes)

    assert batch == [item for part in planned for item in part]
    for part in planned:
        assert 1 <= len(part) <= max_count
        assert len(part) == 1 or len(request_body(part)) <= max_bytes
    for first, second in itertools.pairwise(planned):
        # A request is only cut when the next heartbeat would not fit.
        assert len(first) == max_count or len(request_body([*first, second[0]])) > max_bytes


async def test_owned_session_is_closed_and_a_passed_session_is_left_open(central) -> None:
    """aclose closes the session the sink opened itself, not one it was given."""
    server = await central(scripted(ok))
    cfg = CentralSinkSettings(url=server.url)
    async with aiohttp.ClientSession() as shared:
        given_sink = CentralSink(cfg, token=TOKEN, session=shared)
        own_sink = CentralSink(cfg, token=TOKEN)
        await given_sink.send(backlog(1), Deadline(30))
        await own_sink.send(backlog(1), Deadline(30))
        own_session = own_sink._http.get()
        await given_sink.aclose()
        await own_sink.aclose()

        assert (shared.closed, own_session is not None and own_session.closed) == (False, True)


async def test_tls_verification_refuses_an_untrusted_certificate(central, sink, self_signed) -> None:
    """An HTTPS central with a self-signed certificate is refused ("tls") and receives nothing."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)
    server = await central(scripted(ok), ssl=context)
    url = server.url.replace("http://", "https://")

    delivery = await sink(url).send(backlog(2), Deadline(30))

    assert (Delivery(failure="tls"), []) == (delivery, server.received)


def context(credentials_dir: Path | None = None) -> PluginContext:
    return PluginContext(interval=10.0, state_dir=Path("."), collector_timeout=5.0, credentials_dir=credentials_dir)


def test_from_settings_is_none_without_a_url() -> None:
    """No URL means the sink is not configured."""
    assert CentralSink.from_settings(CentralSinkSettings(token=SecretStr(TOKEN)), context()) is None


def test_token_comes_from_token_then_file_then_credential(tmp_path: Path) -> None:
    """token wins over token_file, which wins over $CREDENTIALS_DIRECTORY/central-token; whitespace is stripped."""
    token_file = tmp_path / "token"
    token_file.write_text("  from-file-token\n")
    (tmp_path / "central-token").write_text("from-credential\n")
    url = "https://central.example/ingest/v1/heartbeats"

    assert (
        read_token(
            CentralSinkSettings(url=url, token=SecretStr(" from-setting "), token_file=token_file), str(tmp_path)
        )
        == "from-setting"
    )
    assert read_token(CentralSinkSettings(url=url, token_file=token_file), str(tmp_path)) == "from-file-token"
    assert read_token(CentralSinkSettings(url=url), str(tmp_path)) == "from-credential"


def test_from_settings_reads_the_systemd_credential(tmp_path: Path) -> None:
    """With only a URL, from_settings builds a sink from the context's credentials directory (central-token)."""
    (tmp_path / "central-token").write_text(TOKEN + "\n")

    made = CentralSink.from_settings(CentralSinkSettings(url="https://central.example/ingest"), context(tmp_path))

    assert isinstance(made, CentralSink)
    assert TOKEN not in repr(made)


@pytest.mark.parametrize(
    ("token", "file_text", "expected"),
    [
        (None, None, "no token"),
        (None, "   \n", "empty"),
        (None, "s3cr3t with-space", "whitespace"),
        (SecretStr("\t"), None, "empty"),
    ],
)
def test_a_missing_or_bad_token_is_a_one_line_config_error_without_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: SecretStr | None, file_text: str | None, expected: str
) -> None:
    """A URL without a usable token is a one-line ConfigError that never shows the token."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    token_file = None
    if file_text is not None:
        token_file = tmp_path / "token"
        token_file.write_text(file_text)

    with pytest.raises(ConfigError) as caught:
        CentralSink.from_settings(
            CentralSinkSettings(url="https://c.example/i", token=token, token_file=token_file), context()
        )

    message = str(caught.value)
    assert (expected in message, "\n" in message, "s3cr3t" in message) == (True, False, False)


def test_a_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    """A token_file that does not exist is named in a one-line ConfigError."""
    with pytest.raises(ConfigError, match="not found"):
        read_token(CentralSinkSettings(url="https://c.example/i", token_file=tmp_path / "absent"))


async def test_deliveries_and_logs_never_hold_the_token_or_response_text(central, sink) -> None:
    """Across failures, the Delivery and the logs carry fixed codes only."""
    server = await central(scripted(lambda: status(500, body=b"stack trace at /srv/app.py")))

    with structlog.testing.capture_logs() as logs:
        delivery = await sink(server.url).send(backlog(2), Deadline(30))

    text = repr(logs) + repr(delivery)
    assert (TOKEN in text, "stack trace" in text, delivery.failure) == (False, False, "http_500")
