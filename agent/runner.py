"""The daemon: one loop that ticks, and one delivery loop per sink.

A tick collects, scrubs and spools one heartbeat, then wakes the sinks. Each sink
drains the spool oldest first, in batches, on its own, so a slow receiver never
delays a tick and one receiver being down never blocks another. Ticks run on the
monotonic clock at a fixed rhythm from a random start offset and never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import random
import shutil
import signal
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from agent import heartbeat
from agent.collecting import CollectorSlot, collect_all
from agent.deadline import Deadline
from agent.delivery import BacklogScrubber, SinkState
from agent.errors import ScrubRejected, SpoolError
from agent.health import AlertHooks, Health, fixed_code
from agent.sample import Delivery, MetricSpec, Sample
from agent.scrubber import scrub
from agent.settings import Settings
from agent.spool import Spool, SpoolStats
from agent.spool_io import error_code
from agent.state import INCOMING, read_json, remove_quietly, write_json
from agent.state import Sequence as SeqCounter
from agent.systemd import Notifier

log = structlog.get_logger("agent")
T = TypeVar("T")

STATUS_FILE = "status.json"
COLLECTOR_STATE_DIR = "collectors"
INCOMING_PER_TICK = 1000  # documents from `agent enqueue` taken in per tick, so a flood cannot stall ticks
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
        allowed: dict[str, MetricSpec],
        backlog_allowed: dict[str, MetricSpec] | None = None,
        sinks: Sequence[Any] = (),
        notifier: Notifier | None = None,
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
        self.sink_state = {sink.name: SinkState() for sink in self.sinks}
        spool_settings = settings.spool
        if not self.sinks:
            bound = min(spool_settings.max_files, spool_settings.local_max_files)
            spool_settings = spool_settings.model_copy(update={"max_files": bound})
        self.spool = Spool(self.state_dir / "spool", spool_settings, sinks=[sink.name for sink in self.sinks])
        self.seq = SeqCounter(self.state_dir / "seq.json")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")  # one writer: spool calls serialise
        self._stop = asyncio.Event()
        self._deadlines: set[Deadline] = set()
        self._started = time.monotonic()
        self._spool_failing = False
        self._tick_failing = False
        self._status_failing = False
        self._last_state_save = 0.0
        self.health = Health.from_settings(settings)
        self.hooks = AlertHooks(self.health)
        self._hook_session: Any = None

    # -- start-up and shutdown -------------------------------------------------------------

    async def start(self) -> None:
        """Create the state directory, open the spool, restore collectors' state."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await self._spool_call(self.spool.open)
        self.backlog.vouch_above(max(heartbeat.uuid7(), await asyncio.to_thread(self._newest_spooled_id)))
        self._start_hooks()
        for slot in self.collectors:
            load = getattr(slot.collector, "load_state", None)
            stored = read_json(self.state_dir / COLLECTOR_STATE_DIR / f"{slot.name}.json")
            if load is not None and stored is not None:
                try:
                    load(stored)
                except Exception:  # a stale or foreign state file must not stop the agent
                    log.warning("collector_state_ignored", collector=slot.name)

    def _start_hooks(self) -> None:
        """Alert hooks (ntfy, Kuma) share one short-lived-connection session; unset means off."""
        if self.settings.ntfy_alert_url is None and self.settings.kuma_push_url is None:
            return
        import aiohttp

        from sinks.kuma import KumaHook
        from sinks.ntfy import NtfyHook

        self._hook_session = aiohttp.ClientSession()
        self.hooks = AlertHooks(
            self.health,
            notifier=NtfyHook.from_settings(self.settings, self._hook_session),
            pusher=KumaHook.from_settings(self.settings, self._hook_session),
        )

    def _take_incoming(self) -> None:
        """Spool what `agent enqueue` handed over while this daemon held the spool, scrubbed again."""
        directory = self.spool.root / INCOMING
        try:
            names = sorted(name for name in os.listdir(directory) if name.endswith(".json") and name[0] != ".")
        except FileNotFoundError:
            return
        for name in names[:INCOMING_PER_TICK]:
            path = directory / name
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise ValueError(name)  # a directory, link or FIFO (reading a FIFO would block every tick)
                doc = json.loads(path.read_bytes())
                scrub(doc, self.backlog_allowed)
                if f"{doc['id']}.json" != name:
                    raise ValueError(name)
                self.spool.put(doc["id"], heartbeat.dumps(doc))
            except SpoolError:
                return  # the disk is full or read-only: leave them for a later tick
            except (ScrubRejected, ValueError, KeyError, TypeError, OSError, RecursionError):
                self.counters.scrub_rejected_total += 1
                log.warning("incoming_refused")
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    remove_quietly(path)

    def _newest_spooled_id(self) -> str:
        pending = self.spool.root / "pending"
        with os.scandir(pending) as entries:
            return max((entry.name.removesuffix(".json") for entry in entries), default="")

    def request_stop(self) -> None:
        """Ask the loop to finish its tick and shut down (signal handlers call this)."""
        self._stop.set()

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
        self._io.shutdown(wait=True)
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
        """One tick: collect, scrub, spool, wake the sinks. The spooled heartbeat, or ``None``."""
        doc, _ = await self.collect()
        try:
            scrub(doc, self.allowed)
        except ScrubRejected as rejected:
            self.counters.scrub_rejected_total += 1
            log.error("heartbeat_rejected", findings=[f"{path}: {code}" for path, code in rejected.findings])
            return None
        try:
            save_state = time.monotonic() - self._last_state_save >= STATE_SAVE_EVERY
            await self._spool_call(self._put_and_record, doc["id"], heartbeat.dumps(doc), save_state)
        except SpoolError as exc:
            self.counters.spool_write_errors_total += 1
            if not self._spool_failing:
                log.error("spool_write_failed", code=exc.code)
            self._spool_failing = True
            # Delivering what is spooled is how a full disk gets room back.
            for state in self.sink_state.values():
                state.wake.set()
            return None
        if self._spool_failing:
            log.info("spool_write_recovered")
            self._spool_failing = False
        for state in self.sink_state.values():
            state.wake.set()
        return doc

    async def _safe_tick(self) -> dict[str, Any] | None:
        """A tick whose own failure is logged once and skipped: the daemon keeps its rhythm."""
        try:
            doc = await self.tick()
        except Exception as exc:  # a bug in one tick must not stop the agent
            if not self._tick_failing:
                log.error("tick_failed", error=type(exc).__name__)
            self._tick_failing = True
            return None
        if self._tick_failing:
            log.info("tick_recovered")
            self._tick_failing = False
        self.hooks.push()
        return doc

    async def _own_samples(self) -> list[Sample]:
        stats = await self._spool_call(self._incoming_and_stats)
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

    # Each trip to the spool thread costs more CPU than the small calls it carries, so a
    # tick makes two: one before its heartbeat is built, one to store it. On the runner's
    # own thread, not the default executor: hung collector threads can fill that one.

    def _incoming_and_stats(self) -> SpoolStats:
        self._take_incoming()
        return self.spool.stats()

    def _put_and_record(self, heartbeat_id: str, data: bytes, save_state: bool) -> None:
        self.spool.put(heartbeat_id, data)
        self.write_status()
        if save_state:
            self.save_collector_state()

    # -- delivery ---------------------------------------------------------------------------

    async def drain(self, sink: Any, deadline: Deadline) -> bool:
        """Send ``sink`` everything spooled for it, oldest first, until done, failed or out of time.

        Returns ``True`` when nothing is left for the sink.
        """
        state = self.sink_state[sink.name]
        while not deadline.expired:
            batch = await self._spool_call(self.spool.batch, sink.name, sink.max_batch, 4 * 1024 * 1024)
            if not batch:
                return True
            batch, refused = self.backlog.check(batch)
            if refused:
                self.counters.scrub_rejected_total += len(refused)
                log.warning("spooled_heartbeats_refused", sink=sink.name, count=len(refused))
                await self._spool_call(self.spool.settle, sink.name, (), refused)
                if not batch:
                    continue
            started = time.monotonic()
            delivery = await sink.send(batch, deadline)
            elapsed_ms = (time.monotonic() - started) * 1000
            if delivery.acked or delivery.rejected:
                stats = await self._spool_call(self._settle_and_stats, sink.name, delivery.acked, delivery.rejected)
            else:
                stats = await self._spool_call(self.spool.stats)
            state.record(sink.name, delivery, elapsed_ms)
            self._observe_delivery(elapsed_ms, stats)
            if delivery.failure is not None:
                return False
        return False

    def _settle_and_stats(self, sink: str, acked: Iterable[str], rejected: Mapping[str, str]) -> SpoolStats:
        self.spool.settle(sink, acked, rejected)
        return self.spool.stats()

    def _observe_delivery(self, elapsed_ms: float, stats: SpoolStats) -> None:
        """Feed health the state of delivery as a whole: healthy only while every sink is."""
        failing = [(name, st.last_failure) for name, st in self.sink_state.items() if st.last_failure]
        failure = f"{failing[0][0]}_{failing[0][1]}"[:32] if failing else None
        events = self.health.observe_delivery(
            ok=not failing, backlog=stats.pending, failure=failure, latency_ms=None if failing else elapsed_ms
        )
        self.hooks.dispatch(events)

    async def _deliver_loop(self, sink: Any) -> None:
        state = self.sink_state[sink.name]
        send_budget = max(60.0, 3 * self.settings.interval)
        while not self._stop.is_set():
            await state.wake.wait()
            state.wake.clear()
            deadline = Deadline(send_budget)
            self._deadlines.add(deadline)
            try:
                await self.drain(sink, deadline)
            except Exception as exc:  # a spool read that fails, or a sink's bug, must not end delivery for good
                # A fixed code if the error carries one, else its class name: never its text.
                code = fixed_code(getattr(exc, "code", None), type(exc).__name__[:32])
                state.record(sink.name, Delivery(failure=code), 0.0)
            finally:
                self._deadlines.discard(deadline)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until asked to stop, then shut down within the shutdown deadline."""
        await self.start()
        # Everything imported and built so far lives as long as the process. Frozen,
        # it is no longer walked by every full collection, which the reference cycles
        # a delivery leaves (aiohttp's) trigger: that walk cost more CPU per tick than
        # the delivery itself.
        gc.collect()
        gc.freeze()
        delivery = [asyncio.create_task(self._deliver_loop(sink), name=f"sink-{sink.name}") for sink in self.sinks]
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
            await self._shutdown(delivery)

    async def _tick_loop(self) -> None:
        interval = self.settings.interval
        next_tick = time.monotonic() + random.uniform(0, min(interval, 30.0))  # against thundering herds
        overrunning = False
        while not self._stop.is_set():
            await self._sleep_until(next_tick)
            if self._stop.is_set():
                return
            doc = await self._safe_tick()
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
        watchdog = _watchdog_period()
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

    async def _shutdown(self, delivery: list[asyncio.Task[None]]) -> None:
        self.notifier.stopping()
        deadline = Deadline(self.settings.shutdown_deadline)
        log.info("agent_stopping", deadline_s=self.settings.shutdown_deadline)
        for task in delivery:
            task.cancel()
        for active in list(self._deadlines):
            active.cap(0)
        await asyncio.gather(*delivery, return_exceptions=True)
        # Flush what the sinks can send in the time left; the rest stays spooled.
        with contextlib.suppress(Exception):
            await asyncio.gather(*(self.drain(sink, deadline) for sink in self.sinks))
        self.save_collector_state()
        self.write_status()
        stats = self.spool.stats()
        await self.aclose(grace=deadline.remaining())
        log.info("agent_stopped", spool_pending=stats.pending)

    # -- state files ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``agent status`` reads: the daemon's view of itself."""
        stats = self.spool.stats()
        return {
            "pop": self.settings.pop_id,
            "edition": self.edition,
            "version": self.version,
            "telemetry": "on" if self.telemetry else "off",
            "updated": time.time(),
            "pid": _pid(),
            "spool": {
                "pending": stats.pending,
                "bytes": stats.bytes,
                "oldest_age_s": round(stats.oldest_age_s or 0.0, 3),
                "dropped_total": stats.dropped_total,
                "quarantined_total": stats.quarantined_total,
                "rejected_total": stats.rejected_total,
            },
            "sinks": {
                name: {
                    "last_ack": state.last_ack,
                    "last_failure": state.last_failure,
                    "consecutive_failures": state.consecutive_failures,
                    "acked_total": state.acked_total,
                    "rejected_total": state.rejected_total,
                    "skipped_total": state.skipped_total,
                    "last_delivery_ms": state.last_delivery_ms,
                }
                for name, state in self.sink_state.items()
            },
            "collectors": {slot.name: vars(slot.stats) for slot in self.collectors},
            "counters": vars(self.counters),
            "health": self.health.status(),
        }

    def write_status(self) -> None:
        """Rewrite ``status.json``; a full or read-only disk is logged once, never fatal.

        Atomic but not fsynced: the file is advisory and rewritten every tick. A
        failure must not fail the tick that already spooled its heartbeat, nor the
        shutdown that flushed the sinks.
        """
        try:
            write_json(self.state_dir / STATUS_FILE, self.status(), durable=False)
        except OSError as exc:
            if not self._status_failing:
                log.warning("status_not_written", code=error_code(exc))
            self._status_failing = True
            return
        if self._status_failing:
            log.info("status_written_again")
            self._status_failing = False

    def save_collector_state(self) -> None:
        self._last_state_save = time.monotonic()
        directory = self.state_dir / COLLECTOR_STATE_DIR
        for slot in self.collectors:
            save = getattr(slot.collector, "save_state", None)
            if save is None:
                continue
            try:
                directory.mkdir(mode=0o700, exist_ok=True)
                write_json(directory / f"{slot.name}.json", save())
            except Exception:
                log.warning("collector_state_not_saved", collector=slot.name)

    async def _spool_call(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, func, *args)


def _watchdog_period() -> float:
    """Half the watchdog interval systemd asked for; without a watchdog, no wake-ups between ticks."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else math.inf


def _pid() -> int:
    return os.getpid()


def install_signal_handlers(runner: Runner) -> None:
    """SIGTERM and SIGINT ask the runner to stop cleanly."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runner.request_stop)
