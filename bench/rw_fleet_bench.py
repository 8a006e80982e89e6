"""Fleet ingest: 1,000 then 5,000 simulated POPs into central, by remote write and by the Pushgateway, as JSON.

Each POP sends real heartbeat documents (distinct pop ids, every built-in
collector's metrics) through the real sink code, one request per POP per tick, 64
at a time, at a 10 s cadence compressed in time: a few fleet-wide ticks back to
back, each stamped 10 s after the last.

- ``remote_write``: ``RemoteWriteSink`` into a fresh VictoriaMetrics (Debian's
  ``victoria-metrics``). Central's cost: the VictoriaMetrics process.
- ``pushgateway`` (the baseline): ``PushgatewaySink`` into a fresh Pushgateway,
  scraped by a fresh Prometheus (``honor_labels``). Central's cost: the Pushgateway
  during the pushes, plus one Prometheus scrape per tick (Prometheus' CPU over the
  window divided by the scrapes it made, since compressed ticks would otherwise be
  charged several scrapes each).

The Pushgateway checks every push against every group it holds, so its cost per
push grows with the fleet: each path gets ``--budget`` seconds of pushing per size,
requests not started by then are not sent, and a tick cut short has no wall time
(``complete_ticks`` says how many finished). CPU is then per heartbeat taken in.

Per path and size: central's CPU-seconds per POP per tick and RSS per POP (the
growth over the idle process, and the total), the wall time of one fleet-wide tick
(median), and the fleet-overview queries' latency through the engine's
``/api/v1/query`` (median of 5 runs each; the overview's panels, as PromQL), and of the whole overview
(every panel's query at once, as a dashboard loads; median of 5). Since one Python
process simulates the whole fleet, a tick's wall time is bound by the simulator;
``central_cpu_s_per_fleet_tick`` is what central itself spends on one.

    .venv/bin/python bench/rw_fleet_bench.py [--pops 1000 5000] [--ticks 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.deadline import Deadline
from agent.sample import Pending
from bench.fleet import cpu_seconds, heartbeat_doc, pending, pid_listening_on, rss_mib
from sinks.http import make_session
from sinks.pushgateway import PushgatewaySink
from sinks.pushgateway_settings import PushgatewaySinkSettings
from sinks.remote_write import RemoteWriteSink
from sinks.remote_write_settings import RemoteWriteSinkSettings
from tests.sinks.realprocs import flush, get_text, prometheus, pushgateway, victoria_metrics

CONCURRENCY = 64
SCRAPE_INTERVAL = 2.0
QUERIES = {
    "heartbeat_age": "time() - max by (pop) (pop_agent_last_heartbeat_timestamp_seconds)",
    "cpu": "max by (pop) (cpu_percent)",
    "memory": "max by (pop) (mem_used_percent)",
    "fullest_disk": "max by (pop) (disk_used_percent)",
    "request_rate": "sum by (pop) (rate(requests_total[2m]))",
    "unique_ips": "max by (pop) (unique_ips_1h)",
    "spool_backlog": "max by (pop) (spool_pending)",
    "delivery_failures": "max by (pop) (delivery_failures_consecutive)",
    "scrub_rejections": "sum by (pop) (increase(scrub_rejected_total[2m]))",
}


def fleet_ticks(pops: int, ticks: int) -> list[list[Pending]]:
    """Per tick, one heartbeat per POP; the last tick 5 s ago, each 10 s after the one before."""
    rand = random.Random(pops)
    start = time.time() - 5 - 10 * ticks
    return [
        [pending(heartbeat_doc(f"pop{number:05d}", tick, start + 10 * tick, rand)) for number in range(pops)]
        for tick in range(ticks)
    ]


async def push_tick(sink: Any, beats: list[Pending], give_up: float) -> tuple[float, int]:
    """Send one fleet-wide tick, one request per POP, ``CONCURRENCY`` at a time; its wall seconds and POPs sent.

    No request starts after ``give_up`` (``time.monotonic()``): the tick is then incomplete.
    """
    gate = asyncio.Semaphore(CONCURRENCY)
    sent = 0

    async def one(item: Pending) -> None:
        nonlocal sent
        async with gate:
            if time.monotonic() > give_up:
                return
            delivery = await sink.send([item], Deadline(120))
            if delivery.failure is not None or delivery.rejected:
                raise RuntimeError(f"delivery failed: {delivery.failure} {set(delivery.rejected.values())}")
            sent += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(item) for item in beats))
    return time.perf_counter() - started, sent


def instant(base: str, query: str) -> int:
    """Run one instant query; how many series it answered."""
    answer = json.loads(get_text(base + "/api/v1/query?" + urllib.parse.urlencode({"query": query})))
    return len(answer["data"]["result"])


def query_latency(base: str) -> dict[str, Any]:
    """Median ms of each overview query over 5 runs, how many POPs each answered for, and the whole overview.

    The whole overview is every query at once, as a dashboard asks for its panels
    (median of 5), so its time is what loading the overview takes.
    """
    out: dict[str, Any] = {}
    for name, query in QUERIES.items():
        runs, series = [], 0
        for _ in range(5):
            started = time.perf_counter()
            series = instant(base, query)
            runs.append((time.perf_counter() - started) * 1000)
        out[name] = {"ms": round(statistics.median(runs), 1), "pops": series}
    whole = []
    with ThreadPoolExecutor(max_workers=len(QUERIES)) as pool:
        for _ in range(5):
            started = time.perf_counter()
            list(pool.map(lambda query: instant(base, query), QUERIES.values()))
            whole.append((time.perf_counter() - started) * 1000)
    return {"per_query": out, "overview_ms": round(statistics.median(whole), 1)}


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def measure(
    make_sink: Callable[[Any], Any], ticks: list[list[Pending]], pids: list[int], budget: float
) -> tuple[list[float], int, float, float, float]:
    """Push every tick within ``budget`` seconds; tick wall times, heartbeats sent, central CPU-s, RSS before/after."""
    session = make_session(connect_timeout=5, read_timeout=60, limit=CONCURRENCY)
    sink = make_sink(session)
    await asyncio.sleep(2)  # let the engine settle after start-up
    rss_before = sum(rss_mib(pid) for pid in pids)
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    give_up = time.monotonic() + budget
    walls, sent = [], 0
    try:
        for beats in ticks:
            wall, done = await push_tick(sink, beats, give_up)
            sent += done
            if done < len(beats):
                break  # out of time: an incomplete tick has no wall time
            walls.append(wall)
    finally:
        await sink.aclose()
        await session.close()
    await asyncio.sleep(1)
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    return walls, sent, cpu, rss_before, sum(rss_mib(pid) for pid in pids)


async def remote_write(pops: int, ticks: list[list[Pending]], budget: float) -> dict[str, Any]:
    with victoria_metrics() as base:
        pid = pid_listening_on(port_of(base))
        cfg = RemoteWriteSinkSettings(url=base + "/api/v1/write")
        walls, sent, cpu, rss0, rss1 = await measure(
            lambda session: RemoteWriteSink(cfg, session=session), ticks, [pid], budget
        )
        flush(base)
        await asyncio.sleep(1)
        latency = query_latency(base)
    return summary(pops, sent, walls, cpu, rss0, rss1, latency)


async def via_pushgateway(pops: int, ticks: list[list[Pending]], budget: float) -> dict[str, Any]:
    with pushgateway() as gateway, prometheus([gateway.removeprefix("http://")], scrape_interval="2s") as server:
        gateway_pid, prometheus_pid = pid_listening_on(port_of(gateway)), pid_listening_on(port_of(server))
        cfg = PushgatewaySinkSettings(url=gateway, timeout=60)
        prometheus_cpu_before = cpu_seconds(prometheus_pid)
        scrapes_before = scrapes(server)
        walls, sent, gateway_cpu, rss0, rss1 = await measure(
            lambda session: PushgatewaySink(cfg, session=session),
            ticks,
            [gateway_pid],
            budget,
        )
        await asyncio.sleep(SCRAPE_INTERVAL * 2)  # the last push scraped
        prometheus_cpu = cpu_seconds(prometheus_pid) - prometheus_cpu_before
        scraped = max(1, scrapes(server) - scrapes_before)
        per_scrape = prometheus_cpu / scraped
        prometheus_rss = rss_mib(prometheus_pid)
        latency = query_latency(server)
    ticks_done = max(1, sent // pops)
    result = summary(pops, sent, walls, gateway_cpu + per_scrape * ticks_done, rss0, rss1, latency)
    result["prometheus"] = {
        "cpu_s_per_scrape": round(per_scrape, 3),
        "scrapes": scraped,
        "rss_mib": round(prometheus_rss, 1),
    }
    result["rss_mib_total"] = round(rss1 + prometheus_rss, 1)
    result["rss_kib_per_pop_total"] = round((rss1 + prometheus_rss) * 1024 / min(pops, sent), 1)
    return result


def scrapes(server: str) -> int:
    """How many scrapes of the Pushgateway Prometheus has made so far."""
    text = get_text(server + "/metrics")
    for line in text.splitlines():
        if line.startswith('prometheus_target_interval_length_seconds_count{interval="2s"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def summary(
    pops: int, sent: int, walls: list[float], cpu: float, rss0: float, rss1: float, latency: dict[str, Any]
) -> dict[str, Any]:
    """One path's figures; CPU is per heartbeat taken in (one POP, one tick), RSS per POP it holds."""
    held = max(1, min(pops, sent))
    return {
        "heartbeats_sent": sent,
        "complete_ticks": len(walls),
        "central_cpu_s": round(cpu, 2),
        "central_cpu_ms_per_pop_per_tick": round(cpu * 1000 / max(sent, 1), 3),
        "rss_mib_idle": round(rss0, 1),
        "rss_mib_total": round(rss1, 1),
        "rss_kib_per_pop_total": round(rss1 * 1024 / held, 1),
        "rss_kib_per_pop_growth": round((rss1 - rss0) * 1024 / held, 1),
        "tick_wall_s_median": round(statistics.median(walls), 2) if walls else None,
        "tick_wall_s": [round(wall, 2) for wall in walls],
        "central_cpu_s_per_fleet_tick": round(cpu / max(sent, 1) * pops, 2),
        "queries": latency["per_query"],
        "overview_ms": latency["overview_ms"],
        "overview_ms_max_query": max(entry["ms"] for entry in latency["per_query"].values()),
        "overview_pops_min": min(entry["pops"] for entry in latency["per_query"].values()),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


async def run(sizes: list[int], tick_count: int, budget: float) -> dict[str, Any]:
    report: dict[str, Any] = {"ticks": tick_count, "concurrency": CONCURRENCY, "budget_s": budget, "sizes": {}}
    for pops in sizes:
        rw = await remote_write(pops, fleet_ticks(pops, tick_count), budget)
        # Fresh documents (the sink parses each once).
        gw = await via_pushgateway(pops, fleet_ticks(pops, tick_count), budget)
        report["sizes"][str(pops)] = {
            "remote_write": rw,
            "pushgateway": gw,
            "ratios_remote_write_vs_pushgateway": {
                "cpu_per_pop": ratio(rw["central_cpu_ms_per_pop_per_tick"], gw["central_cpu_ms_per_pop_per_tick"]),
                "rss_per_pop_total": ratio(rw["rss_kib_per_pop_total"], gw["rss_kib_per_pop_total"]),
                "tick_wall": ratio(rw["tick_wall_s_median"], gw["tick_wall_s_median"]),
                "overview_ms": ratio(rw["overview_ms"], gw["overview_ms"]),
            },
        }
    largest = report["sizes"][str(max(sizes))]
    report["meets_targets"] = {
        "remote_write_cheaper_per_pop": largest["remote_write"]["central_cpu_ms_per_pop_per_tick"]
        < largest["pushgateway"]["central_cpu_ms_per_pop_per_tick"],
        "overview_under_1s": largest["remote_write"]["overview_ms"] < 1000,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pops", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument(
        "--budget", type=float, default=60.0, help="seconds of pushing per path and size; later requests are not sent"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.pops, args.ticks, args.budget)), indent=2))


if __name__ == "__main__":
    main()
