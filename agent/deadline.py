"""One deadline that every step of a tick, a drain or a shutdown spends from."""

from __future__ import annotations

import asyncio
import math
import time


class Deadline:
    """A point on the monotonic clock that may be brought forward, never pushed back.

    Waits taken through :meth:`sleep` end early when the deadline is brought
    forward, so a shutdown cuts short a retry back-off already under way.
    """

    def __init__(self, seconds: float | None = None) -> None:
        self._at = math.inf if seconds is None else time.monotonic() + seconds
        self._changed = asyncio.Event()

    def remaining(self) -> float:
        """Seconds left, never negative; ``inf`` for no deadline."""
        return max(0.0, self._at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def cap(self, seconds: float) -> None:
        """Bring the deadline forward to at most ``seconds`` from now."""
        at = time.monotonic() + max(0.0, seconds)
        if at < self._at:
            self._at = at
            self._changed.set()
            self._changed = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the deadline comes (or is brought) first."""
        end = time.monotonic() + seconds
        while (left := min(end, self._at) - time.monotonic()) > 0:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=left)
            except TimeoutError:
                return

    def timeout(self, seconds: float) -> float:
        """``seconds``, shortened to what the deadline leaves."""
        return min(seconds, self.remaining())
