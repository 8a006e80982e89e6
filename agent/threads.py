"""Blocking work off the event loop, in threads that never hold the process hostage."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """A pool of daemon threads that grows when every thread is busy and is never joined.

    A collector stuck in a blocking call (statvfs on a dead NFS server, a read on a
    failing disk) cannot be cancelled; with the default executor it would keep
    ``asyncio.run`` and then the interpreter waiting at exit, so ``agent --once``
    would hang and a SIGTERM would overrun systemd's stop timeout. Here a stuck
    call only keeps its own thread; the next call gets another. The runner never
    starts a collector again while its previous call still runs, so the pool stays
    bounded by the number of collectors plus a few. (asyncio accepts only a
    ThreadPoolExecutor as the default executor, hence the base class; none of its
    own pool is used.)
    """

    def __init__(self, name: str = "pop-agent-blocking") -> None:
        super().__init__(max_workers=1)
        self._name = name
        self._lock = threading.Lock()
        # Each idle thread waits on an inbox of its own, so a job wakes exactly one thread:
        # idle threads sharing one queue would each wake in turn on every job and contend
        # for the GIL for nothing. The most recently idle thread is last and served first.
        self._idle: list[queue.SimpleQueue[_Job | None]] = []
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Run ``fn`` on an idle thread, or on a new one if none is idle; ``RuntimeError`` once shut down."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            inbox = self._idle.pop() if self._idle else None  # that idle thread is now promised to this job
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(inbox,), name=self._name, daemon=True).start()
        inbox.put((future, fn, args, kwargs))
        return future

    def _work(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        while (job := inbox.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                stay = self._rest(inbox)
            else:
                # Idle before the caller hears of the result, so that its next call finds this thread free.
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    stay = self._rest(inbox)
                    future.set_exception(exc)
                else:
                    stay = self._rest(inbox)
                    future.set_result(result)
            del job, future, fn, args, kwargs  # hold nothing while idle
            if not stay:
                return

    def _rest(self, inbox: queue.SimpleQueue[_Job | None]) -> bool:
        """Become idle; ``False`` (the thread ends) once the executor is shut down."""
        with self._lock:
            if self._closed:
                return False
            self._idle.append(inbox)
            return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let the idle threads go; a busy one leaves when its call returns. Never waits: the threads are daemons."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` with blocking calls in daemon threads (see :class:`DaemonThreadExecutor`)."""

    async def wrapped() -> T:
        asyncio.get_running_loop().set_default_executor(DaemonThreadExecutor())
        return await main

    return asyncio.run(wrapped())
