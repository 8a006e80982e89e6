"""Delivery: one loop per sink that drains the spool to it, paced by its own backoff.

Each sink's :class:`SinkLoop` takes the oldest heartbeats spooled for it, sends
them, and settles the result in the spool (acknowledged, rejected, or kept). A
pass ends when nothing is left, when its time budget runs out, or at the first
failure. After a failure the loop waits out its :class:`~agent.pacing.Backoff`
(wake-ups from ticks do not cut the wait short) and then tries again on its own,
ticks or no ticks: a POP whose ticks fail (a full disk) still delivers its
backlog as soon as the receiver answers. A send that acks nothing, rejects
nothing and names no failure counts as the failure ``no_progress``, so a sink
that stalls is paced like one that is down instead of being called in a loop.

What ``agent status`` shows of each sink is :class:`~agent.sink_state.SinkState`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from agent.backlog import BacklogScrubber
from agent.deadline import Deadline
from agent.file_thread import FileThread
from agent.ledger_hook import LedgerWriter, sending
from agent.pacing import Backoff, BackoffPolicy
from agent.sample import Delivery, Pending
from agent.sink_state import SinkState, failure_code
from agent.spool import Spool, SpoolStats

if TYPE_CHECKING:
    # The contract lives with the upload code, which a community wheel does not ship.
    from sinks.base import Sink

log = structlog.get_logger("agent")

BATCH_BYTES = 4 * 1024 * 1024  # most bytes of heartbeats read from the spool for one send
NO_PROGRESS = "no_progress"

# Called after every send with the sink's name, what became of the batch, how
# long it took (ms) and the spool's state after settling it.
Observer = Callable[[str, Delivery, float, SpoolStats], None]


class DeliveryReport(Protocol):
    """Where the state of delivery as a whole goes after every send (the runner hands it to health)."""

    def __call__(
        self, *, ok: bool, spool: SpoolStats, failure: str | None, latency_ms: float | None, sink: str | None
    ) -> None: ...


def flush_ticks(flush_interval: float, interval: float) -> int:
    """Ticks per flush: as many whole ticks as fit in ``flush_interval`` (at least one: every tick)."""
    return max(1, math.floor(flush_interval / interval + 1e-9))


class SinkLoop:
    """Drains the spool to one sink, pass after pass, backing off after each failed one."""

    def __init__(
        self,
        sink: Sink,
        *,
        spool: Spool,
        files: FileThread,
        backlog: BacklogScrubber,
        backoff: Backoff,
        budget: float,
        observe: Observer,
        count_refused: Callable[[int], None],
        ledger: LedgerWriter | None = None,
        flush_ticks: int = 1,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.state = SinkState()
        self.wake = asyncio.Event()
        self.tried = asyncio.Event()  # set once this tick's pass has a result, or has ended without one
        self.backoff = backoff
        self._spool = spool
        self._files = files
        self._backlog = backlog
        self._budget = budget
        self._observe = observe
        self._count_refused = count_refused
        self._ledger = ledger
        self._retry_at: float | None = None  # monotonic; set while the backoff holds the loop off
        self._asked_until = 0.0  # monotonic; until when the receiver's Retry-After asked to be left alone
        self.deadline: Deadline | None = None  # the pass under way, for the shutdown to cut short
        self._idle = False  # waiting for a tick's wake-up
        self._first_batch: list[Pending] | None = None  # read for the next pass by a tick's trip
        # delivery.flush_interval in whole ticks: a tick's wake-up starts a pass only once this many
        # ticks have begun since the last send. Counted, not timed, so a slow tick (a collector
        # at its timeout) never pushes a flush back by a whole tick.
        self.flush_ticks = flush_ticks
        self._ticks_since_send = self.flush_ticks  # nothing sent yet: the first tick flushes
        self.skips_tick = False  # the current tick's wake-up comes before the next flush is due

    @property
    def idle(self) -> bool:
        """Whether the loop waits for a tick's wake-up (no pass under way, no backoff running)."""
        return self._idle

    @property
    def attempts_on_wake(self) -> bool:
        """Whether this tick's wake-up starts a pass: not while a backoff or Retry-After runs, nor before a flush."""
        return self._retry_at is None and not self.skips_tick

    def tick_begins(self) -> None:
        """A tick begins: it has not tried its delivery yet, and it flushes only if enough ticks went unsent."""
        self.tried.clear()
        self._ticks_since_send += 1
        self.skips_tick = self._ticks_since_send < self.flush_ticks

    @property
    def asked_to_wait(self) -> bool:
        """Whether the receiver's last ``Retry-After`` still asks to be left alone."""
        return self._asked_until > time.monotonic()

    async def run(self) -> None:
        """Pass after pass until cancelled: on a wake-up from a tick, or when the backoff has run out."""
        while True:
            if self._retry_at is None:
                self._idle = True
                try:
                    await self.wake.wait()
                finally:
                    self._idle = False
            else:
                await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
            self.wake.clear()
            self.deadline = Deadline(self._budget)
            try:
                done = await self.drain(self.deadline)
            except Exception as exc:  # a spool read that fails, or a sink's bug, must not end delivery for good
                self._failed(Delivery(failure=failure_code(exc)), 0.0)
                done = False
            finally:
                self.deadline = None
                self._first_batch = None  # one read for this pass that came too late: the next pass reads afresh
                self.tried.set()  # also a pass that had nothing to send, or only refused heartbeats
            if not done and self._retry_at is None:
                self.wake.set()  # the budget ran out with more to send: go on at once

    async def drain(self, deadline: Deadline) -> bool:
        """One pass: send what is spooled for the sink, oldest first, until done, failed or out of time.

        Done is when a batch held all that was spooled when it was read. Returns
        ``True`` when nothing that was spooled then is left for the sink.
        """
        spool, files = self._spool, self._files
        while not deadline.expired:
            batch, self._first_batch = self._first_batch, None
            if batch is None:
                batch = await files.call(spool.batch, self.name, self.sink.max_batch, BATCH_BYTES)
            if not batch:
                self._succeeded()
                return True
            # A batch short of both bounds held all there was when it was read: what ticks spool
            # during its send waits for the next flush rather than going at once, alone.
            read_all = len(batch) < self.sink.max_batch and sum(len(p.raw) for p in batch) <= BATCH_BYTES // 2
            batch, refused = self._backlog.check(batch)
            if refused:
                self._count_refused(len(refused))
                log.warning("spooled_heartbeats_refused", sink=self.name, count=len(refused))
                await files.call(spool.settle, self.name, (), refused)
                if not batch:
                    continue
            started = time.monotonic()
            self._ticks_since_send = 0
            with sending(self._ledger, self.name):
                delivery = await self.sink.send(batch, deadline)
            elapsed_ms = (time.monotonic() - started) * 1000
            if not (delivery.acked or delivery.rejected or delivery.failure):
                delivery = dataclasses.replace(delivery, failure=NO_PROGRESS)
            # Shielded: what the receiver answered is recorded and settled even when the loop is
            # stopped meanwhile, so the shutdown's flush does not send an acknowledged batch again.
            stats = await asyncio.shield(files.call(self._after_send, delivery))
            if self._ledger is not None:
                self._ledger.written()
            if delivery.failure == "deadline" and (delivery.acked or delivery.rejected):
                # Out of time while getting through, not failing: the next pass goes on at once.
                delivery = dataclasses.replace(delivery, failure=None)
            if delivery.failure is None:
                self._succeeded()
                self.state.record(self.name, delivery, elapsed_ms)
            else:
                self._failed(delivery, elapsed_ms)
            self._observe(self.name, delivery, elapsed_ms, stats)
            if delivery.failure is not None:
                return False
            if stats.pending == 0 or (read_all and len(delivery.acked) + len(delivery.rejected) >= len(batch)):
                return True  # nothing more was due: no trip to the file thread to hear so again
        return False

    def read_first_batch(self) -> None:
        """Read the next pass's first batch now (on the file thread, in a tick's trip): the pass needs no trip for it.

        Only for a loop that waits for that tick's wake-up: nothing else reads or
        settles this sink's heartbeats meanwhile, so the batch is still the one a
        trip of its own would read. A read that fails is left to the pass.
        """
        try:
            self._first_batch = self._spool.batch(self.name, self.sink.max_batch, BATCH_BYTES)
        except Exception:  # the pass reads again, and handles the failure as its own
            self._first_batch = None

    def _after_send(self, delivery: Delivery) -> SpoolStats:
        """The one trip to the file thread after a send: its ledger records, its settlement, the spool's state.

        The records go first, so a heartbeat leaves the spool only once the request that delivered it is on record.
        """
        if self._ledger is not None:
            self._ledger.write_pending()
        if delivery.acked or delivery.rejected:
            self._spool.settle(self.name, delivery.acked, delivery.rejected)
        return self._spool.stats()

    def _succeeded(self) -> None:
        self.backoff.succeeded()
        self._retry_at = None
        self._asked_until = 0.0
        self.state.retry_in_s = None

    def _failed(self, delivery: Delivery, elapsed_ms: float) -> None:
        self.state.record(self.name, delivery, elapsed_ms)
        wait = self.backoff.failed(delivery.retry_after)
        self._retry_at = time.monotonic() + wait
        self._asked_until = self._retry_at if delivery.retry_after else 0.0
        self.state.retry_in_s = round(wait, 3)


