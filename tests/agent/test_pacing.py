"""The backoff that paces each sink: bounds that grow and cap, a reset on success, Retry-After as a floor."""

from __future__ import annotations

from agent.pacing import RETRY_AFTER_SPREAD, Backoff, BackoffPolicy


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


def test_bound_doubles_with_each_failed_pass_up_to_the_cap() -> None:
    """With the jitter at its top, waits run 1, 2, 4, ... seconds and stop at the cap."""
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=20.0), uniform=highest)
    assert [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0] == [backoff.failed() for _ in range(7)]


def test_jitter_is_full_from_zero_to_the_bound() -> None:
    """Each wait is drawn from zero (not from half the bound) up to the bound."""
    drawn: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        drawn.append((low, high))
        return low

    backoff = Backoff(BackoffPolicy(initial=0.5, cap=300.0), uniform=record)
    waits = [backoff.failed() for _ in range(3)]
    assert ([0.0, 0.0, 0.0], [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0)]) == (waits, drawn)


def test_a_delivered_pass_starts_the_backoff_over() -> None:
    """After a success the next failure waits at most ``initial`` again."""
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=300.0), uniform=highest)
    for _ in range(5):
        backoff.failed()
    backoff.succeeded()
    assert (0, 1.0) == (backoff.failures, backoff.failed())


def test_retry_after_is_a_floor_clamped_to_its_maximum() -> None:
    """Retry-After: 30 waits at least 30 s; Retry-After: 3600 waits retry_after_max, however low the draw."""
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=300.0, retry_after_max=900.0), uniform=lowest)
    assert (30.0, 900.0) == (backoff.failed(30.0), backoff.failed(3600.0))


def test_retry_after_is_spread_by_at_most_a_tenth() -> None:
    """POPs told the same Retry-After come back spread over a tenth of it, not in one instant."""
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=5.0, retry_after_max=900.0), uniform=highest)
    assert 100.0 + 100.0 * RETRY_AFTER_SPREAD == backoff.failed(100.0)


def test_a_negative_retry_after_is_no_floor_and_backoff_still_grows() -> None:
    """Retry-After: 0 (or below) leaves the wait to the backoff, which grows as usual."""
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=300.0), uniform=highest)
    assert [1.0, 2.0, 4.0] == [backoff.failed(0.0), backoff.failed(-5.0), backoff.failed(0.0)]


def test_immediate_policy_never_waits() -> None:
    """The zero-wait policy for tests gives 0 s waits, Retry-After or not."""
    backoff = Backoff(BackoffPolicy.immediate())
    assert [0.0, 0.0] == [backoff.failed(), backoff.failed(3600.0)]


def test_many_failures_do_not_overflow() -> None:
    """Thousands of failed passes in a row keep the bound at the cap."""
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=300.0), uniform=highest)
    for _ in range(5000):
        backoff.failed()
    assert 300.0 == backoff.failed()
