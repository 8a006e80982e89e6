"""The one thread that does the daemon's file work, so the event loop never blocks on a disk.

Spool calls serialise on it (one writer), and so do the small state files the
loop hands over (health alarms, ``status.json``, collectors' state, ``seq``):
written in the order they were handed over, off the loop. It is the runner's own
thread, not the default executor: collector threads hung in a dead mount can
fill that one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import structlog

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger("agent")


class FileThread:
    """A single worker thread with an awaitable call and a fire-and-forget one."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")

    async def call(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func`` on the thread and wait for its result (or its exception)."""
        future = self._pool.submit(func, *args, **kwargs)
        return await asyncio.wrap_future(future)

    def submit(self, func: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue ``func`` behind what is already queued; a failure is its own business to log."""
        self._pool.submit(_logged, func, *args, **kwargs)

    def run(self, func: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run ``func`` on the thread and wait for it (blocking: never from the event loop); at most ``timeout`` s."""
        return self._pool.submit(func).result(timeout)

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the thread once what is queued is done; with ``wait``, wait for that."""
        self._pool.shutdown(wait=wait)


def _logged(func: Callable[..., None], *args: object, **kwargs: object) -> None:
    try:
        func(*args, **kwargs)
    except Exception as exc:  # fire-and-forget work must not fail silently, nor leak its text
        log.warning("background_write_failed", error=type(exc).__name__)
