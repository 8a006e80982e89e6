"""Remote write into the real engines: VictoriaMetrics and Prometheus 2.42, from Debian's packages.

Each test starts its own engine on a free loopback port with its own storage,
sends heartbeats through the real sink (or the real daemon), and reads them back
through the engine's HTTP API: values, labels and timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.deadline import Deadline
from sinks.remote_write import RemoteWriteSink
from sinks.remote_write_settings import RemoteWriteSinkSettings
from sinks.series import timestamp_ms
from tests.integration.daemon import wait_for
from tests.sinks.realprocs import (
    PROMETHEUS,
    VICTORIA_METRICS,
    binary,
    export,
    flush,
    heartbeat,
    poll,
    prometheus_receiver,
    promql,
    victoria_metrics,
)
from tests.sinks.rwdaemon import POP, minutes_back, rw_daemon, sink_status, spool_backlog

pytestmark = pytest.mark.slow


def _need(name: str) -> None:
    if binary(name) is None:
        pytest.skip(f"{name} not installed (.ci/run installs Debian's package)")


@pytest.fixture
def vm() -> Iterator[str]:
    """A fresh VictoriaMetrics; its base URL."""
    _need(VICTORIA_METRICS)
    with victoria_metrics() as base:
        yield base


@pytest.fixture
def prom() -> Iterator[str]:
    """A fresh Prometheus taking remote write; its base URL."""
    _need(PROMETHEUS)
    with prometheus_receiver() as base:
        yield base


def flushed_export(base: str, match: str) -> list[dict[str, Any]]:
    """VictoriaMetrics' samples of ``match`` after a flush."""
    flush(base)
    return export(base, match)


async def send(base: str, batch: list[Any], **settings: Any) -> Any:
    """Send ``batch`` through a real sink to ``base``'s write endpoint; the Delivery."""
    sink = RemoteWriteSink(RemoteWriteSinkSettings(url=base + "/api/v1/write", **settings))
    try:
        return await sink.send(batch, Deadline(60))
    finally:
        await sink.aclose()


def fleet(now: float) -> list[Any]:
    """Five heartbeats a minute apart from each of two POPs, with distinct values."""
    return [
        heartbeat(pop, seq=i, ts=now - 300 + 60 * i, metrics={"cpu_percent": base + i, "requests_total": 1000 + i})
        for pop, base in (("ams1", 10.0), ("fra1", 50.0))
        for i in range(5)
    ]


async def test_victoria_metrics_stores_values_labels_and_timestamps(vm: str) -> None:
    """Every sample is in VictoriaMetrics at its heartbeat's time in ms, with job, pop and the heartbeat's labels."""
    batch = fleet(time.time())

    delivery = await send(vm, batch)
    poll(lambda: flushed_export(vm, "cpu_percent"), until=lambda rows: sum(len(r["values"]) for r in rows) == 10)

    assert ({item.id for item in batch}, {}) == (delivery.acked, delivery.rejected)
    cpu = {row["metric"]["pop"]: (row["metric"], row["timestamps"], row["values"]) for row in export(vm, "cpu_percent")}
    for pop, base in (("ams1", 10.0), ("fra1", 50.0)):
        items = [item for item in batch if item.doc["pop"] == pop]
        expected = ({"__name__": "cpu_percent", "job": "pop_agent", "pop": pop}, [timestamp_ms(i.doc) for i in items])
        assert expected == cpu[pop][:2]
        assert [base + i for i in range(5)] == cpu[pop][2]
    disk = export(vm, 'disk_used_percent{mount="/"}')
    assert [("ams1", 5), ("fra1", 5)] == sorted((row["metric"]["pop"], len(row["values"])) for row in disk)
    info = export(vm, "pop_agent_info")
    assert {("0.1.0", "community")} == {(r["metric"]["agent_version"], r["metric"]["edition"]) for r in info}
    last = {row["metric"]["pop"]: row for row in export(vm, "pop_agent_last_heartbeat_timestamp_seconds")}
    assert [ts / 1000 for ts in last["ams1"]["timestamps"]] == last["ams1"]["values"]


async def test_prometheus_stores_values_labels_and_timestamps(prom: str) -> None:
    """Prometheus 2.42's receiver stores every sample at its heartbeat's time, queryable by job and pop."""
    batch = fleet(time.time())

    delivery = await send(prom, batch)

    assert ({item.id for item in batch}, {}) == (delivery.acked, delivery.rejected)
    result = promql(prom, 'cpu_percent{job="pop_agent"}[10m]')
    got = {row["metric"]["pop"]: [(round(float(t) * 1000), float(v)) for t, v in row["values"]] for row in result}
    for pop, base in (("ams1", 10.0), ("fra1", 50.0)):
        items = [item for item in batch if item.doc["pop"] == pop]
        assert [(timestamp_ms(item.doc), base + i) for i, item in enumerate(items)] == got[pop]
    up = promql(prom, 'pop_agent_collector_up{pop="ams1"}')
    assert {("cpu", "1"), ("disk", "1")} == {(row["metric"]["collector"], row["value"][1]) for row in up}


