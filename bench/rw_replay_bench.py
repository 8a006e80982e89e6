"""Replay: one POP's 7-day backlog (60,480 heartbeats at 10 s) into VictoriaMetrics by remote write, as JSON.

The backlog is built in memory as the spool would hand it over (compact JSON
bytes, as the agent writes them; nothing parsed yet). The real ``RemoteWriteSink``
is handed ``max_batch`` heartbeats per call, as the runner does, and sends them in
requests of ``batch_max_count`` (500) into a fresh VictoriaMetrics (Debian's
``victoria-metrics``, its own storage). Then every heartbeat is counted back with a
query: the samples of ``pop_agent_last_heartbeat_timestamp_seconds`` over the 7 days.

Also reported, to show where the time goes (CPU microseconds per heartbeat, each
stage timed alone on the real code over the whole backlog):

- ``full_parse`` and ``full_map``: ``json.loads`` and ``series.samples``, the path a
  heartbeat takes when no learned shape fits it (the first of a POP, an odd one),
  each document dropped once mapped, as the sink does;
- ``shape_read``: reading a heartbeat by its learned shape (``sinks.shapes``);
- ``encode`` and ``snappy``: the protobuf body, and its compression;
- ``sink_without_http``: the sink's whole own work (read, encode, compress);
- ``receiver_ceiling``: the same bodies, encoded beforehand, POSTed back to back into
  another fresh VictoriaMetrics: what the receiver itself allows on this machine.

The machine is shared, so the wall-clock rate moves with its load (reported at the
start and the end). ``sink_cpu_us_per_heartbeat`` is the CPU this process spent per
heartbeat over the whole delivery (reading, encoding, HTTP, threads): it moves far
less, and ``hb_per_s_on_one_free_core`` is the rate it allows.

Baseline, in the same run: the same documents through the real ``CentralSink`` to a
local central (bench/drain_bench.py's, in its own process, answering 200).

    .venv/bin/python bench/rw_replay_bench.py [--count 60480]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import aiohttp

from agent.deadline import Deadline
from agent.sample import Pending
from bench.drain_bench import PATH as CENTRAL_PATH
from bench.drain_bench import _serve as serve_central
from bench.fleet import cpu_seconds, heartbeat_doc, pending, pid_listening_on
from sinks.central import CentralSink
from sinks.central_settings import CentralSinkSettings
from sinks.remote_write import BASE_HEADERS, RemoteWriteSink
from sinks.remote_write_body import BodyEncoder, Preparer, cramjam
from sinks.remote_write_settings import RemoteWriteSinkSettings
from sinks.series import samples, timestamp_ns
from tests.sinks.realprocs import flush, get_text, victoria_metrics

TARGET = 20_000
POP = "replay"
WEEK_S = 7 * 86400


def backlog(count: int) -> list[tuple[str, bytes]]:
    """``count`` heartbeats of one POP, 10 s apart, ending a minute ago; as spooled ids and bytes."""
    rand = random.Random(7)
    start = time.time() - 60 - 10 * count
    items = (pending(heartbeat_doc(POP, seq, start + 10 * seq, rand)) for seq in range(count))
    return [(item.id, item.raw) for item in items]


def fresh(raw: list[tuple[str, bytes]]) -> list[Pending]:
    """New ``Pending`` objects (nothing parsed yet) for one run."""
    return [Pending(doc_id, data) for doc_id, data in raw]


async def deliver(sink: Any, raw: list[tuple[str, bytes]]) -> tuple[float, int]:
    """Seconds to send every heartbeat, ``max_batch`` per call as the runner hands them over, and how many were acked.

    Each batch is made fresh from the bytes when it is handed over, as the runner
    reads it from the spool: only one batch is alive at a time.
    """
    acked = 0
    started = time.perf_counter()
    for start in range(0, len(raw), sink.max_batch):
        delivery = await sink.send(fresh(raw[start : start + sink.max_batch]), Deadline(120))
        if delivery.failure is not None or delivery.rejected:
            raise RuntimeError(f"delivery failed: {delivery.failure} {set(delivery.rejected.values())}")
        acked += len(delivery.acked)
    return time.perf_counter() - started, acked


def per_heartbeat(count: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """CPU microseconds per heartbeat that ``work`` takes, and what it returned."""
    started = time.process_time()
    result = work()
    return round((time.process_time() - started) * 1e6 / count, 1), result


def full_path(blobs: list[bytes]) -> dict[str, float]:
    """Microseconds per heartbeat of parsing (``json.loads``) and of mapping (``series.samples``) each one whole."""
    parse, _ = per_heartbeat(len(blobs), lambda: [json.loads(data) and None for data in blobs])
    both, _ = per_heartbeat(len(blobs), lambda: [_mapped(json.loads(data)) and None for data in blobs])
    return {"full_parse": parse, "full_map": round(both - parse, 1)}


def _mapped(doc: dict[str, Any]) -> dict[Any, Any]:
    return samples(doc, timestamp_ns(doc["ts"]))


def stages(raw: list[tuple[str, bytes]], request: int) -> tuple[dict[str, float], list[bytes]]:
    """Microseconds per heartbeat of each stage of the sink's work, and the request bodies it made.

    Request by request, as the sink goes, so that only one request's heartbeats are alive at a time.
    """
    out = full_path([data for _, data in raw])
    preparer, encoder = Preparer(), BodyEncoder("pop_agent")
    spent = {"shape_read": 0.0, "encode": 0.0, "snappy": 0.0}
    bodies = []
    for start in range(0, len(raw), request):
        chunk = fresh(raw[start : start + request])
        begun = time.process_time()
        part = [prepared for prepared in preparer.prepare_all(chunk) if prepared is not None]
        read = time.process_time()
        body = encoder.write_request(part)
        encoded = time.process_time()
        bodies.append(bytes(cramjam.snappy.compress_raw(body)))
        spent["shape_read"] += read - begun
        spent["encode"] += encoded - read
        spent["snappy"] += time.process_time() - encoded
    out.update((stage, round(seconds * 1e6 / len(raw), 1)) for stage, seconds in spent.items())
    sink = RemoteWriteSink(RemoteWriteSinkSettings(url="http://127.0.0.1:9/api/v1/write", max_sample_age=WEEK_S * 2))
    out["sink_without_http"], _ = per_heartbeat(
        len(raw),
        lambda: [sink._ready(fresh(raw[start : start + request])) and None for start in range(0, len(raw), request)],
    )
    return out, bodies


async def post_back_to_back(url: str, bodies: list[bytes]) -> float:
    """Seconds to POST every body, one after the other, each once the one before was answered."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for body in bodies:
            async with session.post(url, data=body, headers=BASE_HEADERS) as response:
                await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"receiver answered {response.status}")
        return time.perf_counter() - started


