"""The daemon: the tick loop and the shutdown.

A tick collects, scrubs and spools one heartbeat, then wakes each sink's
delivery loop whose flush is due (:class:`~agent.delivery.SinkLoops`), even if
its heartbeat was not stored. Ticks keep a fixed rhythm on the monotonic clock
from a random start offset and never overlap. File work (the spool, ``seq``,
``status.json``, collectors' and health's state) runs on a thread of its own
(:class:`~agent.file_thread.FileThread`), never on the event loop.

Around the loop, each in its own module: the ticks' rhythm, signals, the
watchdog and ``gc.freeze`` (:mod:`agent.service`), SIGHUP (:mod:`agent.reload`), the status
snapshot (:mod:`agent.status_file`), the agent's own numbers
(:mod:`agent.own_metrics`), ``agent enqueue``'s intake (:mod:`agent.intake`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from agent import heartbeat
from agent.backlog import BacklogScrubber
from agent.collecting import COLLECTOR_STATE_DIR, CollectorSlot, collect_all, saved_states, write_states
from agent.deadline import Deadline
from agent.delivery import SinkLoops
from agent.errors import ScrubRejected, SpoolError
from agent.file_thread import FileThread
from agent.intake import Intake
from agent.ledger_hook import LedgerWriter
from agent.own_metrics import Counters, LastSeenSpool, own_samples
from agent.pacing import BackoffPolicy
from agent.reload import Reloads
from agent.sample import JsonObject, Sample
from agent.scrubber import Allowlist, scrub
from agent.service import Rhythm, freeze_heap, sleep_until
from agent.settings import Settings
from agent.spool import Spool, SpoolStats
from agent.state import Sequence as SeqCounter
from agent.status_file import StatusCadence, StatusFile, loop_snapshot
from agent.systemd import Notifier
from alerts.health import Health
from alerts.hooks import AlertHooks, start_hooks

if TYPE_CHECKING:
    # The contract lives with the upload code, which a community wheel does not ship.
    from sinks.base import Sink

log = structlog.get_logger("agent")

STATE_SAVE_EVERY = 60.0  # seconds between saves of collectors' own state (offsets, sketches)


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
        self.status_file, self.status_cadence = StatusFile(self.state_dir), StatusCadence()
        self.health = Health.from_settings(settings, defer=self.files.submit)
        self.hooks = AlertHooks(self.health)
        self.ledger = LedgerWriter.from_settings(settings, files=self.files)
        pacing = settings.delivery
        self.delivery = SinkLoops(
            spool=self.spool,
            files=self.files,
            backlog=self.backlog,
            policy=backoff or BackoffPolicy(pacing.backoff_initial, pacing.backoff_max, pacing.retry_after_max),
            report=self._report_delivery,
            count_refused=self._count_refused,
            ledger=self.ledger,
            flush_every=pacing.flush_interval,
        )
        self.set_sinks(self.sinks)
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self._spool_failing = False
        self._tick_failing = False
        self._summarised = False  # the first tick's line is logged at info
        self._last_state_save = 0.0
        self.spool_seen = LastSeenSpool()
        self.intake = Intake(self.spool, self.backlog_allowed)
        self.tick_lock = asyncio.Lock()  # held by a tick; a reload waits for it, so it lands between ticks
        self.reloads = Reloads(self)
        self.daemon = False  # `agent run`, as against a one-shot command: only its status file is the daemon's

    def set_sinks(self, sinks: Sequence[Sink]) -> None:
        """The sinks to deliver to, one delivery loop each (at start, and after a reload)."""
        self.sinks = list(sinks)
        self.delivery.set_sinks(self.sinks, self.settings.interval)

    # -- start-up and shutdown -------------------------------------------------------------

    async def start(self) -> None:
        """Create the state directory, open the spool, restore collectors' state."""
        self.spool_seen.saw(await self.files.call(self._open))
        self.start_hooks()

    def _open(self) -> SpoolStats:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.spool.open()
        self.backlog.vouch_above(max(heartbeat.uuid7(), self.spool.newest_id()))
        self.restore_collectors()
        return self.spool.stats()

    def restore_collectors(self) -> None:
        """Hand each collector the state it saved (blocking: at start, and after a reload)."""
        directory = self.state_dir / COLLECTOR_STATE_DIR
        for slot in self.collectors:
            slot.restore(directory)

    def start_hooks(self) -> None:
        """The alert hooks the settings ask for (at start, and after a reload)."""
        self.hooks = start_hooks(self.health, self.settings, self.ledger)

    def request_stop(self) -> None:
        """Ask the loop to finish its tick and shut down (signal handlers call this)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stop.is_set()

    async def aclose(self, grace: float = 1.0) -> None:
        """Release hooks, collectors, sinks and the spool's thread."""
        await self.hooks.aclose(min(grace, self.settings.alerts.hook_timeout))
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
            samples.extend(self._own_samples())
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
            self.delivery.wake()

    async def _tick(self) -> dict[str, Any] | None:
        doc, _ = await self.collect()
        try:
            scrub(doc, self.allowed)
        except ScrubRejected as rejected:
            self.counters.scrub_rejected_total += 1
            log.error("heartbeat_rejected", findings=[f"{path}: {code}" for path, code in rejected.findings])
            # What `agent enqueue` left is taken in whatever this tick's own heartbeat was.
            self.counters.scrub_rejected_total += await self.files.call(self.intake.take)
            return None
        # Snapshots taken here, on the loop; the thread only writes them.
        status = self.status_cadence.snapshot(self)  # None: the file written last still holds
        states = None
        if time.monotonic() - self._last_state_save >= STATE_SAVE_EVERY:
            self._last_state_save = time.monotonic()
            states = saved_states(self.collectors)
        first_batches = self.delivery.first_batch_readers()
        try:
            refused, stats = await self.files.call(
                self._store, doc["id"], heartbeat.dumps(doc), status, states, first_batches
            )
        except SpoolError as exc:
            self.counters.spool_write_errors_total += 1
            if not self._spool_failing:
                log.error("spool_write_failed", code=exc.code)
            self._spool_failing = True
            return None
        self.counters.scrub_rejected_total += refused
        self.spool_seen.saw(stats)
        if self.ledger is not None:
            self.ledger.written()
        if self._spool_failing:
            log.info("spool_write_recovered")
            self._spool_failing = False
        return doc

    async def _safe_tick(self) -> dict[str, Any] | None:
        """A tick whose own failure is logged once and skipped: the daemon keeps its rhythm."""
        self.delivery.forget_passes()
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
        if self.settings.kuma_push_url is not None:
            await self.delivery.passes_tried(min(self.settings.interval / 2, self.settings.alerts.hook_timeout))

    def _own_samples(self) -> list[Sample]:
        stats = self.spool_seen.now()
        if self.sinks:
            # Without a sink the spool is a bounded local record: reaching its bound
            # and dropping the oldest is its normal state, not an outage.
            self.hooks.dispatch(
                self.health.observe_spool(
                    pending_files=stats.pending, pending_bytes=stats.bytes, dropped_total=stats.dropped_total
                )
            )
        return own_samples(stats, self.counters, time.monotonic() - self._started)

    # A trip to the spool's thread costs more CPU than the small calls it carries, so a tick
    # makes one: it writes the ledger's waiting records, stores the heartbeat, takes in what
    # `agent enqueue` left, writes the status when due and reads each idle sink's first batch. The
    # heartbeat's spool figures are what the last trip saw (`LastSeenSpool`).

    def _store(
        self,
        heartbeat_id: str,
        data: bytes,
        status: dict[str, Any] | None,
        states: dict[str, JsonObject] | None,
        first_batches: Sequence[Callable[[], None]] = (),
    ) -> tuple[int, SpoolStats]:
        if self.ledger is not None:
            self.ledger.write_pending()  # an alert hook's records since the last trip ride this one
        self.spool.put(heartbeat_id, data)
        refused = self.intake.take()
        stats = self.spool.stats()
        if status is not None:
            self.status_file.write(status, stats)
        if states is not None:
            write_states(self.state_dir / COLLECTOR_STATE_DIR, states)
            self.spool.prune_aside()  # the age bound of rejected/ holds even when nothing new is refused
        for read in first_batches:
            read()
        return refused, stats

    # -- delivery ---------------------------------------------------------------------------

    def _count_refused(self, count: int) -> None:
        self.counters.scrub_rejected_total += count

    def _report_delivery(
        self, *, ok: bool, spool: SpoolStats, failure: str | None, latency_ms: float | None, sink: str | None
    ) -> None:
        self.spool_seen.saw(spool)
        events = self.health.observe_delivery(
            ok=ok, backlog=spool.pending, failure=failure, latency_ms=latency_ms, sink=sink
        )
        self.hooks.dispatch(events)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until asked to stop, then shut down within the shutdown deadline."""
        self.daemon = True
        await self.start()
        # `agent status` knows the daemon runs before its first tick.
        first = loop_snapshot(self)
        await self.files.call(lambda: self.status_file.write(first, self.spool.stats()))
        freeze_heap()
        self.delivery.start()
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

    async def _tick_loop(self) -> None:
        rhythm = Rhythm(self.settings.interval)
        while not self._stop.is_set():
            await sleep_until(rhythm.next, self._stop, self.notifier)
            if self._stop.is_set():
                return
            async with self.tick_lock:
                doc = await self._safe_tick()
                interval = self.settings.interval  # a reload may have changed it
            self._summary(doc)
            self.counters.tick_overruns_total += rhythm.advance(interval)

    def _summary(self, doc: dict[str, Any] | None) -> None:
        """The tick's line: the first at info (the daemon works), the others at debug; failures log their own."""
        if doc is None:
            return
        metrics = doc["metrics"]
        failed = sorted(name for name, status in doc["collectors"].items() if status != "ok")
        emit = log.debug if self._summarised else log.info
        self._summarised = True
        emit(
            "tick",
            seq=doc["seq"],
            cpu_percent=metrics.get("cpu_percent"),
            mem_used_percent=metrics.get("mem_used_percent"),
            spool_pending=metrics.get("spool_pending"),
            failed=failed or None,
        )

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        await self.reloads.cancel()
        deadline = Deadline(self.settings.shutdown_deadline)
        log.info("agent_stopping", deadline_s=self.settings.shutdown_deadline)
        await self.delivery.stop()
        await self.delivery.flush(deadline)
        status, states = loop_snapshot(self), saved_states(self.collectors)
        stats = await self.files.call(self._final_writes, status, states)
        await self.aclose(grace=deadline.remaining())
        log.info("agent_stopped", spool_pending=stats.pending)

    def _final_writes(self, status: dict[str, Any], states: dict[str, JsonObject]) -> SpoolStats:
        write_states(self.state_dir / COLLECTOR_STATE_DIR, states)
        stats = self.spool.stats()
        self.status_file.write(status, stats)
        return stats