async def test_prometheus_2_42_refuses_samples_older_than_its_head_and_the_sink_carries_on(prom: str) -> None:
    """Against a Prometheus already holding fresh data, a 2 h backlog delivers its last hour, settles the rest, then
    fresh heartbeats go."""
    now = time.time()
    assert (await send(prom, [heartbeat("other", ts=now)])).failure is None
    backlog = [heartbeat("ams1", seq=i, ts=now - 7200 + 300 * i) for i in range(24)]

    first = await send(prom, backlog, max_sample_age=86_400)
    fresh = await send(prom, [heartbeat("ams1", seq=99, ts=time.time())], max_sample_age=86_400)

    young = {item.id for item in backlog if item.doc and timestamp_ms(item.doc) > (now - 3300) * 1000}
    old = {item.id for item in backlog if timestamp_ms(item.doc) < (now - 3900) * 1000}
    assert (set(), set()) == (young - first.acked, old - set(first.rejected))
    assert {"too_old"} == set(first.rejected.values())
    assert (None, None, {}) == (first.failure, fresh.failure, fresh.rejected)
    stored = promql(prom, 'count_over_time(cpu_percent{pop="ams1"}[3h])')
    assert [len(first.acked) + 1] == [int(row["value"][1]) for row in stored]


async def test_prometheus_2_42_with_an_out_of_order_window_answers_500_and_the_sink_still_settles() -> None:
    """With an out-of-order window, Prometheus 2.42 answers 500 "too old sample": settled, never retried forever."""
    _need(PROMETHEUS)
    with prometheus_receiver(out_of_order_window="10m") as base:
        now = time.time()
        assert (await send(base, [heartbeat("other", ts=now)])).failure is None
        backlog = [heartbeat("ams1", seq=i, ts=now - 3 * 3600 + 600 * i) for i in range(18)]

        delivery = await send(base, backlog, max_sample_age=86_400)

        young = {item.id for item in backlog if timestamp_ms(item.doc) > (now - 3300) * 1000}
        assert None is delivery.failure
        assert set() == young - delivery.acked
        assert {"too_old"} == set(delivery.rejected.values())
        assert {item.id for item in backlog} == delivery.acked | set(delivery.rejected)


async def test_daemon_replays_a_3_hour_backlog_into_victoria_metrics_at_the_true_times(vm: str, tmp_path: Path) -> None:
    """Heartbeats spooled over 3 h while the receiver was away all reach VictoriaMetrics at their own ts."""
    daemon = rw_daemon(tmp_path, vm + "/api/v1/write", POP_AGENT_SINKS__REMOTE_WRITE__MAX_SAMPLE_AGE="86400")
    backlog = spool_backlog(daemon, minutes_back(180, every=30))

    await daemon.start()
    try:
        await wait_for(lambda: sink_status(daemon).get("acked_total", 0) >= len(backlog) + 3, timeout=60)
    finally:
        assert 0 == await daemon.stop()

    # Rows just taken in become searchable within a second or so, even with a flush.
    (series,) = poll(
        lambda: flushed_export(vm, f'pop_agent_last_heartbeat_timestamp_seconds{{pop="{POP}"}}'),
        until=lambda rows: len(rows) == 1 and len(rows[0]["timestamps"]) > len(backlog),
    )
    stored = dict(zip(series["timestamps"], series["values"], strict=True))
    expected = {timestamp_ms(doc): timestamp_ms(doc) / 1000 for doc in backlog}
    assert expected == {ts: stored.get(ts) for ts in expected}
    assert len(stored) > len(backlog)  # and the daemon's own fresh heartbeats after them
    (cpu,) = flushed_export(vm, f'cpu_percent{{pop="{POP}"}}')
    assert [float(doc["metrics"]["cpu_percent"]) for doc in backlog] == cpu["values"][: len(backlog)]


async def test_daemon_against_prometheus_2_42_delivers_what_it_takes_then_carries_on(prom: str, tmp_path: Path) -> None:
    """A 3 h backlog into a Prometheus holding fresh data: the last hour is stored, the rest settled, the spool
    empties and fresh heartbeats keep arriving: no retry forever, no wedged cursor."""
    assert (await send(prom, [heartbeat("other", ts=time.time())])).failure is None
    daemon = rw_daemon(tmp_path, prom + "/api/v1/write", POP_AGENT_SINKS__REMOTE_WRITE__MAX_SAMPLE_AGE="86400")
    backlog = spool_backlog(daemon, minutes_back(180))

    await daemon.start()
    try:
        await wait_for(lambda: sink_status(daemon).get("acked_total", 0) >= 60 + 10, timeout=90)
        status = sink_status(daemon)
        await wait_for(lambda: len(daemon.pending()) <= 5, timeout=30)
    finally:
        assert 0 == await daemon.stop()

    started = time.time()
    rows = promql(prom, f'cpu_percent{{pop="{POP}"}}[4h]')
    stored = {round(float(t) * 1000) for row in rows for t, _ in row["values"]}
    young = {timestamp_ms(doc) for doc in backlog if timestamp_ms(doc) > (started - 3000) * 1000}
    old = {timestamp_ms(doc) for doc in backlog if timestamp_ms(doc) < (started - 4200) * 1000}
    assert (set(), set()) == (young - stored, old & stored)
    assert max(stored) > max(timestamp_ms(doc) for doc in backlog)  # fresh heartbeats after the backlog
    assert status["rejected_total"] >= len(old)
    assert None is sink_status(daemon).get("last_failure")
