"""How long a sink's delivery loop waits after a pass that failed: the one retry layer of the agent.

A sink makes one attempt per request and reports its outcome (and any
``Retry-After``); it never waits or retries itself. The delivery loop keeps one
:class:`Backoff` per sink, across passes, so a receiver that stays down sees
fewer and fewer requests:

- after the n-th failed pass in a row the loop waits a time drawn uniformly from
  ``[0, min(cap, initial * 2**(n-1))]`` ("full jitter": a fleet that failed
  together does not come back together);
- a ``Retry-After`` is a floor: the wait is at least what the receiver asked for,
  clamped to ``retry_after_max`` and spread by up to a tenth on top, so POPs
  given the same HTTP-date do not return in the same instant;
- the first pass that delivers resets the count.

Defaults (``[delivery]`` in the settings): ``initial`` 1 s, ``cap`` 120 s,
``retry_after_max`` 900 s. Against a receiver down for minutes, a POP then sends
about one request a minute on average (the mean of a full-jitter wait is half its
bound), and a backlog waits at most the cap once the receiver is back. A higher
cap sends fewer requests and drains later: bench/retry_storm.py measures both.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

RETRY_AFTER_SPREAD = 0.1  # at most this fraction of a Retry-After is added, against synchronised returns


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """The bounds of a sink's backoff; see the module docstring for how they combine."""

    initial: float = 1.0
    cap: float = 120.0
    retry_after_max: float = 900.0

    @classmethod
    def immediate(cls) -> BackoffPolicy:
        """A policy that never waits, for tests that count requests rather than time them."""
        return cls(initial=0.0, cap=0.0, retry_after_max=0.0)


class Backoff:
    """One sink's backoff state: failed passes in a row, and the wait they call for.

    ``uniform`` draws the jitter; tests pass a fixed one to see the bounds.
    """

    def __init__(self, policy: BackoffPolicy, *, uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.policy = policy
        self.failures = 0
        self._uniform = uniform

    def bound(self) -> float:
        """The longest wait the next failure may draw (the exponential, capped)."""
        policy = self.policy
        # min() before the power: 2**failures overflows a float after ~1000 failures.
        exponent = min(self.failures, 64)
        return min(policy.cap, policy.initial * 2.0**exponent)

    def failed(self, retry_after: float | None = None) -> float:
        """Count one failed pass; the seconds to wait before the next one."""
        wait = self._uniform(0.0, self.bound())
        self.failures += 1
        if retry_after is not None:
            floor = min(max(retry_after, 0.0), self.policy.retry_after_max)
            wait = max(wait, floor + self._uniform(0.0, floor * RETRY_AFTER_SPREAD))
        return wait

    def succeeded(self) -> None:
        """A pass delivered: the next failure starts from ``initial`` again."""
        self.failures = 0
