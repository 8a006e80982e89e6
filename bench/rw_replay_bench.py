"""Replay: one POP's 7-day backlog (60,480 heartbeats at 10 s) into VictoriaMetrics by remote write, as JSON.

The backlog is built in memory as the spool would hand it over (compact JSON
bytes; each ``Pending`` is parsed by the sink, as in the daemon). The real
``RemoteWriteSink`` sends it in batches of ``batch_max_count`` (500), one request
at a time, into a fresh VictoriaMetrics (Debian's ``victoria-metrics``, its own
storage). Then every heartbeat is counted back with a query: the samples of
``pop_agent_last_heartbeat_timestamp_seconds`` over the 7 days.

Also reported: the sink's own work alone (parse, map, encode, compress; no HTTP),
and VictoriaMetrics' CPU seconds during the replay.

Baseline, in the same run: the same documents through the real ``CentralSink`` to a
local central (bench/drain_bench.py's, in its own process, answering 200).

    .venv/bin/python bench/rw_replay_bench.py [--count 60480]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import time
import urllib.parse
from typing import Any

from agent.deadline import Deadline
from agent.sample import Pending
from agent.settings import CentralSinkSettings, RemoteWriteSinkSettings
from bench.drain_bench import PATH as CENTRAL_PATH
from bench.drain_bench import _serve as serve_central
from bench.fleet import cpu_seconds, heartbeat_doc, pending, pid_listening_on
from sinks.central import CentralSink
from sinks.remote_write import RemoteWriteSink
from tests.sinks.realprocs import flush, get_text, victoria_metrics

TARGET = 20_000
BATCH = 500
POP = "replay"


def backlog(count: int) -> list[tuple[str, bytes]]:
    """``count`` heartbeats of one POP, 10 s apart, ending a minute ago; as spooled ids and bytes."""
    rand = random.Random(7)
    start = time.time() - 60 - 10 * count
    items = (pending(heartbeat_doc(POP, seq, start + 10 * seq, rand)) for seq in range(count))
    return [(item.id, item.raw) for item in items]


def fresh(raw: list[tuple[str, bytes]]) -> list[Pending]:
    """New ``Pending`` objects (nothing parsed yet) for one run."""
    return [Pending(doc_id, data) for doc_id, data in raw]


async def deliver(sink: Any, items: list[Pending]) -> tuple[float, int]:
    """Seconds to send every item in batches of the sink's ``max_batch`` (as the runner hands them), and how many were acked."""
    acked = 0
    started = time.perf_counter()
    for start in range(0, len(items), sink.max_batch):
        delivery = await sink.send(items[start : start + sink.max_batch], Deadline(120))
        if delivery.failure is not None or delivery.rejected:
            raise RuntimeError(f"delivery failed: {delivery.failure} {set(delivery.rejected.values())}")
        acked += len(delivery.acked)
    return time.perf_counter() - started, acked


def encode_only(sink: RemoteWriteSink, items: list[Pending]) -> float:
    """Seconds the sink's own work takes for ``items`` (parse, map, encode, compress), without HTTP."""
    started = time.perf_counter()
    for start in range(0, len(items), BATCH):
        sink._ready(items[start : start + BATCH])
    return time.perf_counter() - started


def counted(base: str, days: float) -> int:
    """How many samples of the replayed POP's heartbeat-time series VictoriaMetrics holds."""
    query = f'count_over_time(pop_agent_last_heartbeat_timestamp_seconds{{pop="{POP}"}}[{int(days * 86400) + 3600}s])'
    answer = json.loads(get_text(base + "/api/v1/query?" + urllib.parse.urlencode({"query": query})))
    result = answer["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


async def run(count: int, central_url: str) -> dict[str, Any]:
    raw = backlog(count)
    size = sum(len(data) for _, data in raw) // count
    report: dict[str, Any] = {"heartbeats": count, "batch": BATCH, "bytes_per_heartbeat": size}

    central = CentralSink(CentralSinkSettings(url=central_url), token="bench-token")
    try:
        seconds, acked = await deliver(central, fresh(raw))
    finally:
        await central.aclose()
    report["central_sink"] = {"seconds": round(seconds, 2), "hb_per_s": round(acked / seconds), "acked": acked}

    with victoria_metrics() as base:
        cfg = RemoteWriteSinkSettings(url=base + "/api/v1/write", max_sample_age=8 * 86400)
        sink = RemoteWriteSink(cfg)
        report["sink_without_http_hb_per_s"] = round(count / encode_only(sink, fresh(raw)))
        pid = pid_listening_on(int(base.rsplit(":", 1)[1]))
        cpu_before = cpu_seconds(pid)
        try:
            seconds, acked = await deliver(sink, fresh(raw))
        finally:
            await sink.aclose()
        report["victoria_metrics_cpu_s"] = round(cpu_seconds(pid) - cpu_before, 2)
        stored = 0
        for _ in range(40):  # rows become searchable within a second or so of a flush
            flush(base)
            stored = counted(base, count * 10 / 86400)
            if stored >= count:
                break
            await asyncio.sleep(0.25)
    rate = acked / seconds
    report["remote_write"] = {
        "seconds": round(seconds, 2),
        "hb_per_s": round(rate),
        "acked": acked,
        "counted_back": stored,
        "lost": count - stored,
    }
    report["ratio_vs_central_sink"] = round(rate / report["central_sink"]["hb_per_s"], 2)
    report["target_hb_per_s"] = TARGET
    report["meets_target"] = rate >= TARGET and stored == count
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60_480)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=serve_central, args=(ports,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}{CENTRAL_PATH}"
        report = asyncio.run(run(args.count, url))
    finally:
        server.terminate()
        server.join(5)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
