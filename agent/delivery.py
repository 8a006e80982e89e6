"""Delivery bookkeeping: each sink's state, and the second scrub of a spooled backlog.

The runner drains the spool to each sink on its own loop (``Runner.drain``); what
that loop decides per batch lives here, apart from the loop's plumbing:

- :class:`SinkState`: what ``agent status`` shows of one sink, and the rule that
  a failure or a recovery is logged once per transition, not once per batch.
- :class:`BacklogScrubber`: which spooled heartbeats must be scrubbed again
  before they leave. Heartbeats this process spooled were scrubbed on the way
  in: their ids are time-ordered and above every id the spool held at start.
  Anything else read from the spool (a backlog from before a restart, a file
  dropped in by hand) is scrubbed again on its way out, so nothing reaches a
  sink unscrubbed by these rules.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from agent.errors import ScrubRejected
from agent.sample import Delivery, MetricSpec, Pending
from agent.scrubber import scrub

log = structlog.get_logger("agent")

RESCRUBBED_MEMORY = 4096  # ids of re-scrubbed backlog heartbeats kept, so a retried batch is not scrubbed again


@dataclass
class SinkState:
    """What ``agent status`` shows of one sink."""

    last_ack: float | None = None
    last_failure: str | None = None
    consecutive_failures: int = 0
    acked_total: int = 0
    rejected_total: int = 0
    skipped_total: int = 0
    last_delivery_ms: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def record(self, sink: str, delivery: Delivery, elapsed_ms: float) -> None:
        """Count one delivery attempt; log a failure or a recovery once, when it begins."""
        self.acked_total += len(delivery.acked) - len(delivery.skipped)
        self.rejected_total += len(delivery.rejected)
        self.skipped_total += len(delivery.skipped)
        if delivery.rejected:
            log.warning("heartbeats_rejected", sink=sink, count=len(delivery.rejected))
        if delivery.failure is None:
            if self.consecutive_failures:
                log.info("delivery_recovered", sink=sink, after_failures=self.consecutive_failures)
            self.consecutive_failures = 0
            self.last_failure = None
            self.last_ack = time.time()
            self.last_delivery_ms = round(elapsed_ms, 1)
        else:
            if self.last_failure != delivery.failure:
                log.warning("delivery_failed", sink=sink, code=delivery.failure)
            self.consecutive_failures += 1
            self.last_failure = delivery.failure


class BacklogScrubber:
    """Scrubs again every spooled heartbeat this process did not spool itself."""

    def __init__(self, allowed: dict[str, MetricSpec]) -> None:
        self.allowed = allowed
        self.floor = "~"  # above every id until the runner has looked at the spool: trust nothing
        self._rescrubbed: set[str] = set()

    def vouch_above(self, floor: str) -> None:
        """Heartbeats with ids above ``floor`` are this process's own, scrubbed when they were spooled."""
        self.floor = floor

    def check(self, batch: list[Pending]) -> tuple[list[Pending], dict[str, str]]:
        """The heartbeats that may leave, and a reason code for each one refused."""
        passed: list[Pending] = []
        refused: dict[str, str] = {}
        for pending in batch:
            if pending.id > self.floor or pending.id in self._rescrubbed:
                passed.append(pending)
                continue
            try:
                scrub(pending.doc, self.allowed)
            except ScrubRejected as rejected:
                refused[pending.id] = "scrub_" + rejected.findings[0][1]
                continue
            except ValueError:
                refused[pending.id] = "unparseable"
                continue
            if len(self._rescrubbed) >= RESCRUBBED_MEMORY:
                self._rescrubbed.clear()  # forgetting only costs a second scrub
            self._rescrubbed.add(pending.id)
            passed.append(pending)
        return passed, refused
