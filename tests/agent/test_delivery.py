"""Delivery bookkeeping: a sink's state across failures and recoveries, and the backlog's second scrub."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from agent import heartbeat
from agent.delivery import RESCRUBBED_MEMORY, BacklogScrubber, SinkState
from agent.sample import Delivery, MetricKind, MetricSpec, Pending, Sample
from tests.heartbeats import make_heartbeat

ALLOWED = {"cpu_percent": MetricSpec("cpu_percent", MetricKind.GAUGE, "CPU.", "%")}


def doc(seq: int, **metrics: float) -> dict[str, Any]:
    return make_heartbeat(seq, [Sample(name, value) for name, value in metrics.items()])


def pending(document: dict[str, Any]) -> Pending:
    return Pending(document["id"], heartbeat.dumps(document))


def test_failures_and_recoveries_are_logged_once_per_transition() -> None:
    """Three failures with one code, then another code, then success twice: one log line per change."""
    state = SinkState()
    with capture_logs() as logs:
        for failure in ("http_503", "http_503", "http_503", "timeout", None, None):
            state.record("central", Delivery(failure=failure), 12.34)
    assert [("delivery_failed", "http_503"), ("delivery_failed", "timeout"), ("delivery_recovered", None)] == [
        (line["event"], line.get("code")) for line in logs
    ]
    assert (0, None, 12.3) == (state.consecutive_failures, state.last_failure, state.last_delivery_ms)
    assert state.last_ack is not None


def test_counts_add_up_over_partial_deliveries() -> None:
    """Acked and rejected heartbeats are counted per sink; rejections are logged by count, never by id."""
    state = SinkState()
    with capture_logs() as logs:
        state.record("loki", Delivery(acked=("a", "b"), rejected={"c": "http_400"}), 1.0)
        state.record("loki", Delivery(acked=("d",)), 1.0)
    assert (3, 1) == (state.acked_total, state.rejected_total)
    assert [{"event": "heartbeats_rejected", "sink": "loki", "count": 1, "log_level": "warning"}] == logs


def test_skipped_heartbeats_are_counted_apart_from_the_acked() -> None:
    """Heartbeats a sink settled without sending (also in acked, for the spool) count as skipped, not as acked."""
    state = SinkState()
    state.record("remote_write", Delivery(acked=frozenset({"a", "b", "c"}), skipped={"a": "too_old"}), 1.0)
    assert (2, 0, 1, None) == (state.acked_total, state.rejected_total, state.skipped_total, state.last_failure)


def test_backlog_below_the_floor_is_scrubbed_again_and_refused_with_a_code() -> None:
    """A foreign heartbeat with an undeclared metric or an address is refused; a clean one passes."""
    clean, undeclared, leaky = doc(1, cpu_percent=5.0), doc(2, cpu_percent=5.0, secret_total=1), doc(3)
    leaky["pop"] = "10.0.0.1"
    garbled = Pending(heartbeat.uuid7(), b"{not json")
    scrubber = BacklogScrubber(ALLOWED)
    scrubber.vouch_above(heartbeat.uuid7())  # everything above was spooled by this process
    passed, refused = scrubber.check([pending(clean), pending(undeclared), pending(leaky), garbled])
    assert [clean["id"]] == [p.id for p in passed]
    assert {undeclared["id"], leaky["id"], garbled.id} == set(refused)
    assert refused[garbled.id] == "unparseable"
    assert all(code.startswith("scrub_") for key, code in refused.items() if key != garbled.id)


def test_own_heartbeats_pass_without_a_second_scrub_and_nothing_is_trusted_before_start() -> None:
    """Ids above the floor pass as they are; before the floor is set, every heartbeat is scrubbed."""
    scrubber = BacklogScrubber(ALLOWED)
    own = doc(1, cpu_percent=5.0, undeclared_metric=1)  # would be refused if scrubbed
    passed, refused = scrubber.check([pending(own)])
    assert ([], [own["id"]]) == ([p.id for p in passed], list(refused))
    scrubber.vouch_above(heartbeat.uuid7(0))
    assert [own["id"]] == [p.id for p in scrubber.check([pending(own)])[0]]


def test_remembered_rescrubs_are_bounded() -> None:
    """A long backlog does not grow the memory of re-scrubbed ids past its bound."""
    scrubber = BacklogScrubber(ALLOWED)
    scrubber.vouch_above(heartbeat.uuid7())
    backlog = [pending(doc(seq, cpu_percent=1.0)) for seq in range(RESCRUBBED_MEMORY + 10)]
    assert len(backlog) == len(scrubber.check(backlog)[0])
    assert len(scrubber._rescrubbed) <= RESCRUBBED_MEMORY
