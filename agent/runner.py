"""The daemon: one loop that ticks, the delivery loops it wakes, and the shutdown.

A tick collects, scrubs and spools one heartbeat, then wakes every sink's
delivery loop (:mod:`agent.delivery`), whether or not the tick itself got its
heartbeat stored. Ticks run on the monotonic clock at a fixed rhythm from a
random start offset and never overlap. File work (the spool, ``seq``,
``status.json``, collectors' and health's state) runs on one thread of its own
(:class:`~agent.file_thread.FileThread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from agent import heartbeat, intake
from agent.backlog import BacklogScrubber
from agent.collecting import COLLECTOR_STATE_DIR, CollectorSlot, collect_all, saved_states, write_states
from agent.deadline import Deadline
from agent.delivery import SinkLoop, SinkState
from agent.errors import ScrubRejected, SpoolError
from agent.file_thread import FileThread
from agent.ledger_hook import LedgerWriter
from agent.pacing import Backoff, BackoffPolicy
from agent.sample import Delivery, Sample
from agent.scrubber import Allowlist, scrub
from agent.settings import Settings
from agent.spool import Spool, SpoolStats
from agent.state import Sequence as SeqCounter
from agent.status_file import StatusFile
from agent.systemd import Notifier, watchdog_period
from alerts.health import Health
from alerts.hooks import AlertHooks, start_hooks

if TYPE_CHECKING:
    import aiohttp

    # The contract lives with the upload code, which a community wheel does not ship.
    from sinks.base import Sink

log = structlog.get_logger("agent")

STATE_SAVE_EVERY = 60.0  # seconds between saves of collectors' own state (offsets, sketches)


@dataclass
class Counters:
    """The agent's own monotonic counters, reported in every heartbeat."""

    scrub_rejected_total: int = 0
    collector_errors_total: int = 0
    tick_overruns_total: int = 0
    spool_write_errors_total: int = 0


