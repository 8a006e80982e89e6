"""Retry storm: a fleet of POPs' delivery loops against a central that answers 503 for minutes, as JSON.

Each simulated POP is the agent's own delivery code: a :class:`~agent.delivery.SinkLoop`
with its :class:`~agent.pacing.Backoff`, sending through a real
:class:`~sinks.central.CentralSink` over HTTP to a local central (an aiohttp server in
a child process, so that it does not share the fleet's event loop). A POP ticks every
``interval`` from a random start offset, as the daemon does: each tick adds one
heartbeat to its backlog and wakes its loop. The backlog is in memory, not on disk:
the spool is not what is measured here, and a thousand spools would measure the
file system. Central answers 503 (no ``Retry-After``) until the outage ends, then 200.

Time is compressed by ``--scale``: the tick interval, the outage, the pass budget and
the backoff (initial wait and cap) are all divided by it, so the fleet's schedule is
the real one played faster; network round trips are not scaled (loopback, a
millisecond or two). Every figure is reported in real-time equivalents (seconds
multiplied back by the scale).

Figures, as issue 13 asks:

- ``requests_per_pop_per_30s``: requests central saw after the outage's first minute
  and before it ended, per POP, per 30 s;
- ``busiest_1s_vs_mean``: the busiest 1 s bucket of that same span against the mean
  bucket (a synchronised fleet shows waves: a high ratio); since the rate falls as
  the backoffs grow, also ``busiest_1s_vs_its_30s``, each bucket against the 30 s
  around it, which a falling rate does not inflate;
- ``drain_s``: from the end of the outage until every POP's outage backlog was acked
  (median, 99th percentile and the last POP).

The baseline, measured in the same run against the same central: the same fleet
with a backoff that waits exactly one tick after every failure (no growth, no
jitter), i.e. a POP that retries once per tick.

    .venv/bin/python bench/retry_storm.py [--pops 1000] [--outage 300] [--scale 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from agent.backlog import BacklogScrubber
from agent.delivery import SinkLoop
from agent.pacing import Backoff, BackoffPolicy
from agent.sample import Pending
from agent.settings import DeliverySettings
from agent.spool import SpoolStats
from sinks.central import CentralSink
from sinks.central_settings import CentralSinkSettings
from sinks.http import make_session

PATH = "/ingest/v1/heartbeats"


# -- the local central, in a child process -------------------------------------------


def _serve(ports: Any, recover_at: float) -> None:
    """503 until ``recover_at`` (monotonic, shared across processes), 200 after; records every request."""

    async def main() -> None:
        seen: list[tuple[float, str, int]] = []

        async def ingest(request: web.Request) -> web.Response:
            await request.read()  # the whole body, as central would
            now = time.monotonic()
            status = 503 if now < recover_at else 200
            seen.append((now, request.headers.get("Authorization", "")[7:], status))
            return web.Response(status=status)

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(seen)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(PATH, ingest)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        ports.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


# -- one simulated POP ---------------------------------------------------------------


class MemoryBacklog:
    """What a POP's spool holds for central, in memory: the calls the delivery loop makes of a spool."""

    def __init__(self, pop: int) -> None:
        self.pop = pop
        self.items: dict[str, bytes] = {}
        self.seq = 0
        self.outage_last = -1  # the last seq made during the outage
        self.drained_at: float | None = None

    def add(self) -> int:
        doc_id = f"{self.pop:05d}-{self.seq:09d}"
        self.items[doc_id] = json.dumps({"id": doc_id, "pop": f"pop{self.pop}", "seq": self.seq}).encode()
        self.seq += 1
        return self.seq - 1

    def batch(self, sink: str, max_count: int, max_bytes: int) -> list[Pending]:
        return [Pending(doc_id, raw) for doc_id, raw in list(self.items.items())[:max_count]]

    def settle(self, sink: str, acked: Iterable[str], rejected: Mapping[str, str]) -> None:
        for doc_id in (*acked, *rejected):
            self.items.pop(doc_id, None)
        if self.drained_at is None and self.outage_last >= 0:
            oldest = min((int(doc_id[-9:]) for doc_id in self.items), default=self.seq)
            if oldest > self.outage_last:
                self.drained_at = time.monotonic()

    def stats(self) -> SpoolStats:
        return SpoolStats(len(self.items), sum(map(len, self.items.values())), None, 0, 0, 0)


class Inline:
    """The delivery loop's file thread, inline: an in-memory backlog does not block."""

    async def call(self, func: Any, *args: Any) -> Any:
        return func(*args)


