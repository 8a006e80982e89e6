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
    """A fixed boot time and process table."""

    def __init__(self, booted: float, pids: Sequence[int]) -> None:
        self.booted = booted
        self.table = list(pids)

    def boot_time(self) -> float:
        return self.booted

    def pids(self) -> list[int]:
        return self.table


async def test_uptime_and_process_count_are_exact() -> None:
    """Uptime is the clock minus the boot time; the count is the length of the process table."""
    source = FakeSystem(booted=1_700_000_000.0, pids=[1, 2, 42, 4242])
    collector = SystemCollector(source=source, clock=lambda: 1_700_086_400.5)
    samples = await collector.collect()
    expected = [Sample("uptime_seconds", 86_400.5), Sample("process_count", 4)]
    assert expected == list(samples)
    assert_declared(collector, samples)


async def test_a_clock_set_before_the_boot_time_gives_zero_uptime() -> None:
    """A wall clock stepped back below the boot time reports 0, not a negative uptime."""
    source = FakeSystem(booted=1_700_000_000.0, pids=[1])
    samples = await SystemCollector(source=source, clock=lambda: 1_699_999_000.0).collect()
    expected = Sample("uptime_seconds", 0.0)
    assert expected == samples[0]


async def test_an_unreadable_process_table_is_a_collector_error() -> None:
    """When the process table cannot be read the collector fails with a fixed code."""

    class Broken(FakeSystem):
        def pids(self) -> list[int]:
            raise PermissionError(13, "Permission denied", "/proc")

    with pytest.raises(CollectorError) as caught:
        await SystemCollector(source=Broken(0.0, [])).collect()
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
