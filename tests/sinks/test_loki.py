"""The Loki sink, against a stand-in Loki that checks the documented push format strictly.

There is no Loki program to run here, so :class:`FakeLoki` plays one: it takes
``POST /loki/api/v1/push`` only as Loki documents it (JSON, gzip, streams of
``[ns string, line]``), and refuses entries the way Loki's ingester and
distributor do, with their message formats: a 400 whose text names each refused
entry (ten at most), after storing the good ones.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from agent.deadline import Deadline
from agent.plugin_api import PluginContext
from agent.sample import Delivery, Pending
from sinks.loki import LokiSink, cutoffs, ignored_entries
from sinks.loki_settings import LokiSinkSettings
from sinks.series import timestamp_ns
from tests.sinks.realprocs import free_port, heartbeat

HOUR_NS = 3600 * 10**9
LABEL_KEYS = {"job", "pop", "edition"}
MAX_RETURNED_ERRORS = 10  # Loki's ingester.max-ignored-stream-errors default


def go_time(ns: int, offset_minutes: int = 60, zone: str = "CET") -> str:
    """A time as Go's ``time.Time.String()`` writes it, in a server's local zone."""
    seconds, fraction = divmod(ns, 10**9)
    local = datetime.fromtimestamp(seconds, timezone(timedelta(minutes=offset_minutes)))
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text} {sign}{hours:02d}{minutes:02d} {zone}"


def rfc3339(ns: int, offset_minutes: int = 60) -> str:
    """A time as Go's ``time.RFC3339`` layout writes it (whole seconds), in a server's local zone."""
    local = datetime.fromtimestamp(ns // 10**9, timezone(timedelta(minutes=offset_minutes)))
    return local.isoformat().replace("+00:00", "Z")


class FakeLoki:
    """A Loki push endpoint: strict about the request, Loki-like in what it refuses and stores."""

    def __init__(self, *, tenant: str | None = None) -> None:
        self.tenant = tenant
        self.script: deque[int] = deque()  # statuses to answer before taking pushes
        self.problems: list[str] = []  # format violations seen; a test expects none
        self.requests = 0
        self.streams: dict[frozenset[tuple[str, str]], list[tuple[int, str]]] = {}
        self.window_ns: int | None = None  # unordered writes: max_chunk_age / 2
        self.reject_before_ns: int | None = None  # reject_old_samples_max_age
        self.max_line_bytes: int | None = None  # max_line_size

    def labels_text(self, labels: frozenset[tuple[str, str]]) -> str:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"

    def refuse(self, problem: str) -> web.Response:
        self.problems.append(problem)
        return web.Response(status=400, text=f"fake loki: {problem}")

    async def push(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.script:
            return web.Response(status=self.script.popleft(), headers={"Retry-After": "0"})
        if request.headers.get("Content-Type") != "application/json":
            return self.refuse("content type")
        if request.headers.get("Content-Encoding") != "gzip":
            return self.refuse("content encoding")
        if request.headers.get("X-Scope-OrgID") != self.tenant:
            return self.refuse("tenant")
        try:
            body = json.loads(gzip.decompress(await request.read()))
        except (OSError, ValueError):
            return self.refuse("not gzip JSON")
        if not isinstance(body, dict) or set(body) != {"streams"} or not isinstance(body["streams"], list):
            return self.refuse("body shape")
        ingester: list[str] = []
        distributor: list[str] = []
        for stream in body["streams"]:
            if not isinstance(stream, dict) or set(stream) != {"stream", "values"}:
                return self.refuse("stream shape")
            labels = stream["stream"]
            if not isinstance(labels, dict) or set(labels) != LABEL_KEYS or labels["job"] != "pop_agent":
                return self.refuse("labels")
            if not all(isinstance(value, str) and value for value in labels.values()):
                return self.refuse("label values")
            values = stream["values"]
            if not isinstance(values, list) or not values:
                return self.refuse("values")
            for value in values:
                if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
                    return self.refuse("value shape")
                if not re.fullmatch(r"[1-9][0-9]{18}", value[0]):
                    return self.refuse("timestamp is not a nanosecond string")
                doc = json.loads(value[1])
                if value[1] != json.dumps(doc, separators=(",", ":"), ensure_ascii=False):
                    return self.refuse("line is not compact JSON")
                if (doc["pop"], doc["edition"]) != (labels["pop"], labels["edition"]):
                    return self.refuse("line in the wrong stream")
            stamps = [int(value[0]) for value in values]
            if stamps != sorted(stamps):
                return self.refuse("values out of timestamp order")
            ingester += self.ingest(frozenset(labels.items()), [(int(ts), line) for ts, line in values])
            if self.max_line_bytes is not None:
                distributor += [
                    f"Max entry size '{self.max_line_bytes}' bytes exceeded for stream "
                    f"'{self.labels_text(frozenset(labels.items()))}' while adding an entry with length "
                    f"'{len(line.encode())}' bytes"
                    for _, line in values
                    if len(line.encode()) > self.max_line_bytes
                ]
            if self.reject_before_ns is not None:
                distributor += [
                    f"entry for stream '{self.labels_text(frozenset(labels.items()))}' has timestamp too old: "
                    f"{go_time(ts)}, oldest acceptable timestamp is: {go_time(self.reject_before_ns)}"
                    for ts in stamps
                    if ts < self.reject_before_ns
                ]
        # Like Loki, an ingester's refusal is the answer; the distributor's shows only without one.
        if ingester:
            return web.Response(status=400, text="".join(ingester))
        if distributor:
            return web.Response(status=400, text="\n".join(distributor))
        return web.Response(status=204)

    def ingest(self, labels: frozenset[tuple[str, str]], values: list[tuple[int, str]]) -> list[str]:
        """Store what Loki would store; the ingester's error text for what it would not."""
        stored = self.streams.setdefault(labels, [])
        highest = max((ts for ts, _ in stored), default=None)
        refused: list[int] = []
        total = 0
        for ts, line in values:
            if self.reject_before_ns is not None and ts < self.reject_before_ns:
                continue  # the distributor drops these before any ingester sees them
            if self.max_line_bytes is not None and len(line.encode()) > self.max_line_bytes:
                continue
            total += 1
            if (ts, line) in stored:
                continue  # Loki keeps one of identical timestamp and line
            if self.window_ns is not None and highest is not None and ts < highest - self.window_ns:
                refused.append(ts)
                continue
            stored.append((ts, line))
            highest = ts if highest is None else max(highest, ts)
        if not refused:
            return []
        text = "".join(
            f"entry with timestamp {go_time(ts)} ignored, reason: 'entry too far behind, entry timestamp is: "
            f"{rfc3339(ts)}, oldest acceptable timestamp is: {rfc3339(highest - self.window_ns)}',\n"  # type: ignore[operator]
            for ts in refused[:MAX_RETURNED_ERRORS]
        )
        return [
            text + f"user 'fake', total ignored: {len(refused)} out of {total} for stream: {self.labels_text(labels)}"
        ]

    def lines(self, pop: str = "ams1") -> list[tuple[int, str]]:
        """What Loki holds for ``pop``, in arrival order."""
        return [value for labels, values in self.streams.items() if ("pop", pop) in labels for value in values]


