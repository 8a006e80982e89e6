"""The Pushgateway sink, against the real Pushgateway and against scripted HTTP servers."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from agent.deadline import Deadline
from agent.plugin_api import PluginContext
from agent.sample import Delivery, Pending
from sinks.exposition import grouping_path, render
from sinks.pushgateway import PushgatewaySink
from sinks.pushgateway_settings import PushgatewaySinkSettings
from tests.sinks.realprocs import PUSHGATEWAY, binary, free_port, get_text, heartbeat, parse_exposition, pushgateway

GROUP = {"job": "pop_agent", "instance": ""}


def seconds(beat: Pending) -> float:
    """The heartbeat's ts as Unix seconds."""
    return datetime.fromisoformat(beat.doc["ts"].replace("Z", "+00:00")).timestamp()


@pytest.fixture
def gateway() -> Iterator[str]:
    """A real Pushgateway on a free loopback port, stopped afterwards."""
    if binary(PUSHGATEWAY) is None:
        pytest.skip("prometheus-pushgateway is not installed (.ci/run installs it)")
    with pushgateway() as base:
        yield base


def sink_for(url: str, **settings: object) -> PushgatewaySink:
    return PushgatewaySink(PushgatewaySinkSettings(url=url, **settings))


async def push(url: str, batch: list[Pending]) -> Delivery:
    sink = sink_for(url)
    try:
        return await sink.send(batch, Deadline(30))
    finally:
        await sink.aclose()


