"""Memory: RAM in use and available, swap in use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import psutil

from agent.errors import CollectorError
from agent.plugin_api import NoSettings
from agent.sample import MetricKind, MetricSpec, Sample

if TYPE_CHECKING:
    from agent.plugin_api import PluginContext


class VirtualMemory(Protocol):
    """The fields of ``psutil.virtual_memory()`` this collector reads, in bytes."""

    @property
    def total(self) -> int: ...

    @property
    def available(self) -> int: ...


class SwapMemory(Protocol):
    """The fields of ``psutil.swap_memory()`` this collector reads, in bytes."""

    @property
    def total(self) -> int: ...

    @property
    def used(self) -> int: ...


class MemorySource(Protocol):
    """The part of psutil this collector reads; the ``psutil`` module itself is one."""

    def virtual_memory(self) -> VirtualMemory: ...

    def swap_memory(self) -> SwapMemory: ...


def percent(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole``, two decimals; 0 when ``whole`` is 0."""
    return round(part / whole * 100.0, 2) if whole > 0 else 0.0


class MemoryCollector:
    """RAM in use (everything not available to new programs) and swap in use."""

    name: ClassVar[str] = "memory"
    settings_model: ClassVar[type[NoSettings]] = NoSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("mem_used_percent", MetricKind.GAUGE, "Share of RAM not available to new programs.", "percent"),
        MetricSpec("mem_total_bytes", MetricKind.GAUGE, "Total RAM.", "bytes"),
        MetricSpec("mem_available_bytes", MetricKind.GAUGE, "RAM available to new programs without swapping.", "bytes"),
        MetricSpec("swap_used_percent", MetricKind.GAUGE, "Share of swap in use; 0 without swap.", "percent"),
        MetricSpec("swap_total_bytes", MetricKind.GAUGE, "Total swap.", "bytes"),
    )

    def __init__(self, *, source: MemorySource = psutil) -> None:
        self._source = source

    @classmethod
    def from_settings(cls, cfg: NoSettings, context: PluginContext) -> Self:
        """Always configured: every host has memory."""
        return cls()

    async def collect(self) -> Sequence[Sample]:
        """Read RAM and swap figures, or raise ``CollectorError``."""
        try:
            # Kernel counters (/proc/meminfo, /proc/vmstat): read on the loop, see collectors.base.
            ram, swap = self._source.virtual_memory(), self._source.swap_memory()
        except (OSError, psutil.Error) as exc:
            raise CollectorError("memory figures unreadable", code="memory_unreadable") from exc
        return [
            Sample("mem_used_percent", percent(ram.total - ram.available, ram.total)),
            Sample("mem_total_bytes", ram.total),
            Sample("mem_available_bytes", ram.available),
            Sample("swap_used_percent", percent(swap.used, swap.total)),
            Sample("swap_total_bytes", swap.total),
        ]