Starter = Callable[..., Awaitable[tuple[FakeLoki, str]]]


@pytest.fixture
async def loki() -> AsyncIterator[Starter]:
    """A factory of stand-in Lokis on loopback ports (a chosen one, or a free one), stopped afterwards."""
    runners: list[web.AppRunner] = []

    async def start(port: int | None = None, **options: Any) -> tuple[FakeLoki, str]:
        fake = FakeLoki(**options)
        app = web.Application()
        app.router.add_post("/loki/api/v1/push", fake.push)
        runner = web.AppRunner(app, auto_decompress=False)  # to see the gzip bytes as sent
        await runner.setup()
        runners.append(runner)
        port = free_port() if port is None else port
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return fake, f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def push(url: str, batch: list[Pending], *, tenant: str | None = None, batch_max_count: int = 500) -> Delivery:
    cfg = LokiSinkSettings(url=url, tenant_id=tenant, batch_max_count=batch_max_count)
    sink = LokiSink(cfg)
    try:
        return await sink.send(batch, Deadline(30))
    finally:
        await sink.aclose()


def compact(item: Pending) -> str:
    return json.dumps(item.doc, separators=(",", ":"), ensure_ascii=False)


def backlog(pop: str, count: int, start: float, step: float = 10.0) -> list[Pending]:
    return [heartbeat(pop, seq=seq, ts=start + seq * step) for seq in range(count)]


async def test_push_follows_the_documented_format(loki: Starter) -> None:
    """One heartbeat lands as one compact JSON line with its nanosecond time, labelled job, pop and edition."""
    fake, url = await loki(tenant="ops-eu")
    beat = heartbeat("ams1", seq=42)

    delivery = await push(url, [beat], tenant="ops-eu")

    assert Delivery(acked=frozenset({beat.id})) == delivery
    assert fake.problems == []
    expected = {
        frozenset({("job", "pop_agent"), ("pop", "ams1"), ("edition", "community")}): [
            (timestamp_ns(beat.doc["ts"]), compact(beat))
        ]
    }
    assert expected == fake.streams