def scrape(base: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    types, samples = parse_exposition(get_text(base + "/metrics"))
    return types, {(name, frozenset(labels.items())): value for name, labels, value in samples}


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset({**GROUP, **labels}.items())


async def test_heartbeat_reads_back_from_the_gateway_with_names_labels_types_and_values(gateway: str) -> None:
    """A pushed heartbeat appears in the Pushgateway's /metrics under its own names, labels, types and values."""
    beat = heartbeat(
        "ams1",
        seq=7,
        metrics={"cpu_percent": 12.5, "load1": 0.75, "requests_total": 1200, "spool_dropped_total": 0},
        series=[
            {"name": "disk_used_percent", "labels": {"mount": "/"}, "value": 41.2},
            {"name": "disk_used_percent", "labels": {"mount": "/var/lib/vaults"}, "value": 63.0},
        ],
    )

    delivery = await push(gateway, [beat])

    assert Delivery(acked=frozenset({beat.id})) == delivery
    types, values = scrape(gateway)
    expected_types = {
        "cpu_percent": "gauge",
        "load1": "gauge",
        "requests_total": "counter",
        "spool_dropped_total": "counter",
        "disk_used_percent": "gauge",
        "pop_agent_last_heartbeat_timestamp_seconds": "gauge",
    }
    assert expected_types == {name: types[name] for name in expected_types}
    expected_values = {
        key("cpu_percent", pop="ams1"): 12.5,
        key("load1", pop="ams1"): 0.75,
        key("requests_total", pop="ams1"): 1200,
        key("spool_dropped_total", pop="ams1"): 0,
        key("disk_used_percent", pop="ams1", mount="/"): 41.2,
        key("disk_used_percent", pop="ams1", mount="/var/lib/vaults"): 63.0,
        key("pop_agent_last_heartbeat_timestamp_seconds", pop="ams1"): pytest.approx(seconds(beat), abs=1e-6),
        key("pop_agent_info", pop="ams1", edition="community", agent_version="0.1.0"): 1,
        key("pop_agent_collector_up", pop="ams1", collector="cpu"): 1,
    }
    assert expected_values == {k: values.get(k) for k in expected_values}


async def test_backlog_leaves_each_pops_newest_heartbeat_in_the_gateway(gateway: str) -> None:
    """Of a backlog, every heartbeat is acked and the gateway holds each POP's newest values."""
    start = time.time() - 60
    backlog = [
        heartbeat("ams1", seq=seq, ts=start + seq, metrics={"cpu_percent": float(seq), "requests_total": 100 * seq})
        for seq in range(1, 6)
    ] + [heartbeat("fra1", seq=9, ts=start, metrics={"cpu_percent": 99.0, "requests_total": 5})]

    delivery = await push(gateway, backlog)

    assert {item.id for item in backlog} == delivery.acked
    assert (delivery.failure, delivery.rejected) == (None, {})
    _, values = scrape(gateway)
    assert (
        values[key("cpu_percent", pop="ams1")],
        values[key("requests_total", pop="ams1")],
        values[key("cpu_percent", pop="fra1")],
    ) == (5.0, 500, 99.0)


async def test_stopped_pop_shows_as_an_old_last_heartbeat_timestamp(gateway: str) -> None:
    """A POP that stopped keeps its last heartbeat's time in the gauge while a live POP's keeps advancing."""
    now = time.time()
    stopped = heartbeat("fra1", seq=3, ts=now - 900)
    assert {stopped.id} == (await push(gateway, [stopped])).acked
    live = [heartbeat("ams1", seq=seq, ts=now - 30 + 10 * seq) for seq in range(1, 4)]

    seen = []
    for beat in live:
        assert {beat.id} == (await push(gateway, [beat])).acked
        _, values = scrape(gateway)
        seen.append(
            (
                values[key("pop_agent_last_heartbeat_timestamp_seconds", pop="ams1")],
                values[key("pop_agent_last_heartbeat_timestamp_seconds", pop="fra1")],
            )
        )

    expected = [(pytest.approx(seconds(beat), abs=1e-6), pytest.approx(seconds(stopped), abs=1e-6)) for beat in live]
    assert expected == seen
    assert all(live_ts - stopped_ts > 600 for live_ts, stopped_ts in seen)


async def test_group_values_with_a_slash_or_nothing_go_through_base64(gateway: str) -> None:
    """Grouping values holding '/' (or empty) use the @base64 form and come back intact as labels."""
    body = render(heartbeat("ams1").doc)
    async with aiohttp.ClientSession() as session:
        for value in ("edge/ams1", ""):
            url = gateway + grouping_path((("job", "pop_agent"), ("pop", "ams1"), ("rack", value)))
            async with session.put(url, data=body, headers={"Content-Type": "text/plain; version=0.0.4"}) as answer:
                assert answer.status == 200

    _, values = scrape(gateway)
    assert {12.5} == {
        value
        for (name, labels), value in values.items()
        if name == "cpu_percent" and dict(labels).get("rack") == "edge/ams1"
    }
    assert {"edge/ams1", ""} == {
        dict(labels).get("rack") for (name, labels), _ in values.items() if name == "cpu_percent"
    }


async def test_label_values_needing_escapes_survive_the_real_gateway(gateway: str) -> None:
    """Label values with backslash, double quote and line feed reach /metrics unchanged."""
    mount = 'C:\\odd "mount"\nname'
    beat = heartbeat("ams1", series=[{"name": "disk_used_percent", "labels": {"mount": mount}, "value": 1.5}])

    assert {beat.id} == (await push(gateway, [beat])).acked

    _, values = scrape(gateway)
    assert values[key("disk_used_percent", pop="ams1", mount=mount)] == 1.5


async def test_gateway_refusal_rejects_that_heartbeat_and_tries_the_next_newest(gateway: str) -> None:
    """When the real gateway answers 400 (a type clash with another group), heartbeats are rejected 'malformed'."""
    clash = b"# TYPE cpu_percent counter\ncpu_percent 1\n"
    async with aiohttp.ClientSession() as session, session.put(gateway + "/metrics/job/other", data=clash) as answer:
        assert answer.status == 200
    batch = [heartbeat("ams1", seq=1), heartbeat("ams1", seq=2)]

    delivery = await push(gateway, batch)

    assert Delivery(rejected={batch[0].id: "malformed", batch[1].id: "malformed"}) == delivery


class Scripted:
    """A stand-in gateway answering from a script and recording every request."""

    def __init__(self, statuses: list[int], retry_after: str | None = None) -> None:
        self.statuses = statuses
        self.retry_after = retry_after
        self.requests: list[tuple[str, str, str, bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.raw_path, request.content_type, await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Retry-After": self.retry_after} if self.retry_after and status != 200 else {}
        return web.Response(status=status, headers=headers)


@pytest.fixture
async def scripted(aiohttp_server):  # type: ignore[no-untyped-def]
    """A factory of scripted gateways on port 0."""

    async def start(statuses: list[int], retry_after: str | None = None) -> tuple[Scripted, str]:
        fake = Scripted(statuses, retry_after)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", fake.handle)
        server = await aiohttp_server(app)
        return fake, str(server.make_url("")).rstrip("/")

    return start


async def test_one_put_per_pop_in_the_text_format(scripted) -> None:  # type: ignore[no-untyped-def]
    """A backlog costs one PUT per POP, to its group, as LF-terminated text without timestamps."""
    fake, url = await scripted([])
    batch = [heartbeat("ams1", seq=s, ts=1_795_000_000 + s) for s in (1, 2, 3)] + [heartbeat("fra-2", seq=1)]

    delivery = await push(url, batch)

    assert {item.id for item in batch} == delivery.acked
    assert [
        ("PUT", "/metrics/job/pop_agent/pop/ams1", "text/plain", render(batch[2].doc)),
        ("PUT", "/metrics/job/pop_agent/pop/fra-2", "text/plain", render(batch[3].doc)),
    ] == fake.requests
    body = fake.requests[0][3].decode()
    assert body.endswith("\n") and "\r" not in body
    assert all(len(line.split(" ")) == 2 for line in body.splitlines() if not line.startswith("#"))


async def test_unavailable_gateway_reports_retry_after_and_the_next_send_delivers(scripted) -> None:  # type: ignore[no-untyped-def]
    """A 503 with Retry-After ends the send after one request with that wait; the next send acks the heartbeat."""
    fake, url = await scripted([503], retry_after="5")
    beat = heartbeat()

    assert Delivery(failure="http_503", retry_after=5.0) == await push(url, [beat])
    assert Delivery(acked=frozenset({beat.id})) == await push(url, [beat])
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("status", "failure"), [(503, "http_503"), (429, "http_429"), (401, "auth"), (404, "http_404")]
)
async def test_failures_keep_the_whole_backlog(scripted, status: int, failure: str) -> None:  # type: ignore[no-untyped-def]
    """Transient answers and auth or path errors keep every heartbeat, with a fixed code."""
    _, url = await scripted([status] * 10)
    batch = [heartbeat(seq=1), heartbeat(seq=2)]

    assert Delivery(failure=failure) == await push(url, batch)


async def test_unreachable_gateway_keeps_the_backlog() -> None:
    """Nothing listening means failure 'connect' and nothing acked."""
    assert Delivery(failure="connect") == await push(f"http://127.0.0.1:{free_port()}", [heartbeat()])


async def test_expired_deadline_sends_nothing(scripted) -> None:  # type: ignore[no-untyped-def]
    """With the deadline spent, no request goes out and the batch stays."""
    fake, url = await scripted([])
    sink = sink_for(url)
    try:
        delivery = await sink.send([heartbeat()], Deadline(0))
    finally:
        await sink.aclose()

    assert (Delivery(failure="deadline"), []) == (delivery, fake.requests)


async def test_refusals_are_bounded_per_call(scripted) -> None:  # type: ignore[no-untyped-def]
    """A gateway refusing everything costs three requests per call; the rest waits, unrejected."""
    fake, url = await scripted([400] * 10)
    batch = [heartbeat(seq=s) for s in range(1, 6)]

    delivery = await push(url, batch)

    assert Delivery(rejected={item.id: "malformed" for item in batch[2:]}, failure="malformed") == delivery
    assert len(fake.requests) == 3


async def test_heartbeat_without_timestamp_is_rejected_locally(scripted) -> None:  # type: ignore[no-untyped-def]
    """A spooled document the format cannot express is rejected 'malformed' without a request."""
    fake, url = await scripted([])
    broken = Pending("broken", json.dumps({"pop": "ams1", "seq": 1}).encode())

    assert Delivery(rejected={"broken": "malformed"}) == await push(url, [broken])
    assert fake.requests == []


def test_from_settings_is_none_without_url_and_a_sink_with_one() -> None:
    """The plugin is off until sinks.pushgateway.url is set."""
    context = PluginContext(interval=10.0, state_dir=Path("."), collector_timeout=5.0)
    assert PushgatewaySink.from_settings(PushgatewaySinkSettings(), context) is None
    on = PushgatewaySink.from_settings(PushgatewaySinkSettings(url="http://pg:9091/"), context)
    assert on is not None
    assert on.group_url("ams1") == "http://pg:9091/metrics/job/pop_agent/pop/ams1"


@given(st.text())
def test_grouping_path_round_trips_any_value(value: str) -> None:
    """Any grouping label value comes back from its URL path segment."""
    segments = grouping_path((("pop", value),)).split("/")
    if segments[2] == "pop@base64":
        assert value == base64.urlsafe_b64decode(segments[3].replace("=", "") + "==").decode()
    else:
        assert value == unquote(segments[3])


@given(st.text(), st.floats(allow_nan=False) | st.integers(-(2**53), 2**53))
def test_rendered_label_values_and_numbers_parse_back(mount: str, value: float) -> None:
    """Any label value and number survive rendering and parsing the text format."""
    beat = heartbeat(metrics={}, series=[{"name": "disk_used_percent", "labels": {"mount": mount}, "value": value}])

    _, samples = parse_exposition(render(beat.doc).decode())

    parsed = [(labels, number) for name, labels, number in samples if name == "disk_used_percent"]
    assert [({"mount": mount}, float(value))] == parsed
