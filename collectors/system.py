"""System: time since boot and the number of processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import psutil

from agent.errors import CollectorError
from agent.plugin_api import NoSettings
from agent.sample import MetricKind, MetricSpec, Sample
from agent.threads import BatchedCalls

if TYPE_CHECKING:
    from agent.plugin_api import PluginContext


class SystemSource(Protocol):
    """The part of psutil this collector reads; the ``psutil`` module itself is one."""

    def boot_time(self) -> float: ...

    def pids(self) -> Sequence[int]: ...


class SystemCollector:
    """Seconds since the host booted and the number of processes running on it."""

    name: ClassVar[str] = "system"
    settings_model: ClassVar[type[NoSettings]] = NoSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("uptime_seconds", MetricKind.GAUGE, "Seconds since the host booted.", "seconds"),
        MetricSpec("process_count", MetricKind.GAUGE, "Number of processes on the host."),
    )

    def __init__(
        self,
        *,
        source: SystemSource = psutil,
        clock: Callable[[], float] = time.time,
        quick_reads: BatchedCalls | None = None,
    ) -> None:
        self._source = source
        self._quick_reads = quick_reads or BatchedCalls()
        self._clock = clock

    @classmethod
    def from_settings(cls, cfg: NoSettings, context: PluginContext) -> Self:
        """Always configured."""
        return cls(quick_reads=context.quick_reads)

    async def collect(self) -> Sequence[Sample]:
        """Read the boot time and the process table, or raise ``CollectorError``."""
        try:
            # One trip for both: a trip to a thread costs more than the reads it carries.
            booted, processes = await self._quick_reads.call(self._read)
        except (OSError, psutil.Error) as exc:
            raise CollectorError("system figures unreadable", code="system_unreadable") from exc
        # The wall clock may be stepped back below the boot time; never report a negative uptime.
        uptime = max(0.0, self._clock() - booted)
        return [
            Sample("uptime_seconds", round(uptime, 1)),
            Sample("process_count", processes),
        ]

    def _read(self) -> tuple[float, int]:
        return self._source.boot_time(), len(self._source.pids())
