"""Soak: the daemon at a 0.1 s interval against a flapping local central, watched for growth.

    SOAK_SECONDS=600 python bench/soak.py      # make soak

- A local central (its own process) changes its behaviour every 1-5 s at random
  (seeded): ``up`` (200, records every heartbeat), ``down`` (not listening; kept-alive
  connections are closed), ``503`` (half of them with ``Retry-After: 1``), ``hang``
  (reads the request, answers only when the phase ends) and ``reset`` (closes the
  connection without an answer).
- The daemon (``agent run``, telemetry on, ``SOAK_INTERVAL`` default 0.1 s, state in a
  temporary directory) runs for ``SOAK_SECONDS`` (default 600). Every second this
  script samples its RSS (``VmRSS``), open file descriptors (``/proc/<pid>/fd``),
  threads, and asyncio tasks. The task count comes from inside the daemon: it runs
  through a thin wrapper (``--daemon``) that adds one probe task to the same
  ``asyncio.run`` and writes ``len(asyncio.all_tasks())`` to a file each second
  (the probe itself is one of the tasks counted). The agent's code is unchanged.
- Growth: over the second half (the first half is warm-up), a Theil-Sen slope (the
  median of pairwise slopes, robust to the flapping's spikes). RSS fails if its
  slope extrapolates past 1 MiB/day *and* the rise over the half is larger than the
  noise (twice the residuals' MAD-sigma plus one page); below that a run of this
  length cannot tell, and the report gives the detection limit in MiB/day, so a
  short soak says "no growth seen above X MiB/day", not "< 1 MiB/day". File
  descriptors, threads and tasks fail if they rose by at least one over the half
  and the median of the last quarter is above every value of the first half.
- At the end central is set steady, the daemon drains and gets SIGTERM (exit 0
  expected), ``agent upload`` sends whatever it left, and every ``seq`` the daemon
  logged as a tick must be at central, with nothing left in ``pending/``.

Writes ``bench/results/soak.json`` (with the sampled series) and exits non-zero on
any failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idle import ROOT, agent_command, agent_env, fd_count, rss_kib, status_field

RESULTS = ROOT / "bench" / "results"
MODES = (("up", 40), ("down", 15), ("503", 20), ("hang", 12), ("reset", 13))
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") / 1024


# -- the flapping central (own process) -----------------------------------------------------


def serve_central(ports: Any, seed: int) -> None:
    """A central ingest v1 whose behaviour flaps; a control site on a second port."""
    from aiohttp import web

    async def main() -> None:
        rand = random.Random(seed)
        received: dict[str, int] = {}
        requests: dict[str, int] = {}
        state: dict[str, Any] = {"mode": "up", "steady": False, "changed": asyncio.Event()}

        async def ingest(request: web.Request) -> web.StreamResponse:
            mode = state["mode"]
            requests[mode] = requests.get(mode, 0) + 1
            if mode in ("down", "reset"):
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)  # never reaches the client
            body = await request.read()
            if mode == "503":
                headers = {"Retry-After": "1"} if rand.random() < 0.5 else {}
                return web.Response(status=503, headers=headers)
            if mode == "hang":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state["changed"].wait(), timeout=30)
                return web.Response(status=503)
            for doc in json.loads(body)["heartbeats"]:
                received[doc["id"]] = doc["seq"]
            return web.Response(status=200)

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(
                {"seqs": sorted(set(received.values())), "ids": len(received), "requests": requests}
            )

        async def steady(request: web.Request) -> web.Response:
            state["steady"] = True
            return web.json_response({"ok": True})

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/ingest/v1/heartbeats", ingest)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
        await site.start()
        port = runner.addresses[0][1]
        control = web.Application()
        control.router.add_get("/stats", stats)
        control.router.add_post("/steady", steady)
        control_runner = web.AppRunner(control, access_log=None)
        await control_runner.setup()
        await web.TCPSite(control_runner, "127.0.0.1", 0).start()
        ports.put((port, control_runner.addresses[0][1]))
        listening = True
        while True:
            mode = "up" if state["steady"] else rand.choices([m for m, _ in MODES], [w for _, w in MODES])[0]
            if mode == "down" and listening:
                await site.stop()
                listening = False
            elif mode != "down" and not listening:
                site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
                await site.start()
                listening = True
            state["mode"] = mode
            state["changed"].set()
            state["changed"] = asyncio.Event()
            await asyncio.sleep(1.0 if state["steady"] else rand.uniform(1.0, 5.0))

    asyncio.run(main())


# -- the daemon, with a task probe ----------------------------------------------------------


def run_daemon_with_probe(probe: Path, argv: Sequence[str]) -> int:
    """``agent`` with one extra task in its event loop that reports the task count."""
    real_run = asyncio.run

    async def report() -> None:
        tmp = probe.with_suffix(".tmp")
        while True:
            tmp.write_text(f"{len(asyncio.all_tasks())}\n")
            os.replace(tmp, probe)
            await asyncio.sleep(1.0)

    def run(main: Any, **kwargs: Any) -> Any:
        async def wrapped() -> Any:
            task = asyncio.create_task(report(), name="soak-probe")
            try:
                return await main
            finally:
                task.cancel()

        return real_run(wrapped(), **kwargs)

    asyncio.run = run  # type: ignore[assignment]
    from agent.cli import main

    return main(list(argv))


# -- analysis -------------------------------------------------------------------------------


def theil_sen(points: list[tuple[float, float]], most: int = 400) -> tuple[float, float]:
    """Slope and intercept: the median of pairwise slopes, robust to spikes."""
    if len(points) > most:
        step = len(points) / most
        points = [points[int(i * step)] for i in range(most)]
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :] if x2 != x1]
    slope = statistics.median(slopes) if slopes else 0.0
    intercept = statistics.median(y - slope * x for x, y in points)
    return slope, intercept


def growth(series: list[tuple[float, float]], *, rss: bool) -> dict[str, Any]:
    """The verdict on one series: growing or not, over its second half."""
    if len(series) < 8:
        return {"verdict": "too_short", "growing": False}
    t0 = series[0][0]
    cut = t0 + (series[-1][0] - t0) / 2
    half = [(t, v) for t, v in series if t >= cut]
    first = [v for t, v in series if t < cut]
    span = half[-1][0] - half[0][0]
    slope, intercept = theil_sen(half)
    rise = slope * span
    out: dict[str, Any] = {
        "first": series[0][1],
        "end": series[-1][1],
        "second_half_median": statistics.median(v for _, v in half),
        "slope_per_hour": round(slope * 3600, 3),
        "rise_over_second_half": round(rise, 2),
    }
    if rss:
        residuals = [v - (slope * t + intercept) for t, v in half]
        centre = statistics.median(residuals)
        noise = 1.4826 * statistics.median(abs(r - centre) for r in residuals)
        floor_kib = 2 * noise + PAGE_KIB
        mib_day = slope * 86400 / 1024
        limit_mib_day = floor_kib / span * 86400 / 1024 if span > 0 else float("inf")
        growing = mib_day > 1.0 and rise > floor_kib
        out.update(
            unit="KiB",
            slope_mib_per_day=round(mib_day, 2),
            detection_limit_mib_per_day=round(limit_mib_day, 1),
            growing=growing,
            verdict="growing"
            if growing
            else ("flat" if abs(mib_day) <= 1.0 else f"no growth seen above {limit_mib_day:.0f} MiB/day"),
        )
    else:
        last_quarter = [v for t, v in half if t >= cut + span / 2]
        growing = rise >= 1 and bool(last_quarter) and statistics.median(last_quarter) > max(first, default=0)
        out.update(growing=growing, verdict="growing" if growing else "flat")
    return out


# -- the run --------------------------------------------------------------------------------


def http_json(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def logged_ticks(log: Path) -> tuple[list[int], dict[str, int]]:
    """The ``seq`` of every tick the daemon logged, and a count of each other event."""
    seqs: list[int] = []
    events: dict[str, int] = {}
    with log.open() as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                events["unparseable_line"] = events.get("unparseable_line", 0) + 1
                continue
            if entry.get("event") == "tick":
                seqs.append(entry["seq"])
            else:
                events[entry.get("event", "?")] = events.get(entry.get("event", "?"), 0) + 1
    return seqs, events


def read_status(state: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        value = json.loads((state / "status.json").read_text())
        if isinstance(value, dict):
            return value
    return {}


def soak(seconds: float, interval: float, seed: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    central = context.Process(target=serve_central, args=(ports, seed), daemon=True)
    central.start()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    state, log, probe = work / "state", work / "daemon.log", work / "tasks"
    try:
        port, control_port = ports.get(timeout=30)
        control = f"http://127.0.0.1:{control_port}"
        env = agent_env(
            state,
            POP_AGENT_SINKS__CENTRAL__URL=f"http://127.0.0.1:{port}/ingest/v1/heartbeats",
            POP_AGENT_SINKS__CENTRAL__TOKEN="soak-token",
            POP_AGENT_SINKS__CENTRAL__CONNECT_TIMEOUT="1",
            POP_AGENT_SINKS__CENTRAL__READ_TIMEOUT="2",
            POP_AGENT_DELIVERY__BACKOFF_MAX="2",
            POP_AGENT_TELEMETRY="on",
        )
        # At debug every tick is logged with its seq: what central must have received.
        argv = [sys.executable, __file__, "--daemon", str(probe), "run", "--interval", str(interval)]
        argv += ["--log-level", "debug"]
        with log.open("wb") as out:
            daemon = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=out, cwd=work)
        launched = time.monotonic()
        # Sample from the moment the event loop runs (the probe's first report).
        while not probe.exists() and daemon.poll() is None and time.monotonic() - launched < 60:
            time.sleep(0.1)
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds and daemon.poll() is None:
            with contextlib.suppress(OSError, KeyError, ValueError):
                samples.append(
                    {
                        "t": round(elapsed, 2),
                        "rss_kib": rss_kib(daemon.pid),
                        "fds": fd_count(daemon.pid),
                        "threads": status_field(daemon.pid, "Threads"),
                        "tasks": int(probe.read_text()) if probe.exists() else None,
                        "pending": read_status(state).get("spool", {}).get("pending"),
                    }
                )
            time.sleep(1.0)
        crashed = daemon.poll()
        http_json(control + "/steady", "POST")
        drained_at = None
        drain_started = time.monotonic()
        while daemon.poll() is None and time.monotonic() - drain_started < 120:
            # A heartbeat arrives every tick, so "drained" is a backlog of at most a few ticks.
            if (read_status(state).get("spool", {}).get("pending") or 0) <= 5:
                drained_at = round(time.monotonic() - drain_started, 1)
                break
            time.sleep(0.5)
        final_status = read_status(state)
        daemon.send_signal(signal.SIGTERM)
        ran_s = time.monotonic() - started
        try:
            code = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
        upload = subprocess.run(agent_command("upload"), env=env, capture_output=True, cwd=work, timeout=120)
        got = http_json(control + "/stats")
        seqs, events = logged_ticks(log)
        left = {name: len(list((state / "spool" / name).glob("*"))) for name in ("pending", "rejected", "quarantine")}
    finally:
        central.terminate()
        central.join(5)
        shutil.rmtree(work, ignore_errors=True)

    received = set(got["seqs"])
    missing = sorted(set(seqs) - received)
    series = {
        key: [(s["t"], s[key]) for s in samples if s[key] is not None] for key in ("rss_kib", "fds", "threads", "tasks")
    }
    verdicts = {key: growth(points, rss=key == "rss_kib") for key, points in series.items()}
    report: dict[str, Any] = {
        "seconds": seconds,
        "interval_s": interval,
        "seed": seed,
        "ticks_logged": len(seqs),
        "ticks_expected": int(ran_s / interval),
        "daemon_ran_s": round(ran_s, 1),
        "tick_overruns_total": final_status.get("counters", {}).get("tick_overruns_total"),
        "central_requests_by_mode": got["requests"],
        "central_ids": got["ids"],
        "missing_at_central": len(missing),
        "missing_examples": missing[:10],
        "left_in_spool": left,
        "daemon_crashed_with": crashed,
        "daemon_exit_code": code,
        "drained_after_steady_s": drained_at,
        "upload_exit_code": upload.returncode,
        "events": events,
        "growth": verdicts,
        "rss_mib": {
            "start": round(samples[0]["rss_kib"] / 1024, 2) if samples else None,
            "max": round(max(s["rss_kib"] for s in samples) / 1024, 2) if samples else None,
            "end": round(samples[-1]["rss_kib"] / 1024, 2) if samples else None,
        },
        "samples": samples,
    }
    failures = [f"{key} growing" for key, verdict in verdicts.items() if verdict["growing"]]
    if missing:
        failures.append(f"{len(missing)} heartbeats never reached central")
    if left["pending"]:
        failures.append(f"{left['pending']} heartbeats left in pending/")
    if crashed is not None:
        failures.append(f"daemon exited early with {crashed}")
    elif code != 0:
        failures.append(f"daemon exit code {code}")
    if not seqs:
        failures.append("no ticks logged")
    report["failures"] = failures
    report["passed"] = not failures
    return report


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--daemon":
        return run_daemon_with_probe(Path(sys.argv[2]), sys.argv[3:])
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    interval = float(os.environ.get("SOAK_INTERVAL", "0.1"))
    seed = int(os.environ.get("SOAK_SEED", "1"))
    print(f"soak: {seconds:g} s at a {interval:g} s interval against a flapping central ...", file=sys.stderr)
    report = soak(seconds, interval, seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'series':<10} {'first':>10} {'end':>10} {'slope/h':>10}  verdict")
    for key, verdict in report["growth"].items():
        print(
            f"{key:<10} {verdict.get('first', '-'):>10} {verdict.get('end', '-'):>10} "
            f"{verdict.get('slope_per_hour', '-'):>10}  {verdict['verdict']}"
        )
    rss = report["growth"]["rss_kib"]
    if "slope_mib_per_day" in rss:
        print(
            f"rss slope {rss['slope_mib_per_day']} MiB/day (target < 1; this run's detection limit "
            f"{rss['detection_limit_mib_per_day']} MiB/day)"
        )
    print(
        f"ticks {report['ticks_logged']} of ~{report['ticks_expected']}; central got {report['central_ids']} ids; "
        f"missing {report['missing_at_central']}; left {report['left_in_spool']}; "
        f"daemon exit {report['daemon_exit_code']}; central requests {report['central_requests_by_mode']}"
    )
    print("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    print(f"report: {RESULTS / 'soak.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
