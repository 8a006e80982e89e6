"""Tests for the CPU collector: busy share between readings, load averages, CPU count."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import CollectorError
from agent.plugin_api import NoSettings, PluginContext
from agent.sample import Sample
from collectors.base import Collector
from collectors.cpu import CpuCollector, busy_percent
from tests.collectors.declared import assert_declared


class Times(NamedTuple):
    """Linux's ``psutil.cpu_times()`` fields, in seconds."""

    user: float = 0.0
    nice: float = 0.0
    system: float = 0.0
    idle: float = 0.0
    iowait: float = 0.0
    irq: float = 0.0
    softirq: float = 0.0
    steal: float = 0.0
    guest: float = 0.0
    guest_nice: float = 0.0


class FakeCpu:
    """Hands out scripted ``cpu_times`` readings, one per call."""

    def __init__(self, readings: Iterable[Times], load: tuple[float, float, float] = (0.5, 0.25, 0.125)) -> None:
        self.readings = list(readings)
        self.reads = 0
        self.load = load
        self.count: int | None = 8

    def cpu_times(self) -> Times:
        self.reads += 1
        return self.readings.pop(0)

    def getloadavg(self) -> tuple[float, float, float]:
        return self.load

    def cpu_count(self) -> int | None:
        return self.count


async def test_first_collect_measures_a_short_window() -> None:
    """The first collect reads twice, a window apart, and reports the busy share between them."""
    # guest is already part of user: 30 user + 10 system busy out of 100 seconds.
    source = FakeCpu([Times(), Times(user=30, system=10, idle=50, iowait=10, guest=5)], load=(0.52, 0.41, 0.3))
    collector = CpuCollector(source=source, first_window=0)
    samples = await collector.collect()
    expected = [
        Sample("cpu_percent", 40.0),
        Sample("load1", 0.52),
        Sample("load5", 0.41),
        Sample("load15", 0.3),
        Sample("cpu_count", 8),
    ]
    assert (expected, 2) == (list(samples), source.reads)
    assert_declared(collector, samples)


async def test_later_collects_measure_since_the_previous_one() -> None:
    """Each later collect reads once and reports the share since the previous reading."""
    source = FakeCpu(
        [
            Times(),
            Times(user=10, idle=90),
            Times(user=10 + 3, system=2 + 0, steal=1, idle=90 + 4),  # 6 busy of 10
            Times(user=13, system=2, steal=1, idle=94 + 8, irq=2),  # 2 busy of 10
        ]
    )
    collector = CpuCollector(source=source, first_window=0)
    shares = []
    for _ in range(3):
        shares.append((await collector.collect())[0])
    expected = ([Sample("cpu_percent", 10.0), Sample("cpu_percent", 60.0), Sample("cpu_percent", 20.0)], 4)
    assert expected == (shares, source.reads)


def test_counters_going_backwards_count_as_zero() -> None:
    """A state whose counter fell (a CPU taken offline) adds nothing instead of going negative."""
    before = Times(user=100, system=50, idle=1000)._asdict()
    after = Times(user=90, system=60, idle=1030)._asdict()
    expected = 25.0  # 10 system out of 40
    assert expected == busy_percent(before, after)


def test_no_time_passed_is_zero_busy() -> None:
    """Two equal readings give 0 rather than a division by zero."""
    reading = Times(user=5, idle=5)._asdict()
    expected = 0.0
    assert expected == busy_percent(reading, reading)


_SECONDS = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@given(st.builds(Times, *[_SECONDS] * 10), st.builds(Times, *[_SECONDS] * 10))
def test_busy_share_is_always_a_percentage(before: Times, after: Times) -> None:
    """Whatever two readings hold, the busy share lies in [0, 100]."""
    share = busy_percent(before._asdict(), after._asdict())
    expected = (True, True)
    assert expected == (0.0 <= share <= 100.0, share == round(share, 2))


async def test_unknown_cpu_count_is_left_out() -> None:
    """When psutil cannot tell the number of CPUs, no cpu_count sample is made up."""
    source = FakeCpu([Times(), Times(idle=1)])
    source.count = None
    samples = await CpuCollector(source=source, first_window=0).collect()
    expected = ["cpu_percent", "load1", "load5", "load15"]
    assert expected == [sample.name for sample in samples]


async def test_unreadable_counters_are_a_collector_error() -> None:
    """When the CPU counters cannot be read the collector fails with a fixed code."""

    class Broken(FakeCpu):
        def cpu_times(self) -> Times:
            raise FileNotFoundError(2, "No such file or directory", "/proc/stat")

    with pytest.raises(CollectorError) as caught:
        await CpuCollector(source=Broken([]), first_window=0).collect()
    expected = "cpu_unreadable"
    assert expected == caught.value.code


def test_from_settings_builds_a_collector() -> None:
    """The registry's factory builds a collector that satisfies the protocol."""
    expected = (True, "cpu")
    collector = CpuCollector.from_settings(
        NoSettings(), PluginContext(interval=10.0, state_dir=Path("."), collector_timeout=5.0)
    )
    assert expected == (isinstance(collector, Collector), collector.name)


async def test_this_machine_gives_sane_values_on_the_first_collect() -> None:
    """On the real machine the very first collect gives a percentage, CPUs and load averages."""
    collector = CpuCollector()
    samples = await collector.collect()
    values = {sample.name: sample.value for sample in samples}
    expected = (True, True, True)
    assert expected == (
        0.0 <= values["cpu_percent"] <= 100.0,
        values["cpu_count"] >= 1,
        min(values["load1"], values["load5"], values["load15"]) >= 0.0,
    )
    assert_declared(collector, samples)
