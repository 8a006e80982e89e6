"""System: time since boot and the number of processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import psutil

from agent.errors import CollectorError
from agent.plugin_api import NoSettings
from agent.sample import MetricKind, MetricSpec, Sample

if TYPE_CHECKING:
    from agent.plugin_api import PluginContext


class SystemSource(Protocol):
    """The part of psutil this collector reads; the ``psutil`` module itself is one."""

    def pids(self) -> Sequence[int]: ...


def seconds_since_boot() -> float:
    """The kernel's ``CLOCK_BOOTTIME``: time since boot, suspend included, and deaf to wall-clock steps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class SystemCollector:
    """Seconds since the host booted and the number of processes running on it."""

    name: ClassVar[str] = "system"
    settings_model: ClassVar[type[NoSettings]] = NoSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("uptime_seconds", MetricKind.GAUGE, "Seconds since the host booted.", "seconds"),
        MetricSpec("process_count", MetricKind.GAUGE, "Number of processes on the host."),
    )

    def __init__(self, *, source: SystemSource = psutil, uptime: Callable[[], float] = seconds_since_boot) -> None:
        self._source = source
        self._uptime = uptime

    @classmethod
    def from_settings(cls, cfg: NoSettings, context: PluginContext) -> Self:
        """Always configured."""
        return cls()

    async def collect(self) -> Sequence[Sample]:
        """Read the uptime and the process table (on the loop: see collectors.base), or raise ``CollectorError``."""
        try:
            processes = len(self._source.pids())
        except (OSError, psutil.Error) as exc:
            raise CollectorError("system figures unreadable", code="system_unreadable") from exc
        return [
            Sample("uptime_seconds", round(self._uptime(), 1)),
            Sample("process_count", processes),
        ]
