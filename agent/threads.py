"""Blocking work off the event loop, in threads that never hold the process hostage."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each call in a daemon thread of its own, and never waits for them at shutdown.

    A collector stuck in a blocking call (statvfs on a dead NFS server, a read on a
    failing disk) cannot be cancelled; with the default executor it would keep
    ``asyncio.run`` and then the interpreter waiting at exit, so ``agent --once``
    would hang and a SIGTERM would overrun systemd's stop timeout. The runner never
    starts a collector again while its previous call is still running, so the number
    of these threads stays bounded by the number of collectors. (asyncio accepts
    only a ThreadPoolExecutor as the default executor, hence the base class; none
    of its pool is used.)
    """

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=run, name="pop-agent-blocking", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to wait for: the threads are daemons and die with the process."""


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` with blocking calls in daemon threads (see :class:`DaemonThreadExecutor`)."""

    async def wrapped() -> T:
        asyncio.get_running_loop().set_default_executor(DaemonThreadExecutor())
        return await main

    return asyncio.run(wrapped())
