"""The dashboard path, real end to end: sink -> Pushgateway -> Prometheus scrape -> PromQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agent.deadline import Deadline
from sinks.pushgateway import PushgatewaySink
from sinks.pushgateway_settings import PushgatewaySinkSettings
from tests.sinks.realprocs import PROMETHEUS, PUSHGATEWAY, binary, heartbeat, poll, prometheus, promql, pushgateway

pytestmark = pytest.mark.slow


@pytest.fixture
def stack() -> Iterator[tuple[str, str]]:
    """A real Pushgateway and a real Prometheus scraping it every second; their base URLs."""
    missing = [name for name in (PUSHGATEWAY, PROMETHEUS) if binary(name) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (.ci/run installs Debian's packages)")
    with pushgateway() as gateway, prometheus([gateway.removeprefix("http://")]) as server:
        yield gateway, server


async def test_promql_returns_the_pops_cpu_percent_and_flags_a_silent_pop(stack: tuple[str, str]) -> None:
    """Prometheus scrapes what the sink pushed: cpu_percent by POP, and the staleness query finds the silent POP."""
    gateway, server = stack
    sink = PushgatewaySink(PushgatewaySinkSettings(url=gateway))
    now = time.time()
    live = heartbeat("ams1", seq=2, ts=now, metrics={"cpu_percent": 37.5, "requests_total": 4200})
    silent = heartbeat("fra1", seq=9, ts=now - 900, metrics={"cpu_percent": 3.0, "requests_total": 10})
    try:
        delivery = await sink.send([silent, live], Deadline(30))
    finally:
        await sink.aclose()
    assert {live.id, silent.id} == delivery.acked

    # Bounded wait for Prometheus to start scraping: at most 30 s, usually a couple.
    result = poll(lambda: promql(server, 'cpu_percent{job="pop_agent"}'), until=lambda r: len(r) == 2)

    by_pop = {sample["metric"]["pop"]: (sample["metric"]["job"], float(sample["value"][1])) for sample in result}
    assert by_pop == {"ams1": ("pop_agent", 37.5), "fra1": ("pop_agent", 3.0)}
    stale = promql(server, "time() - pop_agent_last_heartbeat_timestamp_seconds > 300")
    assert [sample["metric"]["pop"] for sample in stale] == ["fra1"]
    counter = promql(server, 'requests_total{pop="ams1"}')
    assert [float(sample["value"][1]) for sample in counter] == [4200.0]