def counted(base: str, count: int) -> int:
    """How many samples of the replayed POP's heartbeat-time series VictoriaMetrics holds, once all are searchable."""
    query = f'count_over_time(pop_agent_last_heartbeat_timestamp_seconds{{pop="{POP}"}}[{count * 10 + 3600}s])'
    stored = 0
    for _ in range(40):  # rows become searchable within a second or so of a flush
        flush(base)
        answer = json.loads(get_text(base + "/api/v1/query?" + urllib.parse.urlencode({"query": query})))
        result = answer["data"]["result"]
        stored = int(float(result[0]["value"][1])) if result else 0
        if stored >= count:
            break
        time.sleep(0.25)
    return stored


async def run(count: int, central_url: str) -> dict[str, Any]:
    raw = backlog(count)
    report: dict[str, Any] = {
        "heartbeats": count,
        "bytes_per_heartbeat": sum(len(data) for _, data in raw) // count,
        "load_average_at_start": os.getloadavg()[0],
    }

    central = CentralSink(CentralSinkSettings(url=central_url), token="bench-token")
    try:
        seconds, acked = await deliver(central, raw)
    finally:
        await central.aclose()
    report["central_sink"] = {"seconds": round(seconds, 2), "hb_per_s": round(acked / seconds), "acked": acked}

    breakdown, bodies = stages(raw, RemoteWriteSinkSettings(url="http://127.0.0.1:9/").batch_max_count)
    report["us_per_heartbeat"] = breakdown
    report["sink_without_http_hb_per_s"] = round(1e6 / breakdown["sink_without_http"])

    with victoria_metrics() as base:
        seconds = await post_back_to_back(base + "/api/v1/write", bodies)
        report["receiver_ceiling"] = {"hb_per_s": round(count / seconds), "counted_back": counted(base, count)}

    with victoria_metrics() as base:
        cfg = RemoteWriteSinkSettings(url=base + "/api/v1/write", max_sample_age=WEEK_S + 86400)
        sink = RemoteWriteSink(cfg)
        report["requests"] = {"heartbeats_per_request": sink.request_max, "heartbeats_per_send": sink.max_batch}
        pid = pid_listening_on(int(base.rsplit(":", 1)[1]))
        cpu_before, own_before = cpu_seconds(pid), time.process_time()
        try:
            seconds, acked = await deliver(sink, raw)
        finally:
            await sink.aclose()
        own_us = (time.process_time() - own_before) * 1e6 / count
        report["victoria_metrics_cpu_s"] = round(cpu_seconds(pid) - cpu_before, 2)
        stored = counted(base, count)
    rate = acked / seconds
    report["remote_write"] = {
        "seconds": round(seconds, 2),
        "hb_per_s": round(rate),
        "acked": acked,
        "counted_back": stored,
        "lost": count - stored,
        "sink_cpu_us_per_heartbeat": round(own_us, 1),
        "hb_per_s_on_one_free_core": round(1e6 / own_us),
    }
    report["ratio_vs_central_sink"] = round(rate / report["central_sink"]["hb_per_s"], 2)
    report["ratio_vs_receiver_ceiling"] = round(rate / report["receiver_ceiling"]["hb_per_s"], 2)
    report["load_average_at_end"] = os.getloadavg()[0]
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
