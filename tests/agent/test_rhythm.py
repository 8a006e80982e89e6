"""The ticks' rhythm: a random start within an interval, fixed slots after it, overrun slots skipped and logged once."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from agent.service import Rhythm


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_first_tick_starts_within_one_interval_and_the_next_keep_the_slots() -> None:
    """The offset is under the interval (capped at 30 s); a tick that ends in time leaves the next slot as it was."""
    clock = Clock(1000.0)
    rhythm = Rhythm(60.0, clock)
    first = rhythm.next
    clock.now = first + 1.5  # a tick of 1.5 s
    skipped = rhythm.advance(60.0)
    assert (True, 0, 60.0) == (1000.0 <= first <= 1030.0, skipped, pytest.approx(rhythm.next - first))


def test_an_overrun_skips_the_slots_it_ran_past_and_logs_once_per_run_of_them() -> None:
    """A tick of 25 s at 10 s ticks skips two slots; the next overrun in a row is counted but not logged again."""
    clock = Clock(0.0)
    rhythm = Rhythm(10.0, clock)
    start = rhythm.next
    with capture_logs() as logs:
        clock.now = start + 25.0
        first = rhythm.advance(10.0)
        after_first = rhythm.next
        clock.now = after_first + 12.0
        second = rhythm.advance(10.0)
        clock.now = rhythm.next + 1.0  # in time again: the next overrun is news
        calm = rhythm.advance(10.0)
        clock.now = rhythm.next + 11.0
        third = rhythm.advance(10.0)
    assert (2, 30.0, 1, 0, 1) == (first, pytest.approx(after_first - start), second, calm, third)
    assert [2, 1] == [line["skipped"] for line in logs if line["event"] == "tick_overrun"]
