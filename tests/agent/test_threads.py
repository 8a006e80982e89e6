"""The daemon-thread executor: stuck calls hold only their own thread, idle threads are reused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.threads import DaemonThreadExecutor, run


def test_idle_threads_are_reused() -> None:
    """Calls one after another run on one thread, not a new thread each."""
    executor = DaemonThreadExecutor()
    names = {executor.submit(threading.get_ident).result(timeout=5) for _ in range(50)}
    assert len(names) == 1


def _switches(native_id: int) -> tuple[str, int]:
    """A thread's scheduler state and how often it has given up the CPU, from /proc."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/self/task/{native_id}/status").read_text().splitlines())
    return fields["State"].split()[0], int(fields["voluntary_ctxt_switches"])


def test_a_job_wakes_only_the_thread_it_runs_on() -> None:
    """With two idle threads, jobs go to the most recently idle one, and the other is never woken."""
    executor = DaemonThreadExecutor()
    release = threading.Event()
    busy = executor.submit(lambda: (threading.get_native_id(), release.wait(30)))
    other = executor.submit(threading.get_native_id).result(timeout=5)  # a second thread: the first is busy
    release.set()
    first, _ = busy.result(timeout=5)
    for _ in range(500):  # until the other thread is parked in its wait
        state, before = _switches(other)
        if state == "S":
            break
        time.sleep(0.01)
    ran_on = {executor.submit(threading.get_native_id).result(timeout=5) for _ in range(20)}
    woken = _switches(other)[1] - before
    assert (ran_on, woken <= 2) == ({first}, True), woken  # a shared queue wakes it on each of the 20 jobs


def test_a_stuck_call_does_not_block_the_next() -> None:
    """While one call is stuck, another still runs, on a second thread."""
    executor = DaemonThreadExecutor()
    release = threading.Event()
    stuck = executor.submit(release.wait, 30)
    assert executor.submit(lambda: 42).result(timeout=5) == 42
    release.set()
    assert stuck.result(timeout=5) is True


def test_exceptions_reach_the_caller() -> None:
    """An exception in the worker is raised by the future."""
    executor = DaemonThreadExecutor()
    future = executor.submit(int, "not a number")
    try:
        future.result(timeout=5)
    except ValueError:
        return
    raise AssertionError("no exception")


def test_run_returns_and_uses_the_pool() -> None:
    """threads.run gives to_thread the daemon pool and returns the coroutine's result."""

    async def main() -> bool:
        return isinstance(asyncio.get_running_loop()._default_executor, DaemonThreadExecutor)  # type: ignore[attr-defined]

    assert run(main()) is True


def test_process_exits_with_a_stuck_thread() -> None:
    """A process whose to_thread call never returns still exits as soon as its coroutine is done."""
    code = (
        "import asyncio, threading\n"
        "from agent.threads import run\n"
        "async def main():\n"
        "    asyncio.get_running_loop().run_in_executor(None, threading.Event().wait)\n"
        "    await asyncio.sleep(0.1)\n"
        "    return 7\n"
        "raise SystemExit(run(main()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    assert result.returncode == 7


def test_shutdown_lets_idle_threads_go_and_busy_ones_finish() -> None:
    """After shutdown the idle thread ends at once, the busy one once its call returns, and no call is taken."""
    executor = DaemonThreadExecutor(name="test-pool")
    release = threading.Event()
    stuck = executor.submit(lambda: (threading.current_thread(), release.wait(30)))
    idle_thread = executor.submit(threading.current_thread).result(timeout=5)
    executor.shutdown()
    idle_thread.join(timeout=5)
    idle_alive = idle_thread.is_alive()
    release.set()
    busy_thread, released = stuck.result(timeout=5)
    busy_thread.join(timeout=5)
    try:
        executor.submit(int, "1")
        refused = False
    except RuntimeError:
        refused = True
    assert (False, True, False, True) == (idle_alive, released, busy_thread.is_alive(), refused)
