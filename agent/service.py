"""The daemon's dealings with its process and service manager: signals, the watchdog's rhythm, a frozen heap.

Kept apart from the tick loop so that the loop reads as ticks and shutdown only;
what systemd expects of a ``Type=notify`` service with ``WatchdogSec=`` lives here
and in :mod:`agent.systemd`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Callable

from agent.systemd import Notifier, watchdog_period


def install_signal_handlers(*, stop: Callable[[], None], reload: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop``; SIGHUP calls ``reload`` (inside the running event loop)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)


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
