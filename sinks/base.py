"""The sink contract.

A sink takes a batch of spooled heartbeats (oldest first) and says what became of
each: acknowledged, rejected for good, or kept for a later try. It makes each
request once and never waits to retry: the first failure ends the call, reported
with its fixed code and the receiver's ``Retry-After``, and the delivery loop's
backoff (:mod:`agent.pacing`) decides when to come back; the spool covers the
outage meanwhile. A sink never raises for an expected delivery failure: it returns
a :class:`~agent.sample.Delivery` with a fixed failure code, and never puts
exception text or response bodies anywhere that can leave the machine.

Like a collector, a sink declares its ``settings_model``; the agent validates the
sink's own table, ``[sinks.<name>]``, with it and builds the sink with
``from_settings(cfg, context)``, which returns ``None`` when the table leaves the
sink off (no ``url``, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from agent.deadline import Deadline
from agent.plugin_api import PluginContext
from agent.sample import Delivery, Pending

Cfg = TypeVar("Cfg", bound=BaseModel)


@runtime_checkable
class Sink(Protocol):
    """Delivers heartbeats to one receiver."""

    name: ClassVar[str]
    max_batch: int  # most heartbeats the runner hands over in one call

    async def send(self, batch: Sequence[Pending], deadline: Deadline) -> Delivery:
        """Deliver ``batch`` (oldest first) and report per heartbeat what happened.

        Every request is bounded by ``deadline``; what is not delivered when it
        expires is simply not in ``acked`` and stays spooled. A call that acks
        nothing, rejects nothing and names no ``failure`` is taken as a failure
        (``no_progress``) by the delivery loop.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...


class SinkClass(Protocol[Cfg]):
    """A sink's class, as the registry loads it: what it is called and configured by."""

    @property
    def name(self) -> str:
        """The sink's name: its table, ``[sinks.<name>]``, and its cursor in the spool."""
        ...

    @property
    def settings_model(self) -> type[Cfg]:
        """The pydantic model of its table (see :class:`agent.plugin_api.PluginSettings`)."""
        ...

    def from_settings(self, cfg: Cfg, context: PluginContext, /) -> Sink | None:
        """The sink for ``cfg``, or ``None`` when that table leaves it off."""
        ...
