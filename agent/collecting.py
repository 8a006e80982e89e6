"""Running collectors: each under its own timeout, so one that raises or hangs affects only itself.

The runner owns timeouts and per-collector state, so collectors stay tiny. A
collector still running from an earlier tick is not started again (its work is
in a thread that cannot be cancelled); it reports ``busy`` until it finishes.

A collector configured with a path that does not exist (an access log, a vault
store) is not run: ``agent status`` shows it ``missing``, the log says so once
(``collector_failed`` with code ``missing``), and the heartbeat, whose schema
keeps its four statuses, says ``error``, so central sees it unhealthy.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.errors import CollectorError
from agent.sample import JsonObject, MetricSpec, Sample
from agent.state import read_json, write_json
from collectors.base import Closable, Collector, Persistent

log = structlog.get_logger("agent.collectors")

COLLECTOR_STATE_DIR = "collectors"  # under the state directory: one <name>.json per persistent collector

OK, ERROR, TIMEOUT, BUSY = "ok", "error", "timeout", "busy"
MISSING = "missing"  # a local status only: the heartbeat says ERROR


@dataclass
class CollectorStats:
    """What ``agent status`` shows of one collector."""

    status: str = "never"
    errors_total: int = 0
    consecutive_failures: int = 0
    last_ok: float | None = None


class CollectorSlot:
    """One collector with its in-flight task, timeout and stats."""

    def __init__(self, collector: Collector, timeout: float, paths: Sequence[Path] = ()) -> None:
        self.collector = collector
        self.paths = tuple(paths)
        self.name: str = collector.name
        self.metrics: tuple[MetricSpec, ...] = collector.metrics
        self.timeout = timeout
        self.stats = CollectorStats()
        self._task: asyncio.Task[Sequence[Sample]] | None = None

    def start(self) -> asyncio.Task[Sequence[Sample]] | None:
        """Start collecting once; ``None`` while the previous run is still going (the collector is ``busy``)."""
        if self._task is not None and not self._task.done():
            return None
        if self._task is not None and not self._task.cancelled():
            self._task.exception()  # a late failure of a timed-out run: retrieved, not logged again
        self._task = asyncio.ensure_future(self._collect())
        return self._task

    def finish(self, task: asyncio.Task[Sequence[Sample]] | None) -> tuple[str, Sequence[Sample]]:
        """``(status, samples)`` of the run :meth:`start` gave, once waited for: ``ok``, ``error``, ``timeout``.

        ``busy`` when it gave none: what an earlier run returns late is not this tick's.
        """
        if task is None:
            return self._settle(BUSY, ())
        if not task.done():
            return self._settle(TIMEOUT, ())
        self._task = None
        try:
            samples = tuple(s for s in task.result() if isinstance(s, Sample))
        except _PathMissing:
            self._settle(MISSING, (), MISSING)
            return ERROR, ()
        except CollectorError as exc:
            return self._settle(ERROR, (), exc.code)
        except (Exception, asyncio.CancelledError) as exc:  # a plugin's bug must not stop the others
            # The task is done, so a CancelledError here is the plugin's own, not a cancellation of this tick.
            return self._settle(ERROR, (), type(exc).__name__)
        return self._settle(OK, samples)

    async def _collect(self) -> Sequence[Sample]:
        # The paths are checked inside the timed task: a stat on a hung mount is this collector's timeout.
        if self.paths:
            missing: bool = await asyncio.to_thread(_any_missing, self.paths)
            if missing:
                raise _PathMissing
        return await self.collector.collect()

    def _settle(self, status: str, samples: Sequence[Sample], code: str = "") -> tuple[str, Sequence[Sample]]:
        previous = self.stats.status
        self.stats.status = status
        if status == OK:
            self.stats.consecutive_failures = 0
            self.stats.last_ok = time.time()
            if previous not in (OK, "never"):
                log.info("collector_recovered", collector=self.name)
        else:
            self.stats.errors_total += 1
            self.stats.consecutive_failures += 1
            if previous != status:
                # Logged once per transition; the code is fixed or a class name, never exception text.
                log.warning("collector_failed", collector=self.name, status=status, code=code or status)
        return status, samples

    def saved_state(self) -> JsonObject | None:
        """The collector's state to keep across restarts (the ``Persistent`` ability), or ``None``."""
        return self.collector.save_state() if isinstance(self.collector, Persistent) else None

    def restore(self, directory: Path) -> None:
        """Hand a ``Persistent`` collector the state saved in ``directory`` (blocking: a file read)."""
        if not isinstance(self.collector, Persistent):
            return
        stored = read_json(directory / f"{self.name}.json")
        if stored is None:
            return
        try:
            self.collector.load_state(stored)
        except Exception:  # a stale or foreign state file must not stop the agent
            log.warning("collector_state_ignored", collector=self.name)

    async def aclose(self) -> None:
        """Release the collector's resources and forget a hung task."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if isinstance(self.collector, Closable):
            try:
                await self.collector.aclose()
            except Exception:  # shutdown goes on whatever one plugin does
                log.warning("collector_close_failed", collector=self.name)


class _PathMissing(Exception):
    """A configured path is not there: the collector is not run this tick."""


def _any_missing(paths: Sequence[Path]) -> bool:
    """Whether a path is not there at all; one that is there but unreadable is the collector's to report."""
    for path in paths:
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:
            continue
    return False


async def collect_all(slots: Sequence[CollectorSlot]) -> tuple[list[Sample], dict[str, str]]:
    """Run every collector concurrently, each under its timeout; their samples and each one's status.

    One wait covers every collector with the same timeout (as wired, all of them):
    a wait with a timer of its own for each cost the tick about 40 µs of CPU per
    collector, more than some of them take to measure.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    started = [(slot, slot.start()) for slot in slots]
    results: dict[CollectorSlot, tuple[str, Sequence[Sample]]] = {}
    for timeout in sorted({slot.timeout for slot in slots}):
        running = [task for slot, task in started if task is not None and not task.done()]
        if running:
            await asyncio.wait(running, timeout=max(0.0, began + timeout - loop.time()))
        for slot, task in started:
            if slot.timeout == timeout:
                results[slot] = slot.finish(task)  # judged at its own timeout, not a later one's
    samples: list[Sample] = []
    statuses: dict[str, str] = {}
    for slot in slots:
        status, got = results[slot]
        statuses[slot.name] = status
        samples.extend(got)
    return samples, statuses


def saved_states(slots: Sequence[CollectorSlot]) -> dict[str, JsonObject]:
    """Each persistent collector's state, taken on the event loop, where the collectors run."""
    states = {}
    for slot in slots:
        try:
            state = slot.saved_state()
        except Exception:  # a plugin's bug costs its own state only
            log.warning("collector_state_not_saved", collector=slot.name)
            continue
        if state is not None:
            states[slot.name] = state
    return states


def write_states(directory: Path, states: dict[str, JsonObject]) -> None:
    """Write each collector's state to ``directory/<name>.json`` (blocking: the spool's thread calls this)."""
    for name, state in states.items():
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            write_json(directory / f"{name}.json", state)
        except (OSError, TypeError, ValueError):
            log.warning("collector_state_not_saved", collector=name)
