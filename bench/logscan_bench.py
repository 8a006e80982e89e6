"""Log scanning: the requests collector against ``awk '{print $1}' | sort -u | wc -l``, by CPU-seconds.

Generates a combined-format access log (default 1,000,000 lines, 50,000 distinct
addresses, one in five IPv6, stamped over one hour) and the same log as JSON lines,
then, in the same run and ``--repeat`` times over (best of each kept):

- the shell pipeline, its CPU-seconds summed over its processes (user + system of
  the children, from ``getrusage(RUSAGE_CHILDREN)``: awk and sort share the cores,
  so wall time would flatter it);
- the collector reading the whole file tick by tick as on a first start, with
  ``now`` ten minutes after the last line (lines old enough for the bulk path), by
  the CPU-seconds of this process (``time.process_time``: the collector reads in the
  calling thread here);
- the same with ``now`` at the last line (the last ten minutes take the general path);
- the JSON log, the bulk way.

Then the requests collector at 1,000 requests/s: 10,000 new lines stamped in the
last ten seconds before each 10 s tick, clients drawn from the same 50,000, CPU per
tick over ``--ticks`` ticks after ``--warmup`` ticks (median and mean), beside what
the pipeline would spend on 10,000 lines at its rate in this run.

Prints one JSON object: CPU-seconds and lines per CPU-second of each, the ratio
to the pipeline (ours over its lines per CPU-second), the unique counts against
the truth, and the state per window (in memory and as saved).

    python bench/logscan_bench.py [--lines N] [--distinct N] [--repeat N] [--keep DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collectors import hll
from collectors.requests import RequestsCollector, RequestsSettings

START = 1_795_330_800  # 2026-11-22T04:20:00Z
SPAN = 3600
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
KEY = b"bench-key-" * 4
TICK_S = 10
RATE = 1000


def stamp_of(t: int) -> str:
    """A combined-format time stamp, UTC."""
    g = time.gmtime(t)
    return f"{g.tm_mday:02d}/{MONTHS[g.tm_mon - 1]}/{g.tm_year}:{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000"


def addresses_of(distinct: int, seed: int = 1) -> list[str]:
    """``distinct`` client addresses, one in five IPv6."""
    rng = random.Random(seed)
    out = []
    for i in range(distinct):
        if i % 5 == 0:
            out.append(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::{rng.randrange(1, 65536):x}")
        else:
            out.append(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
    return out


def generate(path: Path, lines: int, distinct: int, seed: int = 1, fmt: str = "combined") -> None:
    """Write the test log: ``distinct`` addresses drawn uniformly, time stamps increasing."""
    rng = random.Random(seed)
    addresses = addresses_of(distinct, seed)
    statuses = (200, 200, 200, 301, 304, 404, 500)
    stamps: dict[int, str] = {}
    with path.open("w") as out:
        for n in range(lines):
            t = START + n * SPAN // lines
            stamp = stamps.get(t)
            if stamp is None:
                stamp = stamps[t] = stamp_of(t)
            address, status = addresses[rng.randrange(distinct)], statuses[n % 7]
            if fmt == "json":
                iso = datetime.fromtimestamp(t, UTC).isoformat()
                out.write(
                    f'{{"time": "{iso}", "remote_addr": "{address}", "request": "GET /vault/{n % 977} HTTP/1.1", '
                    f'"status": {status}, "bytes": {n % 5000}, "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}}\n'
                )
                continue
            out.write(
                f'{address} - - [{stamp}] "GET /vault/{n % 977} HTTP/1.1" '
                f'{status} {n % 5000} "-" "Mozilla/5.0 (X11; Linux x86_64)"\n'
            )


def children_cpu() -> float:
    """User + system CPU-seconds of the waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pipeline(path: Path) -> tuple[float, int]:
    """CPU-seconds of ``awk '{print $1}' | sort -u | wc -l`` over ``path`` (all its processes), and its count."""
    before = children_cpu()
    out = subprocess.run(
        ["sh", "-c", f"awk '{{print $1}}' '{path}' | sort -u | wc -l"], check=True, capture_output=True, text=True
    ).stdout
    return children_cpu() - before, int(out.strip())


