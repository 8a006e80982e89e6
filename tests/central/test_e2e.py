"""End to end: three real agent daemons feed a real central, and central's dashboards and rules work on it.

For each path into central (the remote-write sink into VictoriaMetrics single
node, the remote-write sink into Prometheus 2.42's receiver, and the Pushgateway
sink into a Pushgateway that Prometheus scrapes), three daemons with distinct POP
ids deliver their heartbeats. Every query of every dashboard panel, run through
the engine's query API, returns a series for each POP. Prometheus, or vmalert
for VictoriaMetrics, runs the shipped rules (their minutes turned into seconds):
once one agent stops, the silent-POP alert goes pending, then firing, for that
POP only; vmalert's notification reaches a stand-in for Alertmanager.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.central.engines import (
    PROMETHEUS,
    RULE_FILES,
    VICTORIA_METRICS,
    VMALERT,
    alerts,
    concrete,
    flushing,
    label_values,
    missing,
    panel_queries,
    prometheus,
    series_over,
    vector,
    victoria_metrics,
    vmalert,
)
from tests.integration.daemon import Daemon
from tests.sinks.realprocs import PUSHGATEWAY, pushgateway

pytestmark = pytest.mark.slow

POPS = ("pop-a", "pop-b", "pop-c")
INTERVAL = "0.5"
# Grafana's $__rate_interval for a 0.5 s heartbeat: many samples per window.
RATE_INTERVAL = "10s"
# The shipped PopSilent threshold (300 s) becomes this in the shortened copy.
SILENT_AFTER = "10"
# Documentation addresses (RFC 5737), for the access logs the requests collector reads.
CLIENTS = [f"203.0.113.{host}" for host in range(1, 40)]


def shortened_rules(directory: Path) -> list[Path]:
    """Copies of the shipped rule files whose minutes are seconds, so that an alert fires within the test.

    ``for: 5m`` becomes ``for: 5s``, a ``[15m]`` range ``[15s]``, and PopSilent's
    300-second threshold 10 seconds; hours and days stay as they are.
    """
    copies = []
    for path in RULE_FILES:
        text = path.read_text()
        if path.name == "alerts.yaml":
            threshold = "pop:pop_agent_heartbeat_age_seconds[15m]) >= 300"
            assert threshold in text
            text = text.replace(threshold, f"pop:pop_agent_heartbeat_age_seconds[15m]) >= {SILENT_AFTER}")
        text = re.sub(r"for: (\d+)m\b", r"for: \1s", text)
        text = re.sub(r"\[(\d+)m\]", r"[\1s]", text)
        copy = directory / path.name
        copy.write_text(text)
        copies.append(copy)
    return copies


@dataclass
class Central:
    """Where the daemons deliver, where the dashboards query, and what runs the rules."""

    path: str
    query_base: str
    sink_env: dict[str, str]
    rules_base: str  # Prometheus or vmalert: its /api/v1/alerts
    notified: list[dict[str, Any]] = field(default_factory=list)  # what vmalert sent to "Alertmanager"


async def alertmanager(aiohttp_server: Any, notified: list[dict[str, Any]]) -> str:
    """A stand-in for Alertmanager's API that keeps every alert posted to it; its base URL."""

    async def receive(request: web.Request) -> web.Response:
        notified.extend(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/api/v2/alerts", receive)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture(params=[VICTORIA_METRICS, PROMETHEUS, PUSHGATEWAY])
async def central(request: pytest.FixtureRequest, tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Central]:
    """A fresh central running the shortened rules every second, fed by one of three paths.

    VictoriaMetrics by remote write, with vmalert; Prometheus by remote write;
    or a Pushgateway that Prometheus scrapes.
    """
    path = request.param
    needed = {
        VICTORIA_METRICS: [VICTORIA_METRICS, VMALERT],
        PROMETHEUS: [PROMETHEUS],
        PUSHGATEWAY: [PUSHGATEWAY, PROMETHEUS],
    }
    absent = missing(*needed[path])
    if absent:
        pytest.skip(f"{' and '.join(absent)} not installed (.ci/run installs Debian's packages)")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rule_files = shortened_rules(rules_dir)
    if path == VICTORIA_METRICS:
        notified: list[dict[str, Any]] = []
        notifier = await alertmanager(aiohttp_server, notified)
        with (
            victoria_metrics() as base,
            flushing(base),
            vmalert(base, rule_files=rule_files, notifier=notifier) as rules_base,
        ):
            sink = {"POP_AGENT_SINKS__REMOTE_WRITE__URL": base + "/api/v1/write"}
            yield Central(path, base, sink, rules_base, notified)
    elif path == PROMETHEUS:
        with prometheus(rule_files=rule_files, interval="1s") as base:
            yield Central(path, base, {"POP_AGENT_SINKS__REMOTE_WRITE__URL": base + "/api/v1/write"}, base)
    else:
        with (
            pushgateway() as gateway,
            prometheus(rule_files=rule_files, scrape_targets=[gateway.removeprefix("http://")], interval="1s") as base,
        ):
            yield Central(path, base, {"POP_AGENT_SINKS__PUSHGATEWAY__URL": gateway}, base)


def access_lines(count: int, first: int) -> bytes:
    """``count`` combined-format access log lines stamped now, with a mix of status classes."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    statuses = (200, 200, 200, 302, 404, 503)
    lines = []
    for index in range(first, first + count):
        client, status = CLIENTS[index % len(CLIENTS)], statuses[index % len(statuses)]
        lines.append(f'{client} - - [{stamp}] "GET /v HTTP/1.1" {status} 512 "-" "probe"\n')
    return "".join(lines).encode()


async def write_traffic(logs: Sequence[Path], stop: asyncio.Event) -> None:
    """Append a few requests to every POP's access log each half second until ``stop``."""
    written = 0
    while not stop.is_set():
        for log in logs:
            with log.open("ab") as handle:
                handle.write(access_lines(12, written))
        written += 12
        await asyncio.sleep(0.5)


@pytest.fixture
async def fleet(central: Central, tmp_path: Path) -> AsyncIterator[dict[str, Daemon]]:
    """Three running daemons delivering to central, with access logs growing and vault stores to count."""
    daemons: dict[str, Daemon] = {}
    logs = []
    for pop in POPS:
        home = tmp_path / pop
        vaults = home / "vaults"
        vaults.mkdir(parents=True)
        for index in range(3 + len(daemons)):
            (vaults / f"vault-{index}.db").touch()
        log = home / "access.log"
        log.write_bytes(access_lines(20, 0))
        logs.append(log)
        daemons[pop] = Daemon(
            home,
            POP_AGENT_POP_ID=pop,
            POP_AGENT_TELEMETRY="on",
            POP_AGENT_INTERVAL=INTERVAL,
            POP_AGENT_SHUTDOWN_DEADLINE="2",
            **central.sink_env,
            POP_AGENT_COLLECTORS__REQUESTS__ACCESS_LOG=str(log),
            POP_AGENT_COLLECTORS__VAULTS__PATH=str(vaults),
            POP_AGENT_COLLECTORS__VAULTS__GLOB="*.db",
        )
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        for daemon in daemons.values():
            await daemon.start()
            stack.push_async_callback(daemon.stop)
        writer = asyncio.create_task(write_traffic(logs, stop))
        try:
            yield daemons
        finally:
            stop.set()
            await writer


async def eventually(fetch: Callable[[], Any], until: Callable[[Any], bool], timeout: float) -> Any:
    """Call ``fetch()`` every 0.2 s until ``until(value)`` or ``timeout`` seconds; the last value."""
    give_up = time.monotonic() + timeout
    value = fetch()
    while not until(value) and time.monotonic() < give_up:
        await asyncio.sleep(0.2)
        value = fetch()
    return value


def pops_missing_per_query(base: str) -> list[tuple[str, str, list[str]]]:
    """``(panel, query, POPs without a series)`` for every dashboard query that misses a POP.

    Each query runs as an instant query (a table cell, a stat), and a time-series
    panel's also as a range query over the last 20 seconds, as Grafana draws it.
    """
    misses = []
    ranged = set(panel_queries(range_only=True))
    for dashboard, title, expr in panel_queries():
        concrete_expr = concrete(expr, POPS, RATE_INTERVAL)
        answers = [vector(base, concrete_expr)]
        if (dashboard, title, expr) in ranged:
            answers.append(series_over(base, concrete_expr, seconds=20))
        for answer in answers:
            found = {sample["metric"].get("pop") for sample in answer}
            absent = [pop for pop in POPS if pop not in found]
            if absent:
                misses.append((f"{dashboard}: {title}", expr, absent))
    return misses


async def test_every_dashboard_query_returns_each_pop_and_a_silent_pop_fires(
    central: Central, fleet: dict[str, Daemon]
) -> None:
    """Each panel query has a series per POP; a stopped POP's PopSilent goes pending, then firing, and only its."""
    base = central.query_base
    # A rate needs two samples in its window: wait for a few heartbeats of every POP (a minute at most).
    misses = await eventually(lambda: pops_missing_per_query(base), lambda found: found == [], timeout=60)
    assert [] == misses
    selector = 'pop_agent_last_heartbeat_timestamp_seconds{job="pop_agent"}'
    assert set(POPS) <= set(label_values(base, "pop", selector))
    for pop in POPS:
        assert [] == [log for log in fleet[pop].logs() if log.get("level") in {"error", "critical"}]
    assert 0 == await fleet["pop-c"].stop()
    states: list[str] = []

    def silent_state() -> str | None:
        found = [alert for alert in alerts(central.rules_base) if alert["labels"]["alertname"] == "PopSilent"]
        assert [] == [alert["labels"] for alert in found if alert["labels"]["pop"] != "pop-c"]
        state = found[0]["state"] if found else None
        if state is not None and (not states or states[-1] != state):
            states.append(state)
        return state

    # Silent at 10 s of heartbeat age, firing 5 s later; one-second evaluations: under a minute.
    await eventually(silent_state, lambda state: state == "firing", timeout=60)
    assert ["pending", "firing"] == states
    ages = {
        sample["metric"]["pop"]: float(sample["value"][1])
        for sample in vector(base, "pop:pop_agent_heartbeat_age_seconds")
    }
    assert ages["pop-c"] >= float(SILENT_AFTER)
    assert max(ages["pop-a"], ages["pop-b"]) < float(SILENT_AFTER)
    if central.path == VICTORIA_METRICS:
        sent = await eventually(
            lambda: [alert["labels"] for alert in central.notified if alert["labels"]["alertname"] == "PopSilent"],
            lambda found: bool(found),
            timeout=10,
        )
        assert {"pop-c"} == {labels["pop"] for labels in sent}
