"""The shared mapping's time handling: RFC 3339 UTC times to nanoseconds, and the heartbeat-time series' value."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.series import LAST_HEARTBEAT, heartbeat_seconds, samples, timestamp_ns

moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31))


@settings(max_examples=300)
@given(moments, st.integers(0, 9), st.sampled_from(["Z", "+00:00", "-00:00"]))
def test_a_utc_time_becomes_its_exact_nanoseconds(moment: datetime, digits: int, zone: str) -> None:
    """Any RFC 3339 UTC time, with 0 to 9 fraction digits and any UTC suffix, gives its nanoseconds exactly."""
    fraction = f"{moment.microsecond:06d}000"[:digits]
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + zone
    whole = int(moment.replace(microsecond=0, tzinfo=UTC).timestamp())

    assert whole * 1_000_000_000 + int(fraction.ljust(9, "0")) == timestamp_ns(text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-12-00T00:00:00Z",
        "2026-12-32T00:00:00Z",
        "2026-12-06T24:00:00Z",
        "2026-12-06T23:60:00Z",
        "2026-12-06T23:59:61Z",
        "2026-12-06T23:59:59+01:00",
        "2026-12-06 23:59:59Z",
        "2026-12-06T23:59:59.1234567890Z",
        "",
    ],
)
def test_a_time_out_of_range_or_not_utc_is_refused(text: str) -> None:
    """Fields out of range, another offset than UTC, or another layout: ValueError."""
    with pytest.raises(ValueError, match="timestamp"):
        timestamp_ns(text)


def test_a_leap_second_and_a_31st_of_february_count_on_as_calendar_timegm_does() -> None:
    """Second 60 and day 31 of any month are accepted and counted on from the day's start, as before."""
    assert timestamp_ns("2026-03-03T00:00:00Z") == timestamp_ns("2026-02-31T00:00:00Z")
    assert timestamp_ns("2026-12-07T00:00:00Z") == timestamp_ns("2026-12-06T23:59:60Z")


def test_the_heartbeat_time_series_holds_the_time_in_seconds_without_float_noise() -> None:
    """The heartbeat-time series is the heartbeat's ts in Unix seconds, the same number samples() gives."""
    ts = "2026-11-22T07:00:00.123Z"

    assert 1795330800.123 == heartbeat_seconds(timestamp_ns(ts))
    assert heartbeat_seconds(timestamp_ns(ts)) == samples({"ts": ts})[(LAST_HEARTBEAT, ())]
