"""Remote-write bodies with many samples per series decode back, by protobuf and by `agent sent --verify`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.body_decoders import decode_remote_write
from sinks.prompb import labels_field, sample_field, timeseries_field, timestamp_tail, varint
from sinks.remote_write_body import COLUMNAR_MIN, BodyEncoder, Preparer
from tests.sinks.realprocs import heartbeat
from tests.sinks.rwdecode import decode_body, decode_protobuf

# 2001-09-09 is where a millisecond timestamp grows from 6 varint bytes to 7 (2**41 ms).
WIDTH_CHANGE = 2**41 / 1000


@pytest.mark.parametrize("count", [1, COLUMNAR_MIN - 1, COLUMNAR_MIN, 120])
@pytest.mark.parametrize("start", [1_790_000_000.0, WIDTH_CHANGE - 25.0])
def test_each_series_carries_every_heartbeats_sample_oldest_first(count: int, start: float) -> None:
    """One TimeSeries per series, with one sample per heartbeat at its own time, whatever the run's length."""
    items = [
        heartbeat("ams1", seq=i, ts=start + 10 * i, metrics={"cpu_percent": i + 0.25, "requests_total": 3 * i})
        for i in range(count)
    ]
    preparer = Preparer()
    body = BodyEncoder("pop_agent").encode([preparer.prepare(item) for item in items])

    decoded = decode_body(body)
    stamps = [round((start + 10 * i) * 1000) for i in range(count)]
    by_name = {labels["__name__"]: samples for labels, samples in decoded if "mount" not in labels}
    assert list(zip(stamps, [i + 0.25 for i in range(count)], strict=True)) == by_name["cpu_percent"]
    assert list(zip(stamps, [3.0 * i for i in range(count)], strict=True)) == by_name["requests_total"]
    assert len(decoded) == len({tuple(sorted(labels.items())) for labels, _ in decoded})
    assert all([ts for ts, _ in samples] == stamps for _, samples in decoded)
    assert count == decode_remote_write(body).heartbeats
    assert {"ams1", "cpu_percent", "pop_agent"} <= set(decode_remote_write(body).texts)


def test_verify_counts_every_heartbeat_of_a_request_across_pops_and_changing_series() -> None:
    """Three POPs, and a series set that changes from one heartbeat to the next: every heartbeat is counted once."""
    items = [
        heartbeat(
            pop, seq=i, ts=1_790_000_000.0 + 10 * i, metrics={"cpu_percent": 1.0, **({"load1": 0.5} if i % 2 else {})}
        )
        for pop in ("ams1", "fra1", "lis1")
        for i in range(2)
    ]
    preparer = Preparer()
    body = BodyEncoder("pop_agent").encode([preparer.prepare(item) for item in items])
    assert 6 == decode_remote_write(body).heartbeats


def test_the_message_helpers_write_what_protobuf_reads() -> None:
    """Labels, samples with negative and wide timestamps, and a series of them, as the protobuf runtime reads them."""
    labels = labels_field((("__name__", "up"), ("pop", "ams1")))
    samples = [sample_field(value, timestamp_tail(ts)) for value, ts in ((1.5, -1), (2.0, 0), (-0.0, 2**62))]
    request = timeseries_field(labels, samples) * 2  # a WriteRequest is its repeated timeseries fields

    assert 2 * [({"__name__": "up", "pop": "ams1"}, [(-1, 1.5), (0, 2.0), (2**62, -0.0)])] == decode_protobuf(request)


def test_varints_are_protobufs_own() -> None:
    """Varints as the protobuf encoding guide writes them; a negative int64 as ten bytes of two's complement."""
    assert [b"\x00", b"\x96\x01", b"\xff" * 9 + b"\x01"] == [varint(0), varint(150), varint(-1)]


@given(st.integers(-(2**63), 2**63 - 1))
def test_a_samples_timestamp_field_is_field_2_and_the_varint_of_its_milliseconds(ms: int) -> None:
    """Any int64 time: key 0x10, then the varint; the shortcut through the shared high groups changes nothing."""
    assert b"\x10" + varint(ms) == timestamp_tail(ms)