class Runner:
    """Owns the loop and wires collectors → scrubber → spool → sinks."""

    def __init__(
        self,
        settings: Settings,
        *,
        edition: str,
        version: str,
        telemetry: bool,
        collectors: Sequence[CollectorSlot],
        allowed: Allowlist,
        backlog_allowed: Allowlist | None = None,
        sinks: Sequence[Sink] = (),
        notifier: Notifier | None = None,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.edition = edition
        self.version = version
        self.telemetry = telemetry
        self.collectors = list(collectors)
        self.allowed = allowed
        # A backlog may hold metrics of collectors configured in an earlier run.
        self.backlog_allowed = backlog_allowed if backlog_allowed is not None else allowed
        self.backlog = BacklogScrubber(self.backlog_allowed)
        self.sinks = list(sinks)
        self.notifier = notifier or Notifier()
        self.state_dir = settings.state_dir
        self.counters = Counters()
        spool_settings = settings.spool
        if not self.sinks:
            bound = min(spool_settings.max_files, spool_settings.local_max_files)
            spool_settings = spool_settings.model_copy(update={"max_files": bound})
        self.spool = Spool(
            self.state_dir / "spool",
            spool_settings,
            sinks=[sink.name for sink in self.sinks],
            # An optional ability (the Pushgateway's): such a sink never holds a heartbeat back.
            newest_only=[sink.name for sink in self.sinks if getattr(sink, "newest_only", False)],
        )
        self.seq = SeqCounter(self.state_dir / "seq.json")
        self.files = FileThread()
        self.status_file = StatusFile(self.state_dir)
        self.health = Health.from_settings(settings, defer=self.files.submit)
        self.hooks = AlertHooks(self.health)
        self.ledger = LedgerWriter.from_settings(settings)
        delivery = settings.delivery
        self._policy = backoff or BackoffPolicy(
            delivery.backoff_initial, delivery.backoff_max, delivery.retry_after_max
        )
        self.loops: dict[str, SinkLoop] = {}
        self.set_sinks(self.sinks)
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self._spool_failing = False
        self._tick_failing = False
        self._last_state_save = 0.0
        self._hook_session: aiohttp.ClientSession | None = None
        self.tick_lock = asyncio.Lock()  # held by a tick; a reload waits for it, so it lands between ticks
        self.rebuild: Any = None  # set by the daemon: settings and parts built anew, for SIGHUP
        self._delivery: list[asyncio.Task[None]] = []
        self._reload_task: asyncio.Task[bool] | None = None
        self._passes_done: dict[str, asyncio.Event] = {}  # set when a sink has tried this tick's delivery
        self.daemon = False  # `agent run`, as against a one-shot command: only its status file is the daemon's

    def set_sinks(self, sinks: Sequence[Sink]) -> None:
        """One delivery loop per sink; a sink already known keeps its state and backoff (a reload)."""
        old = self.loops
        self.sinks = list(sinks)
        self.loops = {
            sink.name: SinkLoop(
                sink,
                spool=self.spool,
                files=self.files,
                backlog=self.backlog,
                backoff=old[sink.name].backoff if sink.name in old else Backoff(self._policy),
                budget=max(60.0, 3 * self.settings.interval),
                observe=self._observe_delivery,
                count_refused=self._count_refused,
                ledger=self.ledger,
            )
            for sink in self.sinks
        }
        for name, loop in self.loops.items():
            if name in old:
                loop.state = old[name].state

    @property
    def sink_state(self) -> dict[str, SinkState]:
        """Each sink's delivery state, by name."""
        return {name: loop.state for name, loop in self.loops.items()}

    # -- start-up and shutdown -------------------------------------------------------------

    async def start(self) -> None:
        """Create the state directory, open the spool, restore collectors' state."""
        await self.files.call(self._open)
        self.start_hooks()

    def _open(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.spool.open()
        self.backlog.vouch_above(max(heartbeat.uuid7(), self._newest_spooled_id()))
        self.restore_collectors()

    def restore_collectors(self) -> None:
        """Hand each collector the state it saved (blocking: at start, and after a reload)."""
        directory = self.state_dir / COLLECTOR_STATE_DIR
        for slot in self.collectors:
            slot.restore(directory)

    def start_hooks(self) -> None:
        """The alert hooks the settings ask for (at start, and after a reload)."""
        self.hooks, self._hook_session = start_hooks(self.health, self.settings, self.ledger)

    async def close_hooks(self) -> None:
        """Let the alert hooks finish (briefly) and release their session."""
        await self.hooks.aclose(self.settings.alerts.hook_timeout)
        if self._hook_session is not None:
            await self._hook_session.close()
            self._hook_session = None

    def _newest_spooled_id(self) -> str:
        pending = self.spool.root / "pending"
        with os.scandir(pending) as entries:
            return max((entry.name.removesuffix(".json") for entry in entries), default="")

    def request_stop(self) -> None:
        """Ask the loop to finish its tick and shut down (signal handlers call this)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Read the configuration again and apply it between ticks (SIGHUP calls this)."""
        from agent.reload import reload

        if self.rebuild is None or self._stop.is_set():
            return
        if self._reload_task is not None and not self._reload_task.done():
            return  # the reload under way reads the files after this signal anyway
        self._reload_task = asyncio.ensure_future(reload(self, self.rebuild))

    async def aclose(self, grace: float = 1.0) -> None:
        """Release hooks, collectors, sinks and the spool's thread."""
        await self.hooks.aclose(min(grace, self.settings.alerts.hook_timeout))
        if self._hook_session is not None:
            await self._hook_session.close()
        for slot in self.collectors:
            await slot.aclose()
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.aclose()
        if self.ledger is not None:
            await self.ledger.aclose()
        await asyncio.to_thread(self.files.shutdown)
        self.spool.close()

    # -- one tick ---------------------------------------------------------------------------

    async def collect(self, *, once: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
        """Collect and assemble one heartbeat (not yet scrubbed); also each collector's status.

        With ``once`` nothing is written: the spool is not read and ``seq`` is not reserved.
        """
        samples, statuses = await collect_all(self.collectors)
        failed = sum(status != "ok" for status in statuses.values())
        self.counters.collector_errors_total += failed
        if not once:
            self.hooks.dispatch(self.health.observe_collectors(failed=failed, total=len(statuses)))
            samples.extend(await self._own_samples())
            samples.extend(self.health.samples())
            if self.seq.reserve_due:
                await self.files.call(self.seq.reserve)
        doc = heartbeat.build(
            pop=self.settings.pop_id,
            seq=self.seq.peek() if once else self.seq.take(),
            edition=self.edition,
            version=self.version,
            interval=self.settings.interval,
            samples=samples,
            collectors=statuses,
        )
        return doc, statuses

    async def tick(self) -> dict[str, Any] | None:
        """One tick: collect, scrub, spool, wake the sinks. The spooled heartbeat, or ``None``.

        The sinks are woken however the tick ends: delivering what is spooled is
        also how a full disk gets room back.
        """
        try:
            return await self._tick()
        finally:
            for loop in self.loops.values():
                loop.wake.set()

    async def _tick(self) -> dict[str, Any] | None:
        doc, _ = await self.collect()
        try:
            scrub(doc, self.allowed)
        except ScrubRejected as rejected:
            self.counters.scrub_rejected_total += 1
            log.error("heartbeat_rejected", findings=[f"{path}: {code}" for path, code in rejected.findings])
            return None
        # Snapshots taken here, on the loop; the thread only writes them.
        status = self.status_snapshot()
        states = None
        if time.monotonic() - self._last_state_save >= STATE_SAVE_EVERY:
            self._last_state_save = time.monotonic()
            states = saved_states(self.collectors)
        try:
            await self.files.call(self._store, doc["id"], heartbeat.dumps(doc), status, states)
        except SpoolError as exc:
            self.counters.spool_write_errors_total += 1
            if not self._spool_failing:
                log.error("spool_write_failed", code=exc.code)
            self._spool_failing = True
            return None
        if self._spool_failing:
            log.info("spool_write_recovered")
            self._spool_failing = False
        return doc

    async def _safe_tick(self) -> dict[str, Any] | None:
        """A tick whose own failure is logged once and skipped: the daemon keeps its rhythm."""
        for done in self._passes_done.values():
            done.clear()
        try:
            doc = await self.tick()
        except Exception as exc:  # a bug in one tick, or a seq that cannot be reserved, must not stop the agent
            if not self._tick_failing:
                log.error("tick_failed", error=getattr(exc, "code", None) or type(exc).__name__)
            self._tick_failing = True
            return None
        if self._tick_failing:
            log.info("tick_recovered")
            self._tick_failing = False
        await self._await_delivery()
        self.hooks.push()
        return doc

    async def _await_delivery(self) -> None:
        """Let each sink try this tick's delivery (briefly) before Kuma hears how delivery is.

        Pushed at once, the tick would report the state from before its own
        delivery: ``down`` on the very tick delivery recovered.
        """
        due = [self._passes_done[name] for name, loop in self.loops.items() if loop.attempts_on_wake]
        if self.settings.kuma_push_url is None or not due:
            return  # a sink backing off tries again on its own time, not this tick's
        bound = min(self.settings.interval / 2, self.settings.alerts.hook_timeout)
        waits = [asyncio.ensure_future(done.wait()) for done in due]
        _, pending = await asyncio.wait(waits, timeout=bound)
        for waiter in pending:
            waiter.cancel()

    async def _own_samples(self) -> list[Sample]:
        refused, stats = await self.files.call(self._incoming_and_stats)
        self.counters.scrub_rejected_total += refused
        if self.sinks:
            # Without a sink the spool is a bounded local record: reaching its bound
            # and dropping the oldest is its normal state, not an outage.
            self.hooks.dispatch(
                self.health.observe_spool(
                    pending_files=stats.pending, pending_bytes=stats.bytes, dropped_total=stats.dropped_total
                )
            )
        own = [
            Sample("spool_pending", stats.pending),
            Sample("spool_bytes", stats.bytes),
            Sample("spool_oldest_age_seconds", round(stats.oldest_age_s or 0.0, 3)),
            Sample("spool_dropped_total", stats.dropped_total),
            Sample("spool_quarantined_total", stats.quarantined_total),
            Sample("spool_rejected_total", stats.rejected_total),
            Sample("agent_uptime_seconds", round(time.monotonic() - self._started, 3)),
        ]
        own.extend(Sample(name, value) for name, value in vars(self.counters).items())
        return own

    # Each trip to the spool's thread costs more CPU than the small calls it carries, so a
    # tick makes two: one before its heartbeat is built, one to store it.

    def _incoming_and_stats(self) -> tuple[int, SpoolStats]:
        refused = intake.take_incoming(self.spool, self.backlog_allowed)
        return refused, self.spool.stats()

    def _store(
        self, heartbeat_id: str, data: bytes, status: dict[str, Any], states: dict[str, dict[str, object]] | None
    ) -> None:
        self.spool.put(heartbeat_id, data)
        self.status_file.write(status, self.spool.stats())
        if states is not None:
            write_states(self.state_dir / COLLECTOR_STATE_DIR, states)
            self.spool.prune_aside()  # the age bound of rejected/ holds even when nothing new is refused

    # -- delivery ---------------------------------------------------------------------------

    async def drain(self, sink: Sink, deadline: Deadline) -> bool:
        """One delivery pass for ``sink`` now (``agent upload``); ``True`` when nothing is left for it."""
        return await self.loops[sink.name].drain(deadline)

    def _count_refused(self, count: int) -> None:
        self.counters.scrub_rejected_total += count

    def _observe_delivery(self, sink: str, delivery: Delivery, elapsed_ms: float, stats: SpoolStats) -> None:
        """Feed health the state of delivery as a whole: healthy only while every sink is."""
        failing = [(name, state.last_failure) for name, state in self.sink_state.items() if state.last_failure]
        failed_sink, failure = failing[0] if failing else (None, None)
        if sink in self._passes_done:
            self._passes_done[sink].set()
        events = self.health.observe_delivery(
            ok=not failing,
            backlog=stats.pending,
            failure=failure,
            latency_ms=None if failing else elapsed_ms,
            sink=failed_sink,
        )
        self.hooks.dispatch(events)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until asked to stop, then shut down within the shutdown deadline."""
        self.daemon = True
        await self.start()
        # `agent status` knows the daemon runs before its first tick.
        first = self.status_snapshot()
        await self.files.call(lambda: self.status_file.write(first, self.spool.stats()))
        # Everything imported and built so far lives as long as the process. Frozen,
        # it is no longer walked by every full collection, which the reference cycles
        # a delivery leaves (aiohttp's) trigger: that walk cost more CPU per tick than
        # the delivery itself.
        gc.collect()
        gc.freeze()
        self.start_delivery()
        self.notifier.ready()
        log.info(
            "agent_started",
            pop=self.settings.pop_id,
            edition=self.edition,
            telemetry="on" if self.telemetry else "off",
            interval=self.settings.interval,
            collectors=[slot.name for slot in self.collectors],
            sinks=[sink.name for sink in self.sinks],
        )
        try:
            await self._tick_loop()
        finally:
            await self._shutdown()

    def start_delivery(self) -> None:
        """Start each sink's delivery loop, woken at once so a backlog starts draining."""
        self._passes_done = {name: asyncio.Event() for name in self.loops}
        self._delivery = [asyncio.create_task(loop.run(), name=f"sink-{name}") for name, loop in self.loops.items()]
        for loop in self.loops.values():
            loop.wake.set()

    async def stop_delivery(self) -> None:
        """End the delivery loops; a batch in flight stays spooled and is sent again."""
        for task in self._delivery:
            task.cancel()
        for loop in self.loops.values():
            if loop.deadline is not None:
                loop.deadline.cap(0)
        await asyncio.gather(*self._delivery, return_exceptions=True)
        self._delivery = []

    async def _tick_loop(self) -> None:
        interval = self.settings.interval
        next_tick = time.monotonic() + random.uniform(0, min(interval, 30.0))  # against thundering herds
        overrunning = False
        while not self._stop.is_set():
            await self._sleep_until(next_tick)
            if self._stop.is_set():
                return
            async with self.tick_lock:
                doc = await self._safe_tick()
                interval = self.settings.interval  # a reload may have changed it
            self._summary(doc)
            next_tick += interval
            now = time.monotonic()
            if now > next_tick:
                skipped = int((now - next_tick) // interval) + 1
                next_tick += skipped * interval
                self.counters.tick_overruns_total += skipped
                if not overrunning:
                    log.warning("tick_overrun", skipped=skipped, interval=interval)
                overrunning = True
            else:
                overrunning = False

    async def _sleep_until(self, when: float) -> None:
        """Sleep until ``when`` on the monotonic clock, pinging the watchdog on the way."""
        watchdog = watchdog_period()
        while (left := when - time.monotonic()) > 0 and not self._stop.is_set():
            self.notifier.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=min(left, watchdog))
        self.notifier.watchdog()

    def _summary(self, doc: dict[str, Any] | None) -> None:
        if doc is None:
            return
        metrics = doc["metrics"]
        failed = sorted(name for name, status in doc["collectors"].items() if status != "ok")
        log.info(
            "tick",
            seq=doc["seq"],
            cpu_percent=metrics.get("cpu_percent"),
            mem_used_percent=metrics.get("mem_used_percent"),
            spool_pending=metrics.get("spool_pending"),
            failed=failed or None,
        )

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        if self._reload_task is not None:  # a stop wins over a reload still waiting for its turn
            self._reload_task.cancel()
            await asyncio.gather(self._reload_task, return_exceptions=True)
        deadline = Deadline(self.settings.shutdown_deadline)
        log.info("agent_stopping", deadline_s=self.settings.shutdown_deadline)
        await self.stop_delivery()
        # Flush what the sinks can send in the time left; the rest stays spooled. A receiver
        # that asked to be left alone (Retry-After) is not knocked on again on the way out.
        flushing = [loop.drain(deadline) for loop in self.loops.values() if not loop.asked_to_wait]
        await asyncio.gather(*flushing, return_exceptions=True)  # one sink's bug must not cut another's flush
        status, states = self.status_snapshot(), saved_states(self.collectors)
        stats = await self.files.call(self._final_writes, status, states)
        await self.aclose(grace=deadline.remaining())
        log.info("agent_stopped", spool_pending=stats.pending)

    def _final_writes(self, status: dict[str, Any], states: dict[str, dict[str, object]]) -> SpoolStats:
        write_states(self.state_dir / COLLECTOR_STATE_DIR, states)
        stats = self.spool.stats()
        self.status_file.write(status, stats)
        return stats

    # -- state files ------------------------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        """What ``agent status`` reads of the loop's own state, copied on the loop (the spool's part is added later)."""
        return {
            "pop": self.settings.pop_id,
            "edition": self.edition,
            "version": self.version,
            "telemetry": "on" if self.telemetry else "off",
            "pid": os.getpid(),
            "daemon": self.daemon,
            "sinks": {name: state.snapshot() for name, state in self.sink_state.items()},
            "collectors": {slot.name: dict(vars(slot.stats)) for slot in self.collectors},
            "counters": dict(vars(self.counters)),
            "health": self.health.status(),
        }


def install_signal_handlers(runner: Runner) -> None:
    """SIGTERM and SIGINT ask the runner to stop cleanly; SIGHUP to reload its configuration."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runner.request_stop)
    loop.add_signal_handler(signal.SIGHUP, runner.request_reload)
