"""Tests for the memory collector: RAM and swap figures."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from agent.errors import CollectorError
from agent.plugin_api import NoSettings, PluginContext
from agent.sample import Sample
from collectors.base import Collector
from collectors.memory import MemoryCollector
from tests.collectors.declared import assert_declared


class Ram(NamedTuple):
    total: int
    available: int


class Swap(NamedTuple):
    total: int
    used: int


class FakeMemory:
    """Fixed ``virtual_memory`` and ``swap_memory`` readings."""

    def __init__(self, ram: Ram, swap: Swap) -> None:
        self.ram = ram
        self.swap = swap

    def virtual_memory(self) -> Ram:
        return self.ram

    def swap_memory(self) -> Swap:
        return self.swap


async def test_ram_in_use_is_what_is_not_available() -> None:
    """Used RAM is total minus available (page cache is not use); swap is used over total."""
    source = FakeMemory(Ram(total=16_000_000_000, available=6_000_000_000), Swap(total=4_000_000_000, used=500_000_000))
    collector = MemoryCollector(source=source)
    samples = await collector.collect()
    expected = [
        Sample("mem_used_percent", 62.5),
        Sample("mem_total_bytes", 16_000_000_000),
        Sample("mem_available_bytes", 6_000_000_000),
        Sample("swap_used_percent", 12.5),
        Sample("swap_total_bytes", 4_000_000_000),
    ]
    assert expected == list(samples)
    assert_declared(collector, samples)


async def test_no_swap_is_zero_percent() -> None:
    """A host without swap reports 0 % of 0 bytes rather than failing."""
    samples = await MemoryCollector(source=FakeMemory(Ram(1000, 1000), Swap(0, 0))).collect()
    expected = {"mem_used_percent": 0.0, "swap_used_percent": 0.0, "swap_total_bytes": 0}
    assert expected == {s.name: s.value for s in samples if s.name in expected}


async def test_unreadable_memory_is_a_collector_error() -> None:
    """When the memory figures cannot be read the collector fails with a fixed code."""

    class Broken(FakeMemory):
        def swap_memory(self) -> Swap:
            raise PermissionError(13, "Permission denied", "/proc/meminfo")

    with pytest.raises(CollectorError) as caught:
        await MemoryCollector(source=Broken(Ram(1, 1), Swap(0, 0))).collect()
    expected = "memory_unreadable"
    assert expected == caught.value.code


def test_from_settings_builds_a_collector() -> None:
    """The registry's factory builds a collector that satisfies the protocol."""
    expected = (True, "memory")
    collector = MemoryCollector.from_settings(
        NoSettings(), PluginContext(interval=10.0, state_dir=Path("."), collector_timeout=5.0)
    )
    assert expected == (isinstance(collector, Collector), collector.name)


async def test_this_machine_gives_sane_values() -> None:
    """On the real machine RAM is positive, available fits in it and shares are percentages."""
    collector = MemoryCollector()
    samples = await collector.collect()
    values = {sample.name: sample.value for sample in samples}
    expected = (True, True, True, True)
    assert expected == (
        values["mem_total_bytes"] > 0,
        0 <= values["mem_available_bytes"] <= values["mem_total_bytes"],
        0.0 <= values["mem_used_percent"] <= 100.0,
        0.0 <= values["swap_used_percent"] <= 100.0,
    )
    assert_declared(collector, samples)
