"""The daemon's dealings with time, its process and its service manager: the ticks' and the watchdog's rhythm,
signals, a frozen heap.

Kept apart from the tick loop so that the loop reads as ticks and shutdown only;
what systemd expects of a ``Type=notify`` service with ``WatchdogSec=`` lives here
and in :mod:`agent.systemd`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
import time
from collections.abc import Callable

import structlog

from agent.systemd import Notifier, watchdog_period

log = structlog.get_logger("agent")


def install_signal_handlers(*, stop: Callable[[], None], reload: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop``; SIGHUP calls ``reload`` (inside the running event loop)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)


class Rhythm:
    """Tick times on the monotonic clock: a fixed interval from a random start offset, overrun slots skipped.

    The offset (up to an interval, at most 30 s) keeps a fleet restarted at once
    from ticking, and delivering, in step. A tick that runs past the next slot
    skips it rather than starting late ticks back to back; the first overrun of a
    run of them is logged.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.next = clock() + random.uniform(0, min(interval, 30.0))
        self._overrunning = False

    def advance(self, interval: float) -> int:
        """Move to the slot after the tick that just ran; how many slots it overran and were skipped."""
        self.next += interval
        now = self._clock()
        if now <= self.next:
            self._overrunning = False
            return 0
        skipped = int((now - self.next) // interval) + 1
        self.next += skipped * interval
        if not self._overrunning:
            log.warning("tick_overrun", skipped=skipped, interval=interval)
        self._overrunning = True
        return skipped


async def sleep_until(when: float, stop: asyncio.Event, notifier: Notifier) -> None:
    """Sleep until ``when`` on the monotonic clock or until ``stop`` is set, pinging the watchdog on the way."""
    watchdog = watchdog_period()
    while (left := when - time.monotonic()) > 0 and not stop.is_set():
        notifier.watchdog()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(left, watchdog))
    notifier.watchdog()


def freeze_heap() -> None:
    """Move everything built so far out of the garbage collector's sight, once, before the first tick.

    Everything imported and built by then lives as long as the process. Frozen,
    it is no longer walked by every full collection, which the reference cycles
    a delivery leaves (aiohttp's) trigger: that walk cost more CPU per tick than
    the delivery itself.
    """
    gc.collect()
    gc.freeze()
