"""The one retry policy of every delivery path: tenacity, bounded, full jitter.

Retries live here and nowhere else; a batch that runs out of attempts stays in
the spool and the next tick tries again, so retries never multiply across layers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from agent.deadline import Deadline
from agent.errors import TransientSinkError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one batch.

    ``initial`` scales the exponential back-off; each wait is drawn uniformly from
    zero to that bound (full jitter, tenacity's ``wait_random_exponential``), and no
    wait, ``Retry-After`` included, exceeds ``max_delay``.
    """

    max_attempts: int = 4
    initial: float = 0.5
    max_delay: float = 30.0

    @classmethod
    def immediate(cls, max_attempts: int = 4) -> RetryPolicy:
        """A policy that never waits, for tests."""
        return cls(max_attempts=max_attempts, initial=0.0, max_delay=0.0)


class _Wait:
    """Full-jitter exponential back-off, overridden by the receiver's ``Retry-After``."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._jitter = wait_random_exponential(multiplier=policy.initial, max=policy.max_delay)

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(min(max(retry_after, 0.0), self._policy.max_delay))
        return float(self._jitter(state))


class _OutOfTime(stop_base):
    """Stop when the deadline has passed, or the next wait would outlast it."""

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        return self._deadline.expired or (state.upcoming_sleep or 0.0) >= self._deadline.remaining()


async def with_retries(policy: RetryPolicy, deadline: Deadline, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until it succeeds, raising the last error when tries or time run out.

    Only :class:`TransientSinkError` is retried. A wait that would outlast the
    deadline is not started: the batch stays spooled for the next tick instead.
    """

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts) | _OutOfTime(deadline),
        wait=_Wait(policy),
        retry=retry_if_exception_type(TransientSinkError),
        sleep=deadline.sleep,
        reraise=True,
    )
    result: T = await retrying(attempt)
    return result