async def test_no_tenant_header_without_a_tenant(loki: Starter) -> None:
    """Without tenant_id the push carries no X-Scope-OrgID (the stand-in insists on its absence)."""
    fake, url = await loki(tenant=None)
    beat = heartbeat()

    assert Delivery(acked=frozenset({beat.id})) == await push(url, [beat])
    assert fake.problems == []


async def test_backlog_after_an_outage_lands_once_in_timestamp_order_per_stream(loki: Starter) -> None:
    """While Loki is down everything is kept; once it is up, each POP's backlog lands in timestamp order."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.time() - 3600
    batch = backlog("ams1", 40, start) + backlog("fra1", 25, start, step=7.0)
    random.Random(7).shuffle(batch)

    during = await push(url, batch)
    fake, _ = await loki(port=port)
    after = await push(url, batch, batch_max_count=500)

    assert Delivery(failure="connect") == during
    assert Delivery(acked=frozenset(item.id for item in batch)) == after
    assert fake.problems == []
    for pop in ("ams1", "fra1"):
        mine = sorted((item for item in batch if item.doc["pop"] == pop), key=lambda item: item.doc["seq"])
        assert [(timestamp_ns(item.doc["ts"]), compact(item)) for item in mine] == fake.lines(pop)


async def test_unavailable_loki_keeps_the_batch_per_request_then_the_backlog_lands(loki: Starter) -> None:
    """A 503 and a 429 (with Retry-After) each end one send after one request; the third send goes whole."""
    fake, url = await loki()
    fake.script.extend([503, 429])
    batch = backlog("ams1", 5, time.time() - 60)

    outcomes = [await push(url, batch) for _ in range(3)]

    assert [Delivery(failure="http_503", retry_after=0.0), Delivery(failure="http_429", retry_after=0.0)] == outcomes[
        :2
    ]
    assert Delivery(acked=frozenset(item.id for item in batch)) == outcomes[2]
    assert (fake.requests, fake.problems) == (3, [])


@pytest.mark.parametrize(
    ("status", "failure"), [(503, "http_503"), (429, "http_429"), (401, "auth"), (404, "http_404")]
)
async def test_failures_keep_the_whole_batch(loki: Starter, status: int, failure: str) -> None:
    """Transient answers, auth and path errors keep every heartbeat, with a fixed code."""
    fake, url = await loki()
    fake.script.extend([status] * 10)

    retry_after = 0.0 if status in (429, 503) else None
    assert Delivery(failure=failure, retry_after=retry_after) == await push(url, backlog("ams1", 3, time.time()))


async def test_too_far_behind_entries_named_by_loki_are_rejected_and_the_rest_acked(loki: Starter) -> None:
    """Entries Loki names as too far behind are rejected for good, the others acked, in one request."""
    fake, url = await loki()
    fake.window_ns = HOUR_NS
    now = time.time()
    newest = heartbeat("ams1", seq=100, ts=now)
    assert {newest.id} == (await push(url, [newest])).acked
    stale = backlog("ams1", 4, now - 3 * 3600, step=60)
    recent = [heartbeat("ams1", seq=200 + i, ts=now - 600 + i) for i in range(3)]

    delivery = await push(url, stale + recent)

    assert (
        Delivery(acked=frozenset(i.id for i in recent), rejected=dict.fromkeys((i.id for i in stale), "too_far_behind"))
        == delivery
    )
    assert (fake.requests, fake.problems) == (2, [])
    assert sorted(timestamp_ns(i.doc["ts"]) for i in [newest, *recent]) == sorted(ts for ts, _ in fake.lines())


async def test_more_refusals_than_loki_lists_are_rejected_by_the_stated_cutoff(loki: Starter) -> None:
    """With more refused entries than Loki's answer names, its cut-off rejects them all; good entries land once."""
    fake, url = await loki()
    fake.window_ns = HOUR_NS
    now = time.time()
    newest = heartbeat("ams1", seq=1000, ts=now)
    await push(url, [newest])
    stale = backlog("ams1", 15, now - 5 * 3600, step=60)
    recent = backlog("ams1", 15, now - 1800, step=60)

    delivery = await push(url, stale + recent)

    expected = Delivery(
        acked=frozenset(i.id for i in recent), rejected=dict.fromkeys((i.id for i in stale), "too_far_behind")
    )
    assert expected == delivery
    assert (fake.requests, fake.problems) == (3, [])
    assert sorted([(timestamp_ns(i.doc["ts"]), compact(i)) for i in [newest, *recent]]) == sorted(fake.lines())