class Clock:
    """A clock that stands still until the bench moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def collector_for(path: Path, fmt: str, clock: Clock, max_lines: int = 200_000) -> RequestsCollector:
    """A requests collector on ``path`` reading ``clock``."""
    cfg = RequestsSettings(access_log=path, format=fmt, max_lines_per_tick=max_lines)
    return RequestsCollector(cfg, interval=float(TICK_S), sketch_key=KEY, clock=clock)


def scan(path: Path, now: float, lines: int, *, fmt: str = "combined") -> tuple[float, RequestsCollector]:
    """CPU-seconds of reading the whole log tick by tick (200,000 lines a tick), and the collector."""
    collector = collector_for(path, fmt, Clock(now))
    log = collector.logs["access"]
    started = time.process_time()
    while log.total + log.malformed < lines:
        collector.collect_blocking()
    return time.process_time() - started, collector


def steady(path: Path, distinct: int, warmup: int, ticks: int) -> list[float]:
    """CPU-seconds of each measured tick at 1,000 requests/s (10,000 lines in the 10 s before each tick)."""
    rng = random.Random(2)
    addresses = addresses_of(distinct)
    statuses = (200, 200, 200, 301, 304, 404, 500)
    clock = Clock(START + 2 * SPAN)
    path.write_text("")
    collector = collector_for(path, "combined", clock, max_lines=100_000)
    collector.collect_blocking()
    cpu = []
    for tick in range(warmup + ticks):
        with path.open("a") as out:
            for n in range(TICK_S * RATE):
                t = int(clock.now) + n // RATE
                out.write(
                    f'{addresses[rng.randrange(distinct)]} - - [{stamp_of(t)}] "GET /vault/{n % 977} HTTP/1.1" '
                    f'{statuses[n % 7]} {n % 5000} "-" "Mozilla/5.0 (X11; Linux x86_64)"\n'
                )
        clock.now += TICK_S
        started = time.process_time()
        collector.collect_blocking()
        if tick >= warmup:
            cpu.append(time.process_time() - started)
    log = collector.logs["access"]
    assert log.total == (warmup + ticks) * TICK_S * RATE and log.malformed == 0
    return cpu


def window(log: object, name: str, saved: dict[str, object]) -> dict[str, int]:
    """One window's bucket size, sketches, bytes in memory and bytes as saved."""
    ring = getattr(log.uniques, name)  # type: ignore[attr-defined]
    return {
        "bucket_s": ring.bucket,
        "buckets": len(ring.buckets),
        "memory_bytes": ring.memory_bytes(),
        "saved_bytes": len(json.dumps(saved[name])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="ticks at 1,000 requests/s before measuring")
    parser.add_argument("--ticks", type=int, default=30, help="ticks at 1,000 requests/s measured")
    parser.add_argument("--keep", type=Path, help="write the logs here instead of a temporary directory")
    parser.add_argument("--reuse", action="store_true", help="with --keep: use the logs already there, if any")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = (args.keep or Path(tmp)) / "access.log"
        json_path = path.with_name("access.json.log")
        if not (args.reuse and path.exists()):
            generate(path, args.lines, args.distinct)
        if not (args.reuse and json_path.exists()):
            generate(json_path, args.lines, args.distinct, fmt="json")
        end = START + SPAN
        pipe, bulk, recent, as_json = [], [], [], []
        for _ in range(args.repeat):  # interleaved, so that a busy moment of the machine hits them alike
            pipe.append(pipeline(path))
            bulk.append(scan(path, end + 600, args.lines))
            recent.append(scan(path, end, args.lines)[0])
            as_json.append(scan(json_path, end + 600, args.lines, fmt="json")[0])
        pipe_s, pipe_count = min(r[0] for r in pipe), pipe[0][1]
        bulk_s, collector = min(b[0] for b in bulk), bulk[0][1]
        recent_s, json_s = min(recent), min(as_json)
        tick_cpu = steady(Path(tmp) / "steady.log", args.distinct, args.warmup, args.ticks)
        log = collector.logs["access"]
        samples = {s.name: s.value for s in collector.collect_blocking() if not s.labels}
        saved = collector.save_state()["logs"]["access"]  # type: ignore[index]
        pipe_per_line = pipe_s / args.lines

        def rate(cpu_s: float) -> dict[str, float]:
            return {
                "cpu_s": round(cpu_s, 3),
                "lines_per_cpu_s": round(args.lines / cpu_s),
                "ratio_to_pipeline": round(pipe_s / cpu_s, 2),
            }

        result = {
            "lines": args.lines,
            "distinct": args.distinct,
            "log_bytes": path.stat().st_size,
            "json_log_bytes": json_path.stat().st_size,
            "repeat": args.repeat,
            "pipeline": {"cpu_s": round(pipe_s, 3), "lines_per_cpu_s": round(args.lines / pipe_s), "count": pipe_count},
            "pipeline_cpu_s_runs": [round(r[0], 3) for r in pipe],
            "bulk": rate(bulk_s),
            "bulk_cpu_s_runs": [round(b[0], 3) for b in bulk],
            "recent": rate(recent_s),
            "json": rate(json_s),
            # The headline figures, under the names the report table reads.
            "collector_lines_per_cpu_s": round(args.lines / bulk_s),
            "ratio_to_pipeline": round(pipe_s / bulk_s, 2),
            "ratio_recent_to_pipeline": round(pipe_s / recent_s, 2),
            "ratio_json_to_pipeline": round(pipe_s / json_s, 2),
            "tick_at_1000_per_s": {
                "lines_per_tick": TICK_S * RATE,
                "ticks": len(tick_cpu),
                "cpu_ms_median": round(1000 * statistics.median(tick_cpu), 2),
                "cpu_ms_mean": round(1000 * statistics.fmean(tick_cpu), 2),
                "cpu_ms_max": round(1000 * max(tick_cpu), 2),
                "pipeline_ms_same_lines": round(1000 * pipe_per_line * TICK_S * RATE, 2),
                "share_of_one_core": round(statistics.fmean(tick_cpu) / TICK_S, 5),
            },
            "unique_ips_1h": samples["unique_ips_1h"],
            "unique_ips_24h": samples["unique_ips_24h"],
            "unique_error_pct": round(100 * (samples["unique_ips_24h"] - args.distinct) / args.distinct, 3),
            "window_1h": window(log, "fine", saved),  # type: ignore[arg-type]
            "window_24h": window(log, "coarse", saved),  # type: ignore[arg-type]
            "sketch_bytes": hll.SKETCH_BYTES,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
