"""Delivery: a sink's state across failures and recoveries, the backlog's second scrub, and the paced loop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from agent import heartbeat
from agent.backlog import RESCRUBBED_MEMORY, BacklogScrubber
from agent.deadline import Deadline
from agent.delivery import SinkLoop
from agent.file_thread import FileThread
from agent.ledger import Ledger, read_ledger
from agent.ledger_hook import LedgerWriter
from agent.pacing import Backoff, BackoffPolicy
from agent.sample import Delivery, MetricKind, MetricSpec, Pending, Sample
from agent.scrubber import Allowlist
from agent.settings import SpoolSettings
from agent.sink_state import SinkState
from agent.spool import Spool
from sinks.central import CentralSink
from sinks.central_settings import CentralSinkSettings
from tests.heartbeats import make_heartbeat

ALLOWED = Allowlist([MetricSpec("cpu_percent", MetricKind.GAUGE, "CPU.", "%")], collectors=["cpu"])


def doc(seq: int, **metrics: float) -> dict[str, Any]:
    return make_heartbeat(seq, [Sample(name, value) for name, value in metrics.items()])


def pending(document: dict[str, Any]) -> Pending:
    return Pending(document["id"], heartbeat.dumps(document))


def test_failures_and_recoveries_are_logged_once_per_transition() -> None:
    """Three failures with one code, then another code, then success twice: one log line per change."""
    state = SinkState()
    with capture_logs() as logs:
        for failure in ("http_503", "http_503", "http_503", "timeout", None, None):
            state.record("central", Delivery(failure=failure), 12.34)
    assert [("delivery_failed", "http_503"), ("delivery_failed", "timeout"), ("delivery_recovered", None)] == [
        (line["event"], line.get("code")) for line in logs
    ]
    assert (0, None, 12.3) == (state.consecutive_failures, state.last_failure, state.last_delivery_ms)
    assert state.last_ack is not None


def test_counts_add_up_over_partial_deliveries() -> None:
    """Acked and rejected heartbeats are counted per sink; rejections are logged by count, never by id."""
    state = SinkState()
    with capture_logs() as logs:
        state.record("loki", Delivery(acked=("a", "b"), rejected={"c": "http_400"}), 1.0)
        state.record("loki", Delivery(acked=("d",)), 1.0)
    assert (3, 1) == (state.acked_total, state.rejected_total)
    assert [{"event": "heartbeats_rejected", "sink": "loki", "count": 1, "log_level": "warning"}] == logs


def test_skipped_heartbeats_are_counted_apart_from_the_acked() -> None:
    """Heartbeats a sink settled without sending (also in acked, for the spool) count as skipped, not as acked."""
    state = SinkState()
    state.record("remote_write", Delivery(acked=frozenset({"a", "b", "c"}), skipped={"a": "too_old"}), 1.0)
    assert (2, 0, 1, None) == (state.acked_total, state.rejected_total, state.skipped_total, state.last_failure)


def test_backlog_below_the_floor_is_scrubbed_again_and_refused_with_a_code() -> None:
    """A foreign heartbeat with an undeclared metric or an address is refused; a clean one passes."""
    clean, undeclared, leaky = doc(1, cpu_percent=5.0), doc(2, cpu_percent=5.0, secret_total=1), doc(3)
    leaky["pop"] = "10.0.0.1"
    garbled = Pending(heartbeat.uuid7(), b"{not json")
    scrubber = BacklogScrubber(ALLOWED)
    scrubber.vouch_above(heartbeat.uuid7())  # everything above was spooled by this process
    passed, refused = scrubber.check([pending(clean), pending(undeclared), pending(leaky), garbled])
    assert [clean["id"]] == [p.id for p in passed]
    assert {undeclared["id"], leaky["id"], garbled.id} == set(refused)
    assert refused[garbled.id] == "unparseable"
    assert all(code.startswith("scrub_") for key, code in refused.items() if key != garbled.id)


def test_own_heartbeats_pass_without_a_second_scrub_and_nothing_is_trusted_before_start() -> None:
    """Ids above the floor pass as they are; before the floor is set, every heartbeat is scrubbed."""
    scrubber = BacklogScrubber(ALLOWED)
    own = doc(1, cpu_percent=5.0, undeclared_metric=1)  # would be refused if scrubbed
    passed, refused = scrubber.check([pending(own)])
    assert ([], [own["id"]]) == ([p.id for p in passed], list(refused))
    scrubber.vouch_above(heartbeat.uuid7(0))
    assert [own["id"]] == [p.id for p in scrubber.check([pending(own)])[0]]


def test_remembered_rescrubs_are_bounded() -> None:
    """A long backlog does not grow the memory of re-scrubbed ids past its bound."""
    scrubber = BacklogScrubber(ALLOWED)
    scrubber.vouch_above(heartbeat.uuid7())
    backlog = [pending(doc(seq, cpu_percent=1.0)) for seq in range(RESCRUBBED_MEMORY + 10)]
    assert len(backlog) == len(scrubber.check(backlog)[0])
    assert len(scrubber._rescrubbed) <= RESCRUBBED_MEMORY


# -- the delivery loop against a real central on 127.0.0.1 ----------------------------------


class Script:
    """A central that answers from a script (then 200), recording each request's heartbeat count in order."""

    def __init__(self, *answers: tuple[int, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.requests: list[int] = []

    async def ingest(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append(len(body["heartbeats"]))
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return web.Response(status=status, headers=headers)


@pytest.fixture
async def deliver(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Spool ``count`` heartbeats and build a central sink loop for a scripted server; all closed afterwards."""
    closing: list[Any] = []

    async def make(
        script: Script, count: int, policy: BackoffPolicy, observed: list[Delivery], ledger: LedgerWriter | None = None
    ) -> SinkLoop:
        app = web.Application()
        app.router.add_post("/ingest", script.ingest)
        server = await aiohttp_server(app)
        spool = Spool(tmp_path / "spool", SpoolSettings(), sinks=["central"], fsync=False)
        spool.open()
        for seq in range(count):
            document = doc(seq, cpu_percent=1.0)
            spool.put(document["id"], heartbeat.dumps(document))
        sink = CentralSink(CentralSinkSettings(url=str(server.make_url("/ingest")), batch_max_count=2), token="t0k3n")
        files = FileThread()
        scrubber = BacklogScrubber(ALLOWED)
        scrubber.vouch_above("")
        closing.extend((sink, files, spool))
        return SinkLoop(
            sink,
            spool=spool,
            files=files,
            backlog=scrubber,
            backoff=Backoff(policy),
            budget=30.0,
            observe=lambda name, delivery, ms, stats: observed.append(delivery),
            count_refused=lambda count: None,
            ledger=ledger,
        )

    yield make
    for thing in closing:
        if isinstance(thing, CentralSink):
            await thing.aclose()
        elif isinstance(thing, FileThread):
            thing.shutdown()
        else:
            thing.close()


# A deadline to poll against, never a sleep: generous, because a loaded machine runs these slowly.
PATIENCE = 60.0


async def until(condition: Callable[[], bool], task: asyncio.Task[None]) -> None:
    """Poll ``condition`` while ``task`` runs; fail when the task ends or ``PATIENCE`` seconds pass first."""
    give_up = asyncio.get_running_loop().time() + PATIENCE
    while not condition():
        if task.done():
            task.result()  # the loop's own exception, if it died of one
            raise AssertionError("the loop ended before the condition held")
        if asyncio.get_running_loop().time() > give_up:
            raise AssertionError(f"condition not met in {PATIENCE:.0f} s")
        await asyncio.sleep(0.005)


async def run_until(loop: SinkLoop, condition: Callable[[], bool]) -> None:
    """Run ``loop`` (woken once, as by a tick) until ``condition`` holds, then cancel it."""
    task = asyncio.create_task(loop.run())
    loop.wake.set()
    try:
        await until(condition, task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_loop_retries_on_its_own_after_failures_without_a_second_wake(deliver: Any) -> None:
    """Two 503s then 200s: woken once, the loop comes back by itself and delivers all, each request one batch."""
    script = Script((503, {}), (503, {}))
    observed: list[Delivery] = []
    loop = await deliver(script, 4, BackoffPolicy.immediate(), observed)
    await run_until(loop, lambda: loop.state.acked_total == 4 and len(observed) == 4)
    assert [2, 2, 2, 2] == script.requests
    assert ["http_503", "http_503", None, None] == [delivery.failure for delivery in observed]
    assert 0 == loop.backoff.failures


async def test_each_failed_pass_is_one_request(deliver: Any) -> None:
    """A sink makes one attempt per pass: five failures cost five requests, then one delivers and resets."""
    script = Script(*[(503, {})] * 5)
    observed: list[Delivery] = []
    loop = await deliver(script, 2, BackoffPolicy(initial=1e-4, cap=1e-3), observed)
    await run_until(loop, lambda: loop.state.acked_total == 2)
    assert (6, 0) == (len(script.requests), loop.backoff.failures)
    assert ["http_503"] * 5 + [None] == [delivery.failure for delivery in observed]


async def test_retry_after_holds_the_loop_and_wakes_do_not_cut_it_short(deliver: Any) -> None:
    """A 429 with Retry-After: 3600: wake-ups from ticks change nothing, and the shutdown does not knock."""
    script = Script((429, {"Retry-After": "3600"}))
    observed: list[Delivery] = []
    loop = await deliver(script, 2, BackoffPolicy(initial=1e-4, cap=1e-3, retry_after_max=900.0), observed)
    task = asyncio.create_task(loop.run())
    loop.wake.set()
    await until(lambda: bool(observed), task)
    for _ in range(20):
        loop.wake.set()
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert ([2], 3600.0) == (script.requests, observed[0].retry_after)
    assert loop.asked_to_wait
    assert 900.0 <= (loop.state.retry_in_s or 0.0) <= 990.0


class Stalled:
    """A sink that takes the batch and reports nothing: no ack, no reject, no failure."""

    name = "central"
    max_batch = 10

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, batch: Any, deadline: Any) -> Delivery:
        self.calls += 1
        return Delivery()

    async def aclose(self) -> None:
        pass


async def test_no_progress_is_a_failure_and_paced(deliver: Any) -> None:
    """A send with no ack, reject or failure counts as ``no_progress`` and steps the backoff, once per pass."""
    observed: list[Delivery] = []
    loop = await deliver(Script(), 2, BackoffPolicy(initial=1e-4, cap=1e-3), observed)
    stalled = Stalled()
    loop.sink = stalled
    await run_until(loop, lambda: len(observed) >= 3)
    assert {"no_progress"} == {delivery.failure for delivery in observed}
    assert len(observed) == loop.backoff.failures
    assert stalled.calls - len(observed) in (0, 1)  # the loop may be stopped inside one more call
    assert "no_progress" == loop.state.last_failure


async def test_a_pass_that_empties_the_spool_asks_it_for_a_batch_once(deliver: Any) -> None:
    """Two heartbeats in one batch, acked: the pass ends on the settled spool's count, without a second read."""
    script = Script()
    observed: list[Delivery] = []
    loop = await deliver(script, 2, BackoffPolicy.immediate(), observed)
    spool = loop._spool
    reads: list[str] = []
    real_batch = spool.batch

    def counted_batch(sink: str, max_count: int, max_bytes: int) -> Any:
        reads.append(sink)
        return real_batch(sink, max_count, max_bytes)

    spool.batch = counted_batch  # type: ignore[method-assign]
    assert await loop.drain(Deadline(30.0)) is True
    assert (["central"], [2], 0) == (reads, script.requests, spool.stats().pending)


async def test_a_pass_with_nothing_to_send_still_counts_as_tried(deliver: Any) -> None:
    """An empty spool: the pass sends nothing, yet the tick waiting for this sink's try hears it at once."""
    script = Script()
    loop = await deliver(script, 0, BackoffPolicy.immediate(), [])
    await run_until(loop, loop.tried.is_set)
    assert [] == script.requests


async def test_a_send_is_on_record_before_its_heartbeats_leave_the_spool(deliver: Any, tmp_path: Path) -> None:
    """The trip after a send writes its ledger record first, then settles: no heartbeat is gone unrecorded."""
    script = Script()
    files = FileThread()
    writer = LedgerWriter(Ledger(tmp_path / "ledger", max_age=86_400, max_bytes=1 << 20), files=files)
    loop = await deliver(script, 2, BackoffPolicy.immediate(), [], ledger=writer)
    spool = loop._spool
    on_record_at_settle: list[list[tuple[str, ...]]] = []
    real_settle = spool.settle

    def settle(sink: str, done: Any, rejected: Any) -> None:
        on_record_at_settle.append([item.ids for item in read_ledger(tmp_path / "ledger").records])
        real_settle(sink, done, rejected)

    spool.settle = settle  # type: ignore[method-assign]
    ids = tuple(pending.id for pending in spool.batch("central", 10, 1 << 20))
    try:
        assert await loop.drain(Deadline(30.0)) is True
    finally:
        await writer.aclose()
        files.shutdown()
    assert ([[ids]], 0) == (on_record_at_settle, spool.stats().pending)


async def test_a_loop_stopped_after_central_answered_still_settles_the_batch(deliver: Any) -> None:
    """Stopped (cancelled) while its settlement waits for the file thread: the batch is settled all the same,
    so the shutdown's flush does not send it to central again."""
    script = Script()
    loop = await deliver(script, 1, BackoffPolicy.immediate(), [])
    files, spool = loop._files, loop._spool
    gate = threading.Event()
    trips: list[str] = []
    real_call = files.call

    async def call(func: Any, *args: Any) -> Any:
        trips.append(getattr(func, "__name__", "?"))
        if func.__name__ == "_after_send":
            files.submit(gate.wait)  # the file thread is busy: the settlement waits in its queue
        return await real_call(func, *args)

    files.call = call  # type: ignore[method-assign]
    task = asyncio.create_task(loop.run())
    loop.wake.set()
    try:
        await until(lambda: "_after_send" in trips, task)
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        gate.set()
    await real_call(lambda: None)  # everything queued before it has run
    assert ([1], 0) == (script.requests, spool.stats().pending)
