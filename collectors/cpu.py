"""CPU: busy share since the previous tick, load averages and the number of CPUs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import psutil

from agent.errors import CollectorError
from agent.plugin_api import NoSettings
from agent.sample import MetricKind, MetricSpec, Sample

if TYPE_CHECKING:
    from agent.plugin_api import PluginContext

# Guest time is already counted in user and nice on Linux (psutil does the same).
_COUNTED_TWICE = ("guest", "guest_nice")
_IDLE = ("idle", "iowait")


class CpuTimes(Protocol):
    """What ``psutil.cpu_times()`` returns: a named tuple of seconds per CPU state."""

    def _asdict(self) -> Mapping[str, float]: ...


class CpuSource(Protocol):
    """The part of psutil this collector reads; the ``psutil`` module itself is one."""

    def cpu_times(self) -> CpuTimes: ...

    def getloadavg(self) -> tuple[float, float, float]: ...

    def cpu_count(self) -> int | None: ...


def busy_percent(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """Share of CPU time spent busy between two ``cpu_times`` readings, in percent.

    States whose counter went backwards (a CPU taken offline) count as zero, so
    the result always lies in [0, 100].
    """
    deltas = {state: max(0.0, after.get(state, 0.0) - before.get(state, 0.0)) for state in after}
    total = sum(value for state, value in deltas.items() if state not in _COUNTED_TWICE)
    if total <= 0.0:
        return 0.0
    busy = total - sum(deltas.get(state, 0.0) for state in _IDLE)
    return round(min(100.0, max(0.0, busy / total * 100.0)), 2)


class CpuCollector:
    """``cpu_percent`` over the time since the previous collect, load averages, CPU count.

    The first collect has no previous reading, so it measures a short window
    (``first_window`` seconds) instead: ``agent --once`` must still get a real number.
    """

    name: ClassVar[str] = "cpu"
    settings_model: ClassVar[type[NoSettings]] = NoSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("cpu_percent", MetricKind.GAUGE, "Share of CPU time spent busy since the last tick.", "percent"),
        MetricSpec("load1", MetricKind.GAUGE, "Load average over 1 minute."),
        MetricSpec("load5", MetricKind.GAUGE, "Load average over 5 minutes."),
        MetricSpec("load15", MetricKind.GAUGE, "Load average over 15 minutes."),
        MetricSpec("cpu_count", MetricKind.GAUGE, "Number of logical CPUs."),
    )

    def __init__(self, *, source: CpuSource = psutil, first_window: float = 0.1) -> None:
        self._source = source
        self._first_window = first_window
        self._last: dict[str, float] | None = None

    @classmethod
    def from_settings(cls, cfg: NoSettings, context: PluginContext) -> Self:
        """Always configured: every host has CPUs."""
        return cls()

    async def collect(self) -> Sequence[Sample]:
        """Read the CPU counters and load averages, or raise ``CollectorError``."""
        now, (load1, load5, load15), count = self._read()
        if self._last is None:
            await asyncio.sleep(self._first_window)
            self._last = now
            now, (load1, load5, load15), count = self._read()
        percent = busy_percent(self._last, now)
        self._last = now
        samples = [
            Sample("cpu_percent", percent),
            Sample("load1", round(load1, 2)),
            Sample("load5", round(load5, 2)),
            Sample("load15", round(load15, 2)),
        ]
        if count is not None:  # psutil returns None when the count cannot be determined
            samples.append(Sample("cpu_count", count))
        return samples

    def _read(self) -> tuple[dict[str, float], tuple[float, float, float], int | None]:
        # Kernel counters (/proc/stat, /proc/loadavg): read on the loop, see collectors.base.
        try:
            times = dict(self._source.cpu_times()._asdict())
            return times, self._source.getloadavg(), self._source.cpu_count()
        except (OSError, psutil.Error) as exc:
            raise CollectorError("cpu figures unreadable", code="cpu_unreadable") from exc