class SinkLoops:
    """Every sink's :class:`SinkLoop`, as the runner drives them: built, woken by ticks, stopped, flushed.

    Delivery is reported healthy only while every sink is; a report names the
    first sink that fails, so its alarm says which receiver is down.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        files: FileThread,
        backlog: BacklogScrubber,
        policy: BackoffPolicy,
        report: DeliveryReport,
        count_refused: Callable[[int], None],
        ledger: LedgerWriter | None = None,
        flush_every: float = 0.0,
    ) -> None:
        self._spool = spool
        self._files = files
        self._backlog = backlog
        self._policy = policy
        self._report = report
        self._count_refused = count_refused
        self._ledger = ledger
        self._flush_every = flush_every
        self.loops: dict[str, SinkLoop] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def set_sinks(self, sinks: Sequence[Sink], interval: float) -> None:
        """One delivery loop per sink; a sink already known keeps its state and backoff (a reload)."""
        old = self.loops
        self.loops = {
            sink.name: SinkLoop(
                sink,
                spool=self._spool,
                files=self._files,
                backlog=self._backlog,
                backoff=old[sink.name].backoff if sink.name in old else Backoff(self._policy),
                budget=max(60.0, 3 * interval),
                observe=self._observe,
                count_refused=self._count_refused,
                ledger=self._ledger,
                flush_ticks=flush_ticks(self._flush_every, interval),
            )
            for sink in sinks
        }
        for name, loop in self.loops.items():
            if name in old:
                loop.state = old[name].state

    @property
    def states(self) -> dict[str, SinkState]:
        """Each sink's delivery state, by name."""
        return {name: loop.state for name, loop in self.loops.items()}

    def start(self) -> None:
        """Start each sink's delivery loop, woken at once so a backlog starts draining."""
        self._tasks = [asyncio.create_task(loop.run(), name=f"sink-{name}") for name, loop in self.loops.items()]
        self.wake()

    async def stop(self) -> None:
        """End the delivery loops; a batch in flight stays spooled and is sent again."""
        for task in self._tasks:
            task.cancel()
        for loop in self.loops.values():
            if loop.deadline is not None:
                loop.deadline.cap(0)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def first_batch_readers(self) -> list[Callable[[], None]]:
        """For a tick about to store its heartbeat: the reads of each idle loop's first batch, to ride the same trip.

        A trip to the file thread costs more CPU than the read it carries; an idle
        POP's delivery then makes one trip per flush, after its send.
        """
        return [loop.read_first_batch for loop in self.loops.values() if loop.idle and not loop.skips_tick]

    def wake(self) -> None:
        """Wake every loop (after a tick) whose flush is due; one backing off keeps to its own time."""
        for loop in self.loops.values():
            if not loop.skips_tick:
                loop.wake.set()

    def forget_passes(self) -> None:
        """A tick begins: no sink has tried its delivery yet, and those whose flush is not due will not."""
        for loop in self.loops.values():
            loop.tick_begins()

    async def passes_tried(self, bound: float) -> None:
        """Wait (at most ``bound`` s) until each sink a tick's wake-up starts has tried its pass."""
        due = [loop.tried for loop in self.loops.values() if loop.attempts_on_wake]
        if not due:
            return  # a sink backing off tries again on its own time, not this tick's
        waits = [asyncio.ensure_future(tried.wait()) for tried in due]
        _, pending = await asyncio.wait(waits, timeout=bound)
        for waiter in pending:
            waiter.cancel()

    async def drain(self, name: str, deadline: Deadline) -> bool:
        """One delivery pass for sink ``name`` now (``agent upload``); ``True`` when nothing is left for it."""
        return await self.loops[name].drain(deadline)

    async def flush(self, deadline: Deadline) -> None:
        """At shutdown, send what the time left allows; the rest stays spooled.

        A receiver that asked to be left alone (``Retry-After``) is not knocked
        on again on the way out.
        """
        flushing = [loop.drain(deadline) for loop in self.loops.values() if not loop.asked_to_wait]
        await asyncio.gather(*flushing, return_exceptions=True)  # one sink's bug must not cut another's flush

    def _observe(self, sink: str, delivery: Delivery, elapsed_ms: float, stats: SpoolStats) -> None:
        failing = [(name, state.last_failure) for name, state in self.states.items() if state.last_failure]
        failed_sink, failure = failing[0] if failing else (None, None)
        if sink in self.loops:
            self.loops[sink].tried.set()  # the first result is enough: a long backlog pass need not be waited out
        self._report(
            ok=not failing,
            spool=stats,
            failure=failure,
            latency_ms=None if failing else elapsed_ms,
            sink=failed_sink,
        )