async def test_refusals_naming_no_entry_are_found_by_bisection(loki: Starter) -> None:
    """A refusal that names no timestamp (a line too long) is bisected down to that heartbeat; the rest land once."""
    fake, url = await loki()
    fake.max_line_bytes = 2048
    now = time.time()
    batch = backlog("ams1", 20, now - 600, step=10)
    batch[13] = heartbeat("ams1", seq=13, ts=now - 600 + 130, metrics={f"m{i:03d}": 1.0 for i in range(200)})

    delivery = await push(url, batch)

    good = batch[:13] + batch[14:]
    assert Delivery(acked=frozenset(i.id for i in good), rejected={batch[13].id: "line_too_long"}) == delivery
    assert fake.problems == []
    assert [(timestamp_ns(i.doc["ts"]), compact(i)) for i in good] == sorted(fake.lines())


async def test_entries_older_than_loki_accepts_are_rejected_as_too_old(loki: Starter) -> None:
    """The distributor's 'timestamp too old' names no totals, so bisection isolates exactly those entries."""
    fake, url = await loki()
    now = time.time()
    fake.reject_before_ns = timestamp_ns(heartbeat(ts=now - 7 * 86400).doc["ts"])
    ancient = backlog("ams1", 6, now - 9 * 86400, step=3600)
    recent = backlog("ams1", 10, now - 600, step=10)

    delivery = await push(url, ancient + recent)

    assert (fake.requests, fake.problems) == (2, [])

    assert (
        Delivery(acked=frozenset(i.id for i in recent), rejected=dict.fromkeys((i.id for i in ancient), "too_old"))
        == delivery
    )
    assert fake.problems == []
    assert sorted((timestamp_ns(i.doc["ts"]), compact(i)) for i in recent) == sorted(fake.lines())


async def test_spooled_document_without_time_is_rejected_without_a_request(loki: Starter) -> None:
    """A document without ts cannot be a Loki entry: rejected 'malformed', the others go."""
    fake, url = await loki()
    good = heartbeat()
    broken = Pending("broken", json.dumps({"pop": "ams1", "edition": "community"}).encode())

    assert Delivery(acked=frozenset({good.id}), rejected={"broken": "malformed"}) == await push(url, [broken, good])
    assert fake.problems == []


async def test_expired_deadline_sends_nothing(loki: Starter) -> None:
    """With the deadline spent, nothing goes out and the batch stays."""
    fake, url = await loki()
    sink = LokiSink(LokiSinkSettings(url=url))
    try:
        delivery = await sink.send([heartbeat()], Deadline(0))
    finally:
        await sink.aclose()

    assert (Delivery(failure="deadline"), 0) == (delivery, fake.requests)


def test_from_settings_is_none_without_url_and_batches_as_configured() -> None:
    """The plugin is off until sinks.loki.url is set, and hands over batches of batch_max_count."""
    context = PluginContext(interval=10.0, state_dir=Path("."), collector_timeout=5.0)
    assert LokiSink.from_settings(LokiSinkSettings(), context) is None
    on = LokiSink.from_settings(LokiSinkSettings(url="http://loki:3100", batch_max_count=50), context)
    assert (on is not None, getattr(on, "max_batch", None)) == (True, 50)


@given(
    st.integers(0, 4_102_444_800 * 10**9),
    st.integers(-14 * 60, 14 * 60),
    st.sampled_from(["too far behind", "out of order", "timestamp too old"]),
)
def test_refused_entry_timestamps_parse_back_from_go_time_in_any_zone(ns: int, offset: int, why: str) -> None:
    """Loki names refused entries in its server's zone; the sink maps each back to the exact nanosecond."""
    text = f"entry with timestamp {go_time(ns, offset, 'XYZ')} ignored, reason: 'entry {why}',\n"
    text += "user 'fake', total ignored: 1 out of 3 for stream: {job=\"pop_agent\"}"

    named, ignored, sent = ignored_entries(text)

    code = {"too far behind": "too_far_behind", "out of order": "out_of_order", "timestamp too old": "too_old"}[why]
    assert ({ns: code}, 1, 3) == (named, ignored, sent)


@given(st.integers(10**18, 4_102_444_800 * 10**9), st.integers(-14 * 60, 14 * 60))
def test_stated_cutoffs_parse_back_in_any_zone(ns: int, offset: int) -> None:
    """Both cut-off formats (ingester RFC 3339 to the second, distributor Go time) map back to Unix time."""
    behind = f"reason: 'entry too far behind, entry timestamp is: {rfc3339(ns - 10**12, offset)}, "
    behind += f"oldest acceptable timestamp is: {rfc3339(ns, offset)}',\n"
    old = f"entry for stream '{{pop=\"ams1\"}}' has timestamp too old: {go_time(ns - 10**12, offset, 'X')}, "
    old += f"oldest acceptable timestamp is: {go_time(ns, offset, 'X')} m=-604799.999"

    expected = {"too_far_behind": ns // 10**9 * 10**9, "too_old": ns}
    assert expected == cutoffs(behind + old, one_stream=True)
    assert {"too_old": ns} == cutoffs(behind + old, one_stream=False)
