"""What ``agent status`` shows of one sink, and the fixed code a failed pass is known by.

A failure or a recovery is logged once per transition, not once per batch.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import structlog

from agent.sample import Delivery

log = structlog.get_logger("agent")

_CODE = re.compile(r"[a-z0-9][a-z0-9_]{0,31}", re.ASCII)


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
    retry_in_s: float | None = None

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

    def snapshot(self) -> dict[str, Any]:
        """The fields ``status.json`` shows, copied on the loop (they are scalars: a shallow copy will do)."""
        return dict(vars(self))


def failure_code(exc: BaseException) -> str:
    """A fixed code for an exception out of a sink or the spool: its ``code`` if it has one, else its class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and _CODE.fullmatch(code) else type(exc).__name__[:32]
