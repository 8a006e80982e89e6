"""Tests for the system collector: uptime and process count."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.errors import CollectorError
from agent.plugin_api import NoSettings, PluginContext
from agent.sample import Sample
from collectors.base import Collector
from collectors.system import SystemCollector
from tests.collectors.declared import assert_declared


class FakeSystem:
    """A fixed process table."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.table = list(pids)

    def pids(self) -> list[int]:
        return self.table


async def test_uptime_and_process_count_are_exact() -> None:
    """Uptime is the boot clock's reading; the count is the length of the process table."""
    source = FakeSystem(pids=[1, 2, 42, 4242])
    collector = SystemCollector(source=source, uptime=lambda: 86_400.54)
    samples = await collector.collect()
    expected = [Sample("uptime_seconds", 86_400.5), Sample("process_count", 4)]
    assert expected == list(samples)
    assert_declared(collector, samples)


async def test_uptime_is_the_kernels_boot_clock_not_the_wall_clock() -> None:
    """The uptime matches /proc/uptime (CLOCK_BOOTTIME), so a stepped wall clock cannot move it."""
    before = float(Path("/proc/uptime").read_text().split()[0])
    samples = await SystemCollector().collect()
    after = float(Path("/proc/uptime").read_text().split()[0])
    uptime = samples[0].value
    assert isinstance(uptime, float)
    assert before - 0.1 <= uptime <= after + 0.1


async def test_an_unreadable_process_table_is_a_collector_error() -> None:
    """When the process table cannot be read the collector fails with a fixed code."""

    class Broken(FakeSystem):
        def pids(self) -> list[int]:
            raise PermissionError(13, "Permission denied", "/proc")

    with pytest.raises(CollectorError) as caught:
        await SystemCollector(source=Broken([])).collect()
    expected = "system_unreadable"
    assert expected == caught.value.code


def test_from_settings_builds_a_collector() -> None:
    """The registry's factory builds a collector that satisfies the protocol."""
    expected = (True, "system")
    collector = SystemCollector.from_settings(
        NoSettings(), PluginContext(interval=10.0, state_dir=Path("."), collector_timeout=5.0)
    )
    assert expected == (isinstance(collector, Collector), collector.name)


async def test_this_machine_gives_sane_values() -> None:
    """On the real machine the host has been up a while and runs at least this process."""
    collector = SystemCollector()
    samples = await collector.collect()
    values = {sample.name: sample.value for sample in samples}
    expected = (True, True)
    assert expected == (values["uptime_seconds"] > 0, values["process_count"] >= 1)
    assert_declared(collector, samples)
