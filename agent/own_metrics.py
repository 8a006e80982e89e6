"""The agent's own numbers in every heartbeat: its counters, the spool's state, its uptime.

Declared in :data:`agent.wiring.AGENT_METRICS`; measured here from values the
loop already holds, so building them costs no I/O.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from agent.sample import Sample
from agent.spool import SpoolStats


@dataclass
class Counters:
    """The agent's own monotonic counters, reported in every heartbeat."""

    scrub_rejected_total: int = 0
    collector_errors_total: int = 0
    tick_overruns_total: int = 0
    spool_write_errors_total: int = 0


def own_samples(stats: SpoolStats, counters: Counters, uptime_s: float) -> list[Sample]:
    """The spool's state, the agent's uptime and its counters, as samples."""
    own = [
        Sample("spool_pending", stats.pending),
        Sample("spool_bytes", stats.bytes),
        Sample("spool_oldest_age_seconds", round(stats.oldest_age_s or 0.0, 3)),
        Sample("spool_dropped_total", stats.dropped_total),
        Sample("spool_quarantined_total", stats.quarantined_total),
        Sample("spool_rejected_total", stats.rejected_total),
        Sample("agent_uptime_seconds", round(uptime_s, 3)),
    ]
    own.extend(Sample(name, value) for name, value in vars(counters).items())
    return own


class LastSeenSpool:
    """The spool as the file thread last saw it, so that a heartbeat's spool figures cost no trip of their own.

    Every trip there that changes the spool (the tick's store, a delivery's
    settlement) brings back a snapshot; of two, the later one holds, whichever
    reaches the loop first.
    """

    def __init__(self) -> None:
        self._stats: SpoolStats | None = None

    def saw(self, stats: SpoolStats) -> None:
        if self._stats is None or stats.taken_at >= self._stats.taken_at:
            self._stats = stats

    def now(self) -> SpoolStats:
        """The last snapshot, its oldest heartbeat aged by the time since."""
        stats = self._stats
        if stats is None:
            raise RuntimeError("the spool is not open")
        if stats.oldest_age_s is None:
            return stats
        return dataclasses.replace(stats, oldest_age_s=stats.oldest_age_s + (time.monotonic() - stats.taken_at))
