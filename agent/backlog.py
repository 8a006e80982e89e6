"""The backlog's second scrub: which spooled heartbeats must be scrubbed again before they leave.

Heartbeats this process spooled were scrubbed on the way in: their ids are
time-ordered and above every id the spool held at start. Anything else read from
the spool (a backlog from before a restart, a file dropped in by hand) is
scrubbed again on its way out, so nothing reaches a sink unscrubbed by these rules.
"""

from __future__ import annotations

from agent import jsondoc
from agent.errors import ScrubRejected
from agent.sample import Pending
from agent.scrubber import Allowlist, scrub

RESCRUBBED_MEMORY = 4096  # ids of re-scrubbed backlog heartbeats kept, so a retried batch is not scrubbed again


class BacklogScrubber:
    """Scrubs again every spooled heartbeat this process did not spool itself."""

    def __init__(self, allowed: Allowlist) -> None:
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
                # Parsed again from the bytes, marking repeated keys: the spool's own parse
                # (pending.doc) keeps one value of a repeated key, and a foreign file's bytes
                # are what a sink would send.
                scrub(jsondoc.loads(pending.raw), self.allowed)
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
