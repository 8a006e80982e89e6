"""Tests for the network collector: counters summed over non-loopback interfaces."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

from agent.errors import CollectorError
from agent.plugin_api import NoSettings, PluginContext
from agent.sample import Sample
from collectors.base import Collector
from collectors.network import NetworkCollector
from tests.collectors.declared import assert_declared


class Io(NamedTuple):
    """psutil's ``snetio``."""

    bytes_sent: int
    bytes_recv: int
    packets_sent: int
    packets_recv: int
    errin: int
    errout: int
    dropin: int
    dropout: int


class Nic(NamedTuple):
    """The part of psutil's ``snicstats`` the collector reads."""

    flags: str


def io(base: int) -> Io:
    """Counters base, 2*base, ... 8*base, so that every field's sum is told apart."""
    return Io(*(base * factor for factor in range(1, 9)))


class FakeNet:
    """Fixed per-interface counters and flags."""

    def __init__(self, counters: Mapping[str, Io], stats: Mapping[str, Nic] | None) -> None:
        self.counters = dict(counters)
        self.stats = stats
        self.asked_pernic: list[bool] = []
        self.stats_reads = 0

    def net_io_counters(self, pernic: bool) -> dict[str, Io]:
        self.asked_pernic.append(pernic)
        return self.counters

    def net_if_stats(self) -> Mapping[str, Nic]:
        self.stats_reads += 1
        if self.stats is None:
            raise OSError(19, "No such device")
        return self.stats


def sums(base: int) -> list[Sample]:
    names = [
        "net_bytes_sent_total",
        "net_bytes_recv_total",
        "net_packets_sent_total",
        "net_packets_recv_total",
        "net_errors_in_total",
        "net_errors_out_total",
        "net_drops_in_total",
        "net_drops_out_total",
    ]
    return [Sample(name, base * factor) for factor, name in enumerate(names, start=1)]


async def test_counters_are_summed_over_non_loopback_interfaces() -> None:
    """eth0 and wg0 are summed; lo and an interface flagged loopback are left out."""
    source = FakeNet(
        {"lo": io(1), "eth0": io(100), "wg0": io(10_000), "lo-sim": io(1_000_000), "loopy": io(1)},
        {
            "lo": Nic("up,loopback,running"),
            "eth0": Nic("up,broadcast,running,multicast"),
            "wg0": Nic("up,pointopoint,running,noarp"),
            "lo-sim": Nic("up,broadcast,running"),  # the flags, not the name, decide when they are known
            "loopy": Nic("up,loopback,running"),
        },
    )
    collector = NetworkCollector(source=source)
    samples = await collector.collect()
    assert (sums(1_010_100), [True]) == (list(samples), source.asked_pernic)
    assert_declared(collector, samples)


async def test_without_interface_flags_the_name_tells_a_loopback() -> None:
    """When the interface flags cannot be read, lo and lo0 are still left out by name."""
    source = FakeNet({"lo": io(1), "lo0": io(2), "eth0": io(100), "eno1": io(10_000)}, None)
    samples = await NetworkCollector(source=source).collect()
    expected = sums(10_100)
    assert expected == list(samples)


async def test_a_host_with_only_loopback_reports_zeros() -> None:
    """With no other interface every sum is 0, never a missing metric."""
    samples = await NetworkCollector(source=FakeNet({"lo": io(7)}, {"lo": Nic("up,loopback")})).collect()
    expected = sums(0)
    assert expected == list(samples)


async def test_flags_are_read_again_only_when_an_interface_appears() -> None:
    """Ticks over the same interfaces read their flags once; a new interface has its flags read."""
    source = FakeNet({"lo": io(1), "eth0": io(100)}, {"lo": Nic("up,loopback"), "eth0": Nic("up,broadcast")})
    collector = NetworkCollector(source=source)
    before = [list(await collector.collect()) for _ in range(3)]
    source.counters["veth1"] = io(10_000)
    source.stats = {**(source.stats or {}), "veth1": Nic("up,broadcast")}
    after = [list(await collector.collect()) for _ in range(2)]
    expected = ([sums(100)] * 3, [sums(10_100)] * 2, 2)
    assert expected == (before, after, source.stats_reads)


async def test_an_interface_back_under_an_old_name_is_looked_at_afresh() -> None:
    """An interface that went away and came back with other flags is classified by its new flags."""
    source = FakeNet({"eth0": io(100), "tap0": io(1)}, {"eth0": Nic("up,broadcast"), "tap0": Nic("up,broadcast")})
    collector = NetworkCollector(source=source)
    first = list(await collector.collect())
    del source.counters["tap0"]
    gone = list(await collector.collect())
    source.counters["tap0"] = io(1)
    source.stats = {"eth0": Nic("up,broadcast"), "tap0": Nic("up,loopback")}
    back = list(await collector.collect())
    expected = (sums(101), sums(100), sums(100))
    assert expected == (first, gone, back)


async def test_unreadable_flags_are_tried_again_next_tick() -> None:
    """While the flags cannot be read, names decide and every tick tries the flags again."""
    source = FakeNet({"lo": io(1), "eth0": io(100)}, None)
    collector = NetworkCollector(source=source)
    failing = [list(await collector.collect()) for _ in range(2)]
    source.stats = {"lo": Nic("up,loopback"), "eth0": Nic("up,loopback")}
    readable = [list(await collector.collect()) for _ in range(2)]
    expected = ([sums(100)] * 2, [sums(0)] * 2, 3)
    assert expected == (failing, readable, source.stats_reads)


async def test_unreadable_counters_are_a_collector_error() -> None:
    """When the interface counters cannot be read the collector fails with a fixed code."""

    class Broken(FakeNet):
        def net_io_counters(self, pernic: bool) -> dict[str, Io]:
            raise FileNotFoundError(2, "No such file or directory", "/proc/net/dev")

    with pytest.raises(CollectorError) as caught:
        await NetworkCollector(source=Broken({}, {})).collect()
    expected = "net_unreadable"
    assert expected == caught.value.code


def test_from_settings_builds_a_collector() -> None:
    """The registry's factory builds a collector that satisfies the protocol."""
    expected = (True, "network")
    collector = NetworkCollector.from_settings(
        NoSettings(), PluginContext(interval=10.0, state_dir=Path("."), collector_timeout=5.0)
    )
    assert expected == (isinstance(collector, Collector), collector.name)


async def test_this_machine_gives_whole_non_negative_counters() -> None:
    """On the real machine every sum is a non-negative integer and carries no label."""
    collector = NetworkCollector()
    samples = await collector.collect()
    expected = ([], 8)
    bad = [s.name for s in samples if not (isinstance(s.value, int) and s.value >= 0) or s.labels]
    assert expected == (bad, len(samples))
    assert_declared(collector, samples)
