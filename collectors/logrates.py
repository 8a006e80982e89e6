"""Request rates by log time: counts per second of the last few minutes, in all and by status class.

``requests_per_s`` (and ``requests_class_per_s`` by class 2xx..5xx) count the
lines stamped in the last ``interval`` whole seconds before the current second,
divided by that span (at least one second). Lines that arrive after their second
was reported count in ``requests_total`` only. Only seconds within
:data:`RECENT_S` before and :data:`FUTURE_S` after now are kept: the rates never
look further back, and a backlog read on the first start costs nothing here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Lines stamped this close to now are counted per second, for the rates.
RECENT_S = 300
FUTURE_S = 300
CLASSES = ("2xx", "3xx", "4xx", "5xx")


class SecondCounts:
    """Lines per second of log time, as ``[all, 1xx, 2xx, 3xx, 4xx, 5xx]`` per second."""

    def __init__(self) -> None:
        self.seconds: dict[int, list[int]] = {}

    @staticmethod
    def wants(when: float | None, now: float) -> bool:
        """Whether a line stamped ``when`` is recent enough to be counted per second."""
        return when is not None and now - RECENT_S <= when <= now + FUTURE_S

    def add(self, counts: Mapping[tuple[Any, Any], int], times: Mapping[Any, float | None], now: float) -> None:
        """Add ``(stamp, class digit) -> lines`` counts, each stamp's time given by ``times``."""
        low, high = now - RECENT_S, now + FUTURE_S
        for (stamp, cls), n in counts.items():
            when = times[stamp]
            if when is not None and low <= when <= high:
                row = self.seconds.setdefault(int(when), [0] * 6)
                row[0] += n
                row[int(cls)] += n

    def rates(self, now: float, interval: float) -> tuple[float, list[float]]:
        """Requests per second over the last ``interval`` whole seconds, in all and by class 2xx..5xx."""
        span = max(1, round(interval))
        end = math.floor(now) - 1
        sums = [0] * 6
        for second in range(end - span + 1, end + 1):
            row = self.seconds.get(second)
            if row is not None:
                for i in range(6):
                    sums[i] += row[i]
        return sums[0] / span, [sums[i] / span for i in range(2, 6)]

    def prune(self, now: float) -> None:
        """Forget the seconds that no rate can ask for any more."""
        oldest = now - RECENT_S
        for second in [s for s in self.seconds if s < oldest]:
            del self.seconds[second]

    def save(self) -> dict[str, list[int]]:
        """JSON-safe counts: second -> row."""
        return {str(s): row for s, row in self.seconds.items()}

    def load(self, data: object) -> None:
        """Restore :meth:`save`'s data; invalid rows are skipped."""
        if not isinstance(data, dict):
            return
        for key, row in data.items():
            valid = isinstance(row, list) and len(row) == 6 and all(isinstance(v, int) for v in row)
            if valid and key.lstrip("-").isdigit():
                self.seconds[int(key)] = row
