"""Drain throughput to central: heartbeats per second from a backlog, as JSON.

A local aiohttp central runs in its own process (so client and server do not share
one event loop) and answers 200 to every request. From a backlog of one file per
heartbeat, each stage delivers every heartbeat, one request at a time:

- ``baseline_plain`` / ``baseline_gzip``: read the files, join them into the body
  (gzip-compressed like the sink does), POST with a bare session. The floor.
- ``sink_plain`` / ``sink_gzip``: read the files, ``CentralSink.send``: batching,
  retry wrapper, status mapping, Delivery. Ratio against the matching baseline.
- ``drain``: the whole path: ``Spool.batch`` -> ``CentralSink.send`` ->
  ``Spool.settle`` (cursor saved with fsync, acked files deleted), with the
  spool's blocking calls in a thread as the runner does.

Run from the repository root: ``.venv/bin/python -m bench.drain_bench [--count N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent.deadline import Deadline
from agent.settings import CentralSinkSettings
from sinks.central import CentralSink, gzip_bytes
from sinks.retry import RetryPolicy

PATH = "/ingest/v1/heartbeats"
TARGET = 10_000
BATCH = 500


# -- the local central, in a child process -------------------------------------


def _serve(ports: Any) -> None:
    async def main() -> None:
        counts = {"requests": 0, "heartbeats": 0}

        async def ingest(request: web.Request) -> web.Response:
            body = await request.read()  # aiohttp decodes Content-Encoding: gzip
            counts["requests"] += 1
            counts["heartbeats"] += body.count(b'"schema":')
            return web.Response(status=200)

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(counts)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(PATH, ingest)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the backlog ---------------------------------------------------------------


def uuid7(ms: int, rand: random.Random) -> str:
    value = (ms << 80) | (0x7 << 76) | (rand.getrandbits(12) << 64) | (0b10 << 62) | rand.getrandbits(62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def heartbeats(count: int) -> list[tuple[str, bytes]]:
    """``count`` realistic heartbeats (about 900 bytes each), oldest first."""
    rand = random.Random(7)
    start_ms = 1_795_000_000_000
    out = []
    for seq in range(count):
        doc_id = uuid7(start_ms + seq * 10_000, rand)
        doc = {
            "schema": "pop-heartbeat/1",
            "id": doc_id,
            "pop": "ams1",
            "ts": "2026-11-22T07:00:00.123Z",
            "seq": seq,
            "edition": "community",
            "agent_version": "0.1.0",
            "interval_s": 10.0,
            "metrics": {
                "cpu_percent": round(rand.uniform(0, 100), 1),
                "load1": round(rand.uniform(0, 4), 2),
                "mem_used_percent": round(rand.uniform(20, 90), 1),
                "vault_count": 1200 + seq % 50,
                "requests_total": 1_000_000 + seq * 37,
                "requests_per_s": round(rand.uniform(0, 300), 2),
                "unique_ips_1h": rand.randrange(5000),
                "unique_ips_24h": rand.randrange(50000),
                "spool_pending": count - seq,
                "spool_dropped_total": 0,
                "scrub_rejected_total": 0,
                "collector_errors_total": seq // 1000,
            },
            "series": [
                {"name": "disk_used_percent", "labels": {"mount": m}, "value": round(rand.uniform(5, 95), 1)}
                for m in ("/", "/var", "/var/lib/vaults")
            ]
            + [
                {"name": "responses_total", "labels": {"class": c}, "value": float(rand.randrange(10**6))}
                for c in ("2xx", "3xx", "4xx", "5xx")
            ],
            "collectors": {"cpu": "ok", "memory": "ok", "disk": "ok", "vaults": "ok", "requests": "ok"},
        }
        out.append((doc_id, json.dumps(doc, separators=(",", ":")).encode()))
    return out


def read_files(paths: list[Path]) -> list[bytes]:
    out = []
    for path in paths:
        with open(path, "rb") as handle:
            out.append(handle.read())
    return out


# -- the stages ----------------------------------------------------------------


async def baseline(url: str, files: list[Path], *, gzip_min: int | None) -> int:
    """Read + POST with a bare session; returns how many heartbeats were delivered."""
    delivered = 0
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-token"}
    async with aiohttp.ClientSession() as session:
        for start in range(0, len(files), BATCH):
            raws = read_files(files[start : start + BATCH])
            body = b'{"heartbeats":[' + b",".join(raws) + b"]}"
            extra = {}
            if gzip_min is not None and len(body) >= gzip_min:
                body, extra = gzip_bytes(body), {"Content-Encoding": "gzip"}
            async with session.post(url, data=body, headers={**headers, **extra}) as response:
                await response.read()
                if response.status == 200:
                    delivered += len(raws)
    return delivered


async def sink_send(url: str, files: list[Path], ids: list[str], *, gzip_min: int) -> int:
    """Read + CentralSink.send; returns how many heartbeats were acked."""
    from agent.sample import Pending

    cfg = CentralSinkSettings(url=url, gzip_min_bytes=gzip_min)
    sink = CentralSink(cfg, token="bench-token", policy=RetryPolicy.immediate())
    acked = 0
    try:
        for start in range(0, len(files), sink.max_batch):
            raws = read_files(files[start : start + sink.max_batch])
            batch = [Pending(i, raw) for i, raw in zip(ids[start : start + sink.max_batch], raws, strict=True)]
            delivery = await sink.send(batch, Deadline(60))
            acked += len(delivery.acked)
    finally:
        await sink.aclose()
    return acked


async def drain(url: str, root: Path) -> int:
    """Spool.batch -> CentralSink.send -> Spool.settle until the spool is empty."""
    from agent.settings import SpoolSettings
    from agent.spool import Spool

    cfg = CentralSinkSettings(url=url)
    sink = CentralSink(cfg, token="bench-token", policy=RetryPolicy.immediate())
    acked = 0
    spool = Spool(root, SpoolSettings(), sinks=("central",), fsync=True)
    await asyncio.to_thread(spool.open)
    try:
        while batch := await asyncio.to_thread(spool.batch, "central", sink.max_batch, cfg.batch_max_bytes):
            delivery = await sink.send(batch, Deadline(60))
            await asyncio.to_thread(spool.settle, "central", delivery.acked, delivery.rejected)
            acked += len(delivery.acked)
            if delivery.failure is not None:
                break
        left = spool.stats().pending
    finally:
        await asyncio.to_thread(spool.close)
        await sink.aclose()
    if left:
        raise SystemExit(f"drain left {left} heartbeats")
    return acked


def fill_spool(root: Path, docs: list[tuple[str, bytes]]) -> None:
    from agent.settings import SpoolSettings
    from agent.spool import Spool

    # Written without fsync to save minutes of set-up; the drain reopens it with fsync on.
    with Spool(root, SpoolSettings(max_files=len(docs) + 10), sinks=("central",), fsync=False) as spool:
        for doc_id, raw in docs:
            spool.put(doc_id, raw)


async def timed(label: str, run: Callable[[], Awaitable[int]], expected: int) -> dict[str, Any]:
    start = time.perf_counter()
    delivered = await run()
    seconds = time.perf_counter() - start
    if delivered != expected:
        raise SystemExit(f"{label}: delivered {delivered} of {expected}")
    print(f"{label}: {expected / seconds:,.0f} heartbeats/s", file=sys.stderr)
    return {"seconds": round(seconds, 3), "hb_per_s": round(expected / seconds)}


async def run(count: int, rounds: int, with_spool: bool, url: str, work: Path) -> dict[str, Any]:
    docs = heartbeats(count)
    ids = [doc_id for doc_id, _ in docs]
    backlog = work / "backlog"
    backlog.mkdir()
    files = []
    for doc_id, raw in docs:
        path = backlog / f"{doc_id}.json"
        path.write_bytes(raw)
        files.append(path)
    doc_bytes = sum(len(raw) for _, raw in docs) / count
    gzip_min = CentralSinkSettings().gzip_min_bytes
    no_gzip = 1 << 40

    best: dict[str, dict[str, Any]] = {}

    def keep(name: str, result: dict[str, Any]) -> None:
        if name not in best or result["hb_per_s"] > best[name]["hb_per_s"]:
            best[name] = result

    for round_no in range(rounds):
        # Interleaved, so that a noisy neighbour hurts baseline and sink alike.
        keep("baseline_plain", await timed("baseline_plain", lambda: baseline(url, files, gzip_min=None), count))
        keep("sink_plain", await timed("sink_plain", lambda: sink_send(url, files, ids, gzip_min=no_gzip), count))
        keep("baseline_gzip", await timed("baseline_gzip", lambda: baseline(url, files, gzip_min=gzip_min), count))
        keep("sink_gzip", await timed("sink_gzip", lambda: sink_send(url, files, ids, gzip_min=gzip_min), count))
        if with_spool:
            root = work / f"spool{round_no}"
            started = time.perf_counter()
            fill_spool(root, docs)
            print(f"(spool filled in {time.perf_counter() - started:.1f} s)", file=sys.stderr)
            keep("drain", await timed("drain", lambda root=root: drain(url, root), count))
            if any((root / "pending").iterdir()):
                raise SystemExit("drain left files in pending/")

    def ratio(name: str, base: str) -> float:
        return round(best[name]["hb_per_s"] / best[base]["hb_per_s"], 3)

    report: dict[str, Any] = {
        "heartbeats": count,
        "avg_doc_bytes": round(doc_bytes),
        "batch": BATCH,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        **best,
        "sink_plain_vs_baseline_plain": ratio("sink_plain", "baseline_plain"),
        "sink_gzip_vs_baseline_gzip": ratio("sink_gzip", "baseline_gzip"),
        "target_hb_per_s": TARGET,
    }
    if with_spool:
        report["drain_vs_baseline_gzip"] = ratio("drain", "baseline_gzip")
    headline = best["drain"] if with_spool else best["sink_gzip"]
    report["meets_target"] = headline["hb_per_s"] >= TARGET
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-spool", action="store_true", help="skip the full drain through agent.spool")
    args = parser.parse_args()
    try:
        import agent.spool  # noqa: F401

        with_spool = not args.no_spool
    except ImportError:
        with_spool = False

    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="drain-bench-"))
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}{PATH}"
        report = asyncio.run(run(args.count, args.rounds, with_spool, url, work))
    finally:
        server.terminate()
        server.join(5)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
