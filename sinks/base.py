"""The sink contract.

A sink takes a batch of spooled heartbeats (oldest first) and says what became of
each: acknowledged, rejected for good, or kept for a later try. It makes each
request once and never waits to retry: the first failure ends the call, reported
with its fixed code and the receiver's ``Retry-After``, and the delivery loop's
backoff (:mod:`agent.pacing`) decides when to come back; the spool covers the
outage meanwhile. A sink never raises for an expected delivery failure: it returns
a :class:`~agent.sample.Delivery` with a fixed failure code, and never puts
exception text or response bodies anywhere that can leave the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from agent.deadline import Deadline
from agent.sample import Delivery, Pending


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
