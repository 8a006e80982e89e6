"""What the sent ledger costs: CPU per tick and drain throughput, with and without it, in one run.

- ``tick``: two ``agent run`` processes (1 s interval) side by side over the same window (so noise
  hits both), each delivering to a local central and pushing a local Kuma every
  tick (two ledger records per tick), one with ``ledger.enabled = false``. CPU
  from ``/proc/<pid>/task/*/schedstat`` divided by the ticks each logged.
- ``drain``: bench/drain_bench.py's full drain (``Spool.batch`` -> ``CentralSink.send``
  -> ``Spool.settle``) of the same backlog, alternating rounds without the ledger,
  with it (synced within 1 s, the default), and with kept bodies; each side's best
  round by wall time and by this process's CPU time (all threads, the ledger's
  writer included; the local central runs in another process), the writer
  flushed and closed inside the timing.

Ratios are ``with / without`` (for the drain's wall time, ``without / with``): 1.10 is
the +10 % budget. On a shared machine the drain's wall time swings by 2x between
rounds; its CPU time (``cpu_ratio_with_ledger``) is the figure to judge by.

    .venv/bin/python bench/ledger_bench.py [--count 20000] [--rounds 3] [--tick-interval 1] [--tick-seconds 60]
                                           [--only drain|tick]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from drain_bench import PATH, _serve, drain, fill_spool, heartbeats  # run as a script: bench/ is on sys.path
from idle import agent_command, agent_env, count_ticks, cpu_sched_s, start_central, stop, wait_for

from agent.ledger import Ledger
from agent.ledger_hook import LedgerWriter, sending


class _Kuma(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _start(work: Path, name: str, interval: float, central: str, kuma: str, ledger: bool) -> tuple[Any, Path]:
    log = work / f"{name}.log"
    env = agent_env(
        work / f"{name}-state",
        POP_AGENT_SINKS__CENTRAL__URL=central,
        POP_AGENT_SINKS__CENTRAL__TOKEN="bench-token",
        KUMA_PUSH_URL=kuma,
        POP_AGENT_LEDGER__ENABLED="true" if ledger else "false",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            # Every tick logged (debug) in both agents, so ticks are counted from the lines alike.
            agent_command("run", "--interval", str(interval), "--telemetry", "on", "--log-level", "debug"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            cwd=work,
        )
    return proc, log


def tick_cost(work: Path, interval: float, seconds: float) -> dict[str, Any]:
    """CPU per tick of the daemon with and without the ledger, side by side."""
    central_server, central = start_central()
    kuma_server = ThreadingHTTPServer(("127.0.0.1", 0), _Kuma)
    threading.Thread(target=kuma_server.serve_forever, daemon=True).start()
    kuma = f"http://127.0.0.1:{kuma_server.server_address[1]}/api/push/benchtoken?status=up&msg=OK&ping="
    agents = {
        name: _start(work, name, interval, central, kuma, ledger=name == "with_ledger")
        for name in ("without_ledger", "with_ledger")
    }
    try:
        for proc, log in agents.values():
            if not wait_for(lambda log=log, proc=proc: count_ticks(log) >= 3 or proc.poll() is not None, 60):
                raise RuntimeError("agent did not tick")
        before = {name: (count_ticks(log), cpu_sched_s(proc.pid)) for name, (proc, log) in agents.items()}
        time.sleep(seconds)
        after = {name: (count_ticks(log), cpu_sched_s(proc.pid)) for name, (proc, log) in agents.items()}
    finally:
        codes = {name: stop(proc) for name, (proc, _) in agents.items()}
        central_server.shutdown()
        kuma_server.shutdown()
    report: dict[str, Any] = {"interval_s": interval, "seconds": seconds}
    for name in agents:
        ticks = after[name][0] - before[name][0]
        report[name] = {
            "ticks": ticks,
            "cpu_ms_per_tick": round((after[name][1] - before[name][1]) / max(ticks, 1) * 1000, 3),
            "exit_code": codes[name],
        }
    records = sum(1 for _ in (work / "with_ledger-state" / "ledger").glob("segment-*"))
    report["with_ledger"]["segments"] = records
    report["ratio"] = round(report["with_ledger"]["cpu_ms_per_tick"] / report["without_ledger"]["cpu_ms_per_tick"], 3)
    return report


async def _drain(url: str, root: Path, ledger_dir: Path | None, keep_bodies: bool) -> int:
    if ledger_dir is None:
        return await drain(url, root)
    writer = LedgerWriter(
        Ledger(ledger_dir, max_age=30 * 86_400, max_bytes=64 << 20, keep_bodies=keep_bodies, bodies_max_bytes=1 << 30)
    )
    try:
        with sending(writer, "central"):
            return await drain(url, root)
    finally:
        await writer.aclose()


async def drain_cost(url: str, work: Path, count: int, rounds: int) -> dict[str, Any]:
    """Drain throughput without the ledger, with it, and with kept bodies: alternating rounds, best of each."""
    docs = heartbeats(count)
    sides = {"without_ledger": (False, False), "with_ledger": (True, False), "with_kept_bodies": (True, True)}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for round_no in range(rounds):
        for name, (ledger, keep) in sides.items():
            root = work / f"spool-{name}-{round_no}"
            fill_spool(root, docs)
            ledger_dir = work / f"ledger-{name}-{round_no}" if ledger else None
            started, cpu_started = time.perf_counter(), time.process_time()
            delivered = await _drain(url, root, ledger_dir, keep)
            seconds = time.perf_counter() - started
            cpu[name].append(time.process_time() - cpu_started)
            if delivered != count:
                raise SystemExit(f"{name}: delivered {delivered} of {count}")
            rates[name].append(count / seconds)
            print(f"drain {name}: {count / seconds:,.0f} heartbeats/s", file=sys.stderr)
            shutil.rmtree(root, ignore_errors=True)
    best = {name: round(max(values)) for name, values in rates.items()}
    least_cpu = {name: round(min(values), 3) for name, values in cpu.items()}
    return {
        "heartbeats": count,
        "rounds": rounds,
        "hb_per_s": best,
        "cpu_s": least_cpu,
        "time_ratio_with_ledger": round(best["without_ledger"] / best["with_ledger"], 3),
        "time_ratio_with_kept_bodies": round(best["without_ledger"] / best["with_kept_bodies"], 3),
        "cpu_ratio_with_ledger": round(least_cpu["with_ledger"] / least_cpu["without_ledger"], 3),
        "cpu_ratio_with_kept_bodies": round(least_cpu["with_kept_bodies"] / least_cpu["without_ledger"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    # At 1 s every tick's two records share one sync, as they do at the default 10 s.
    parser.add_argument("--tick-interval", type=float, default=1.0)
    parser.add_argument("--tick-seconds", type=float, default=60.0)
    parser.add_argument("--only", choices=("drain", "tick"), help="run one of the two parts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}{PATH}"
        report: dict[str, Any] = {}
        if args.only != "tick":
            report["drain"] = asyncio.run(drain_cost(url, work, args.count, args.rounds))
        if args.only != "drain":
            report["tick"] = tick_cost(work, args.tick_interval, args.tick_seconds)
    finally:
        server.terminate()
        server.join(5)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
