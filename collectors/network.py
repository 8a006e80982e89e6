"""Network: traffic, error and drop counters summed over every non-loopback interface.

Only the sums leave the POP: no interface name is ever emitted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import psutil

from agent.errors import CollectorError
from agent.plugin_api import NoSettings
from agent.sample import MetricKind, MetricSpec, Sample

if TYPE_CHECKING:
    from agent.plugin_api import PluginContext

_LOOPBACK_NAME = re.compile(r"lo[0-9]*")

# metric name -> field of psutil's snetio
FIELDS: dict[str, str] = {
    "net_bytes_sent_total": "bytes_sent",
    "net_bytes_recv_total": "bytes_recv",
    "net_packets_sent_total": "packets_sent",
    "net_packets_recv_total": "packets_recv",
    "net_errors_in_total": "errin",
    "net_errors_out_total": "errout",
    "net_drops_in_total": "dropin",
    "net_drops_out_total": "dropout",
}


class InterfaceStats(Protocol):
    """The field of ``psutil.net_if_stats()`` values this collector reads."""

    @property
    def flags(self) -> str: ...


class NetworkSource(Protocol):
    """The part of psutil this collector reads; the ``psutil`` module itself is one."""

    def net_io_counters(self, pernic: bool) -> Mapping[str, object]: ...

    def net_if_stats(self) -> Mapping[str, InterfaceStats]: ...


def is_loopback(name: str, stats: InterfaceStats | None) -> bool:
    """Whether an interface is a loopback: by its flags when known, else by its name."""
    if stats is not None and stats.flags:
        return "loopback" in stats.flags.split(",")
    return _LOOPBACK_NAME.fullmatch(name) is not None


class NetworkCollector:
    """Byte, packet, error and drop counters of all non-loopback interfaces, summed.

    The sums fall when an interface goes away; as counters, consumers treat that
    as a reset.
    """

    name: ClassVar[str] = "network"
    settings_model: ClassVar[type[NoSettings]] = NoSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("net_bytes_sent_total", MetricKind.COUNTER, "Bytes sent by non-loopback interfaces.", "bytes"),
        MetricSpec("net_bytes_recv_total", MetricKind.COUNTER, "Bytes received by non-loopback interfaces.", "bytes"),
        MetricSpec("net_packets_sent_total", MetricKind.COUNTER, "Packets sent by non-loopback interfaces."),
        MetricSpec("net_packets_recv_total", MetricKind.COUNTER, "Packets received by non-loopback interfaces."),
        MetricSpec("net_errors_in_total", MetricKind.COUNTER, "Receive errors on non-loopback interfaces."),
        MetricSpec("net_errors_out_total", MetricKind.COUNTER, "Transmit errors on non-loopback interfaces."),
        MetricSpec("net_drops_in_total", MetricKind.COUNTER, "Incoming packets dropped on non-loopback interfaces."),
        MetricSpec("net_drops_out_total", MetricKind.COUNTER, "Outgoing packets dropped on non-loopback interfaces."),
    )

    def __init__(self, *, source: NetworkSource = psutil) -> None:
        self._source = source
        # Interface name -> loopback or not. Flags are read only for names not seen
        # before (psutil's net_if_stats rereads the counters and asks three ioctls
        # per interface); a name that goes away is forgotten, so one that comes back
        # is looked at afresh.
        self._loopback: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, cfg: NoSettings, context: PluginContext) -> Self:
        """Always configured: every POP has a network."""
        return cls()

    async def collect(self) -> Sequence[Sample]:
        """Sum the interface counters, or raise ``CollectorError``."""
        known = frozenset(self._loopback)
        try:
            counters, stats = self._read(known)  # kernel counters: read on the loop, see collectors.base
        except (OSError, psutil.Error) as exc:
            raise CollectorError("interface counters unreadable", code="net_unreadable") from exc
        loopback: dict[str, bool] = {}
        totals = dict.fromkeys(FIELDS, 0)
        for interface, values in counters.items():
            if interface in self._loopback:
                loopback[interface] = self._loopback[interface]
            elif stats is not None and interface in stats:
                loopback[interface] = is_loopback(interface, stats[interface])
            if loopback.get(interface, is_loopback(interface, None)):
                continue
            for metric, field in FIELDS.items():
                totals[metric] += int(getattr(values, field))
        self._loopback = loopback
        return [Sample(metric, value) for metric, value in totals.items()]

    def _read(self, known: frozenset[str]) -> tuple[Mapping[str, object], Mapping[str, InterfaceStats] | None]:
        """The counters, and the flags if an interface is new; ``None`` when the flags are not wanted or unreadable."""
        counters = self._source.net_io_counters(pernic=True)
        if known.issuperset(counters):
            return counters, None
        try:
            return counters, self._source.net_if_stats()
        except (OSError, psutil.Error):
            return counters, None  # the names still tell a loopback apart on every platform we run on
