"""The collector contract.

A collector is a small class with a ``name``, the ``metrics`` it declares (the
scrubber's allowlist), its ``settings_model`` and ``async collect()``. The agent
validates the collector's own table, ``[collectors.<name>]``, with that model and
builds the collector with ``from_settings(cfg, context)``. Timeouts, error
counting and up/down state belong to the runner, so collectors stay tiny.
Work that can wait on a device or a server (statvfs, reading logs or files,
SQLite) goes through :func:`asyncio.to_thread`. The kernel's own counters
(``/proc/stat``, ``/proc/meminfo``, ``/proc/net/dev``, the process list, read
through psutil) are read on the event loop: such a read is computed by the kernel
on the spot and never waits for I/O, and a trip to a thread and back cost about
0.2 ms of CPU a tick, more than those reads themselves (``make bench``, idle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from agent.plugin_api import PluginContext
from agent.sample import JsonObject, MetricSpec, Sample

Cfg = TypeVar("Cfg", bound=BaseModel)


@runtime_checkable
class Collector(Protocol):
    """Measures something once per tick."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[MetricSpec, ...]]

    async def collect(self) -> Sequence[Sample]:
        """Return this tick's samples, or raise :class:`agent.errors.CollectorError`."""
        ...


class CollectorClass(Protocol[Cfg]):
    """A collector's class, as the registry loads it: what it is called, declares and is configured by."""

    @property
    def name(self) -> str:
        """The collector's name: its key in the heartbeat and its table, ``[collectors.<name>]``."""
        ...

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        """Every metric the collector may emit."""
        ...

    @property
    def settings_model(self) -> type[Cfg]:
        """The pydantic model of its table (see :class:`agent.plugin_api.PluginSettings`)."""
        ...

    def from_settings(self, cfg: Cfg, context: PluginContext, /) -> Collector | None:
        """The collector for ``cfg``, or ``None`` when that table leaves it unconfigured."""
        ...


@runtime_checkable
class Closable(Protocol):
    """Optional ability: a collector that holds resources to release at shutdown."""

    async def aclose(self) -> None: ...


@runtime_checkable
class Persistent(Protocol):
    """Optional ability: a collector that keeps state (offsets, sketches) across restarts.

    ``save_state`` returns JSON-serialisable data holding no address and no user
    data; the runner stores it atomically and hands it back to ``load_state``.
    """

    def save_state(self) -> JsonObject: ...

    def load_state(self, state: JsonObject) -> None: ...