class EveryTick(Backoff):
    """The baseline: wait exactly one tick after every failure, whatever the receiver says."""

    def __init__(self, wait: float) -> None:
        super().__init__(BackoffPolicy(initial=wait, cap=wait))
        self._wait = wait

    def failed(self, retry_after: float | None = None) -> float:
        self.failures += 1
        return self._wait


def _ignore(*args: Any) -> None:
    return None


async def _ticks(backlog: MemoryBacklog, loop: SinkLoop, interval: float, recover_at: float) -> None:
    await asyncio.sleep(random.uniform(0, interval))  # the daemon's random start offset
    while True:
        seq = backlog.add()
        if time.monotonic() < recover_at:
            backlog.outage_last = seq
        loop.wake.set()
        await asyncio.sleep(interval)


# -- one run -------------------------------------------------------------------------


async def _lag_probe(lag: list[float], every: float = 0.02) -> None:
    """How late the fleet's event loop runs a timer: if it falls behind, the compressed schedule is not the real one."""
    while True:
        asked = time.monotonic() + every
        await asyncio.sleep(every)
        lag.append(time.monotonic() - asked)


async def fleet(
    url: str,
    *,
    pops: int,
    interval: float,
    recover_at: float,
    backoff: Any,
    budget: float,
    give_up_at: float,
    lag: list[float],
) -> list[MemoryBacklog]:
    """Run ``pops`` delivery loops until every outage backlog is acked (or ``give_up_at``)."""
    session = make_session(connect_timeout=5.0, read_timeout=15.0, limit=256)
    cfg = CentralSinkSettings(url=url, gzip_min_bytes=1 << 30)
    scrubber = BacklogScrubber({})
    scrubber.vouch_above("")  # every heartbeat here is "this process's own": no second scrub
    backlogs = [MemoryBacklog(i) for i in range(pops)]
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(_lag_probe(lag))]
    for i, backlog in enumerate(backlogs):
        loop = SinkLoop(
            CentralSink(cfg, token=f"pop{i}", session=session),
            spool=backlog,  # type: ignore[arg-type]
            files=Inline(),  # type: ignore[arg-type]
            backlog=scrubber,
            backoff=backoff(),
            budget=budget,
            observe=_ignore,
            count_refused=_ignore,
        )
        tasks.append(asyncio.create_task(loop.run()))
        tasks.append(asyncio.create_task(_ticks(backlog, loop, interval, recover_at)))
    try:
        while time.monotonic() < give_up_at:
            if time.monotonic() > recover_at and all(b.drained_at is not None for b in backlogs):
                break
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
    return backlogs


def run_once(name: str, args: argparse.Namespace, backoff: Any) -> dict[str, Any]:
    """One fleet against a fresh central; the figures in real-time equivalents."""
    scale = args.scale
    interval, outage = args.interval / scale, args.outage / scale
    started = time.monotonic() + 1.0  # a second to start the server and build the fleet
    recover_at = started + outage
    ports: Any = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports, recover_at), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        url = f"http://127.0.0.1:{port}{PATH}"
        budget = max(60.0, 3 * args.interval) / scale
        give_up_at = recover_at + 3 * args.backoff_max / scale + 5.0
        time.sleep(max(0.0, started - time.monotonic()))
        lag: list[float] = []
        backlogs = asyncio.run(
            fleet(
                url,
                pops=args.pops,
                interval=interval,
                recover_at=recover_at,
                backoff=backoff,
                budget=budget,
                give_up_at=give_up_at,
                lag=lag,
            )
        )
        seen = asyncio.run(_fetch(f"http://127.0.0.1:{port}/stats"))
    finally:
        server.terminate()
        server.join(5)
    result = figures(name, args, seen, backlogs, started, recover_at)
    lag.sort()
    # In real seconds: how far behind its compressed schedule the fleet ran (p99 and worst timer).
    result["loop_lag_s"] = {
        "p99": round(lag[int(0.99 * (len(lag) - 1))] * args.scale, 2) if lag else None,
        "max": round(lag[-1] * args.scale, 2) if lag else None,
    }
    return result


