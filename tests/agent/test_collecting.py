"""Running collectors: each under its own timeout, one wait for all, and a collector still running is busy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

from agent.collecting import CollectorSlot, collect_all
from agent.errors import CollectorError
from agent.sample import MetricSpec, Sample


class Scripted:
    """A collector whose each run awaits ``step`` and returns its run number as ``runs``."""

    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.step = step
        self.runs = 0
        self.finished = 0

    async def collect(self) -> Sequence[Sample]:
        self.runs += 1
        run = self.runs
        await self.step()
        self.finished += 1
        return [Sample(f"{self.name}_runs", run)]


async def nothing() -> None:
    return None


async def test_each_collector_gets_its_own_status() -> None:
    """ok, a CollectorError's code, a plugin's bug: each only its own, all in one heartbeat."""

    async def refuses() -> None:
        raise CollectorError("no", code="no_source")

    async def breaks() -> None:
        raise ValueError("a bug")

    slots = [
        CollectorSlot(Scripted("fine", nothing), 5.0),
        CollectorSlot(Scripted("refusing", refuses), 5.0),
        CollectorSlot(Scripted("broken", breaks), 5.0),
    ]
    samples, statuses = await collect_all(slots)
    assert {"fine": "ok", "refusing": "error", "broken": "error"} == statuses
    assert [Sample("fine_runs", 1)] == samples
    assert ["ok", "error", "error"] == [slot.stats.status for slot in slots]


async def test_a_collector_is_judged_at_its_own_timeout_while_a_slower_one_is_still_awaited() -> None:
    """A short timeout passes while a collector with a longer one goes on: the first is ``timeout``, even if it
    finishes before the wait for the second ends, and the second, done well within its own, is ``ok``."""
    late = asyncio.Event()

    async def slow_but_within() -> None:
        await asyncio.sleep(0.3)
        late.set()  # the short one finishes now: after its timeout, before this wait ends

    slots = [CollectorSlot(Scripted("short", late.wait), 0.05), CollectorSlot(Scripted("long", slow_but_within), 30.0)]
    samples, statuses = await collect_all(slots)
    assert {"short": "timeout", "long": "ok"} == statuses
    assert [Sample("long_runs", 1)] == samples


async def test_a_collector_still_running_is_busy_and_its_late_result_is_not_the_next_tick_s() -> None:
    """Timed out, then busy while it still runs (not started twice), then a fresh run once it has finished."""
    release = asyncio.Event()
    hung = Scripted("hung", release.wait)
    slot = CollectorSlot(hung, 0.05)

    assert ([], {"hung": "timeout"}) == await collect_all([slot])
    assert ([], {"hung": "busy"}) == await collect_all([slot])
    assert 1 == hung.runs
    release.set()
    while not hung.finished:  # the first run ends now, late: its sample is dropped
        await asyncio.sleep(0.001)
    assert ([Sample("hung_runs", 2)], {"hung": "ok"}) == await collect_all([slot])
    assert (0, "ok") == (slot.stats.consecutive_failures, slot.stats.status)
