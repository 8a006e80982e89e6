"""The collector contract.

A collector is a small class with a ``name``, the ``metrics`` it declares (the
scrubber's allowlist) and ``async collect()``. Timeouts, error counting and
up/down state belong to the runner, so collectors stay tiny. Blocking work
(psutil, statvfs, file reads) goes through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from agent.sample import MetricSpec, Sample


@runtime_checkable
class Collector(Protocol):
    """Measures something once per tick."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[MetricSpec, ...]]

    async def collect(self) -> Sequence[Sample]:
        """Return this tick's samples, or raise :class:`agent.errors.CollectorError`."""
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

    def save_state(self) -> dict[str, object]: ...

    def load_state(self, state: dict[str, object]) -> None: ...