async def _fetch(url: str) -> list[tuple[float, str, int]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        data: list[tuple[float, str, int]] = await response.json()
        return data


def figures(
    name: str,
    args: argparse.Namespace,
    seen: list[tuple[float, str, int]],
    backlogs: list[MemoryBacklog],
    started: float,
    recover_at: float,
) -> dict[str, Any]:
    """Requests per POP per 30 s, the busiest second against the mean, and drain times, all in real seconds."""
    scale = args.scale
    after_minute = started + 60.0 / scale
    during = [at for at, _, status in seen if after_minute <= at < recover_at]
    span_real = max(1e-9, (recover_at - after_minute) * scale)
    buckets = Counter(int((at - after_minute) * scale) for at in during)  # 1 s buckets, real time
    n_buckets = max(1, int(span_real))
    mean = len(during) / n_buckets
    fives = Counter(int((at - after_minute) * scale / 5) for at in during)  # 5 s buckets: less timer noise
    mean5 = len(during) / max(1, int(span_real / 5))
    # The rate falls while the backoffs grow, so the first seconds after the first minute are busier than
    # the mean of the whole span without any wave: against the mean of the 30 s around it, a bucket shows
    # only what stands out locally, which is what a synchronised wave would do.
    series = [buckets.get(i, 0) for i in range(n_buckets)]
    local = 0.0
    for i, count in enumerate(series):
        around = series[max(0, i - 15) : i + 16]
        local = max(local, count / (sum(around) / len(around))) if sum(around) else local
    drains = sorted(((b.drained_at - recover_at) * scale) for b in backlogs if b.drained_at is not None)
    first_minute = sum(1 for at, _, _ in seen if started <= at < after_minute)
    return {
        "fleet": name,
        "pops": args.pops,
        "requests_total": len(seen),
        "requests_first_minute": first_minute,
        "requests_after_first_minute_in_outage": len(during),
        "requests_per_pop_per_30s": round(len(during) / args.pops / (span_real / 30.0), 3),
        "busiest_1s": max(buckets.values(), default=0),
        "mean_1s": round(mean, 2),
        "busiest_1s_vs_mean": round(max(buckets.values(), default=0) / mean, 2) if mean else None,
        "busiest_5s_vs_mean": round(max(fives.values(), default=0) / mean5, 2) if mean5 else None,
        "busiest_1s_vs_its_30s": round(local, 2),
        "requests_per_pop_per_30s_last_2min": round(
            sum(1 for at in during if at >= recover_at - 120.0 / scale) / args.pops / (min(120.0, span_real) / 30.0), 3
        ),
        "drained_pops": len(drains),
        "drain_s": {
            "median": round(statistics.median(drains), 1) if drains else None,
            "p99": round(drains[min(len(drains) - 1, int(0.99 * len(drains)))], 1) if drains else None,
            "last": round(drains[-1], 1) if drains else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pops", type=int, default=1000)
    parser.add_argument("--outage", type=float, default=300.0, help="real seconds of 503s")
    parser.add_argument("--interval", type=float, default=10.0, help="real seconds between ticks")
    parser.add_argument("--scale", type=float, default=5.0, help="time compression factor")
    parser.add_argument("--no-baseline", action="store_true")
    defaults = DeliverySettings()
    parser.add_argument("--backoff-initial", type=float, default=defaults.backoff_initial)
    parser.add_argument("--backoff-max", type=float, default=defaults.backoff_max)
    args = parser.parse_args()
    # A thousand loops logging every failure would measure the logger (and fill stdout, where the JSON goes).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    scale = args.scale
    policy = BackoffPolicy(
        initial=args.backoff_initial / scale,
        cap=args.backoff_max / scale,
        retry_after_max=defaults.retry_after_max / scale,
    )
    result: dict[str, Any] = {
        "how": (
            f"{args.pops} SinkLoop+Backoff+CentralSink over HTTP to a local central answering 503 for "
            f"{args.outage:g} s then 200; ticks every {args.interval:g} s; time compressed {scale:g}x "
            "(interval, outage, pass budget, backoff initial and cap all divided by it); figures in real seconds"
        ),
        "backoff": {"initial_s": args.backoff_initial, "cap_s": args.backoff_max},
        "paced": run_once("paced", args, lambda: Backoff(policy)),
    }
    if not args.no_baseline:
        result["every_tick"] = run_once("every_tick", args, lambda: EveryTick(args.interval / scale))
        paced, base = result["paced"], result["every_tick"]
        if base["requests_per_pop_per_30s"]:
            result["ratios"] = {
                "requests_paced_vs_every_tick": round(
                    paced["requests_per_pop_per_30s"] / base["requests_per_pop_per_30s"], 3
                ),
            }
    paced = result["paced"]
    result["meets_targets"] = {
        "requests_per_pop_per_30s_le_1": paced["requests_per_pop_per_30s"] <= 1.0,
        "every_backlog_drained": paced["drained_pops"] == args.pops,
    }
    print(json.dumps(result, indent=2))
    print(
        f"retry_storm: paced {paced['requests_per_pop_per_30s']} req/POP/30 s, busiest 1 s "
        f"{paced['busiest_1s_vs_mean']}x mean, drained in {paced['drain_s']['last']} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
