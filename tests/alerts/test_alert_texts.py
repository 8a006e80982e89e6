"""Alert texts for people: the exact ntfy messages of an outage and of its recoveries, from the real health machine."""

from __future__ import annotations

from pathlib import Path

from alerts.events import OutageEnded, OutageEvent, OutageStarted
from alerts.health import Health
from alerts.ntfy import render
from tests.alerts.test_health import FakeClock, make_health


def fail_for(
    health: Health, clock: FakeClock, seconds: float, failure: str, backlog_from: int, sink: str = "central"
) -> list[OutageEvent]:
    """Failed deliveries every 10 s for ``seconds``, the backlog growing by one each time; the outage events."""
    events: list[OutageEvent] = []
    for step in range(int(seconds // 10)):
        clock.advance(10)
        found = health.observe_delivery(ok=False, backlog=backlog_from + step, failure=failure, sink=sink)
        events.extend(event for event in found if isinstance(event, OutageStarted | OutageEnded))
    return events


def test_outage_message(tmp_path: Path) -> None:
    """Five minutes without reaching central: the title, and a body that says why in words, with the backlog."""
    clock = FakeClock()
    health = make_health(clock, tmp_path)
    [started] = fail_for(health, clock, 310, "connect", backlog_from=1)
    expected = (
        "ams1: heartbeat delivery outage (central)",
        "high",
        "rotating_light,pop-agent,delivery",
        "POP ams1 has not delivered heartbeats to central for 5m 00s.\n"
        "Cause: central cannot be reached (connect).\n"
        "31 heartbeats held in the spool on the POP; nothing is lost while the spool has room.",
    )
    assert expected == render(started)


def test_recovery_after_a_restart_mid_outage(tmp_path: Path) -> None:
    """Restarted during the outage, the agent still reports its whole length, and that the backlog is on its way."""
    clock = FakeClock()
    before = make_health(clock, tmp_path)
    [started] = fail_for(before, clock, 400, "http_503", backlog_from=1, sink="loki")
    assert "Cause: loki answers HTTP 503 (http_503)." in render(started)[3]
    clock.advance(20)
    clock.reboot()  # a new process: the monotonic clock starts elsewhere, the state comes from alerts.json
    after = make_health(clock, tmp_path)
    clock.advance(10)
    [ended] = after.observe_delivery(ok=True, backlog=40, latency_ms=30.0)
    expected = (
        "ams1: heartbeat delivery to loki recovered",
        "default",
        "white_check_mark,pop-agent,delivery",
        "POP ams1 delivers heartbeats to loki again, after an outage of 7m 00s.\n"
        "40 heartbeats held back during the outage are waiting and being delivered now.",
    )
    assert isinstance(ended, OutageEnded)
    assert expected == render(ended)


def test_recovery_with_the_backlog_drained(tmp_path: Path) -> None:
    """When the first good delivery empties the spool, the message says everything arrived."""
    clock = FakeClock()
    health = make_health(clock, tmp_path)
    fail_for(health, clock, 600, "auth", backlog_from=1)
    clock.advance(10)
    [ended] = health.observe_delivery(ok=True, backlog=0, latency_ms=12.0)
    assert isinstance(ended, OutageEnded)
    expected = (
        "POP ams1 delivers heartbeats to central again, after an outage of 10m 00s.\n"
        "Every heartbeat held back during the outage has been delivered; nothing is waiting."
    )
    assert expected == render(ended)[3]
