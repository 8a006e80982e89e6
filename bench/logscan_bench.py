"""Log scanning: the requests collector against ``awk '{print $1}' | sort -u | wc -l`` on one file.

Generates a combined-format access log (default 1,000,000 lines, 50,000 distinct
addresses, one in five IPv6, stamped over one hour), then in the same run:

- the shell pipeline (best wall time of ``--repeat`` runs),
- the collector reading the whole file tick by tick as on a first start, with
  ``now`` ten minutes after the last line (lines old enough for the bulk path),
- the same with ``now`` at the last line (every line on the per-second path),
- the bulk run again on the pure-Python path (an agent built without a C
  compiler, so without ``collectors._hllscan``),
- the same log written as JSON lines (``format = "json"``), read the bulk way,
- one more bulk run under ``tracemalloc`` for peak Python memory (the C
  module's 2 MiB cache is a ``bytearray``, so it is counted).

Prints one JSON object: lines/s of each, the ratio to the pipeline, the unique
count against the truth, and the state per window (in memory and as saved).

    python bench/logscan_bench.py [--lines N] [--distinct N] [--repeat N] [--keep DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.settings import RequestsSettings
from collectors import hll
from collectors.requests import RequestsCollector

START = 1_795_330_800  # 2026-11-22T04:20:00Z
SPAN = 3600
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def generate(path: Path, lines: int, distinct: int, seed: int = 1, fmt: str = "combined") -> None:
    """Write the test log: ``distinct`` addresses drawn uniformly, time stamps increasing."""
    rng = random.Random(seed)
    addresses = []
    for i in range(distinct):
        if i % 5 == 0:
            addresses.append(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::{rng.randrange(1, 65536):x}")
        else:
            addresses.append(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
    statuses = (200, 200, 200, 301, 304, 404, 500)
    stamps: dict[int, str] = {}
    with path.open("w") as out:
        for n in range(lines):
            t = START + n * SPAN // lines
            stamp = stamps.get(t)
            if stamp is None:
                g = time.gmtime(t)
                day = f"{g.tm_mday:02d}/{MONTHS[g.tm_mon - 1]}/{g.tm_year}"
                stamp = stamps[t] = f"{day}:{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000"
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


def pipeline(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    out = subprocess.run(
        ["sh", "-c", f"awk '{{print $1}}' '{path}' | sort -u | wc -l"], check=True, capture_output=True, text=True
    ).stdout
    return time.perf_counter() - started, int(out.strip())


def scan(
    path: Path, now: float, lines: int, *, fmt: str = "combined"
) -> tuple[float, RequestsCollector]:
    cfg = RequestsSettings(access_log=path, format=fmt, max_lines_per_tick=200_000)
    collector = RequestsCollector(cfg, interval=10.0, sketch_key=b"bench-key-" * 4, clock=lambda: now)
    log = collector.logs["access"]
    started = time.perf_counter()
    while log.total + log.malformed < lines:
        collector.collect_blocking()
    return time.perf_counter() - started, collector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the log here instead of a temporary directory")
    parser.add_argument("--reuse", action="store_true", help="with --keep: use the log already there, if any")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = (args.keep or Path(tmp)) / "access.log"
        json_path = path.with_name("access.json.log")
        if not (args.reuse and path.exists()):
            generate(path, args.lines, args.distinct)
        if not (args.reuse and json_path.exists()):
            generate(json_path, args.lines, args.distinct, fmt="json")
        end = START + SPAN
        runs = [pipeline(path) for _ in range(args.repeat)]
        pipe_s, pipe_count = min(r[0] for r in runs), runs[0][1]
        bulk = [scan(path, end + 600, args.lines) for _ in range(args.repeat)]
        bulk_s, collector = min(b[0] for b in bulk), bulk[0][1]
        recent_s = min(scan(path, end, args.lines)[0] for _ in range(args.repeat))
        json_s = min(scan(json_path, end + 600, args.lines, fmt="json")[0] for _ in range(args.repeat))
        tracemalloc.start()
        scan(path, end + 600, args.lines)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        log = collector.logs["access"]
        samples = {s.name: s.value for s in collector.collect_blocking() if not s.labels}
        saved = collector.save_state()["logs"]["access"]  # type: ignore[index]
        result = {
            "lines": args.lines,
            "distinct": args.distinct,
            "log_bytes": path.stat().st_size,
            "pipeline_lines_per_s": round(args.lines / pipe_s),
            "pipeline_count": pipe_count,
            "collector_lines_per_s": round(args.lines / bulk_s),
            "ratio_to_pipeline": round(pipe_s / bulk_s, 2),
            "collector_recent_lines_per_s": round(args.lines / recent_s),
            "ratio_recent_to_pipeline": round(pipe_s / recent_s, 2),
            "json_lines_per_s": round(args.lines / json_s),
            "ratio_json_to_pipeline": round(pipe_s / json_s, 2),
            "peak_python_mib": round(peak / 2**20, 2),
            "unique_ips_1h": samples["unique_ips_1h"],
            "unique_ips_24h": samples["unique_ips_24h"],
            "unique_error_pct": round(100 * (samples["unique_ips_24h"] - args.distinct) / args.distinct, 3),
            "window_1h": {
                "bucket_s": log.uniques.fine.bucket,
                "buckets": len(log.uniques.fine.buckets),
                "memory_bytes": log.uniques.fine.memory_bytes(),
                "saved_bytes": len(json.dumps(saved["fine"])),  # type: ignore[index]
            },
            "window_24h": {
                "bucket_s": log.uniques.coarse.bucket,
                "buckets": len(log.uniques.coarse.buckets),
                "memory_bytes": log.uniques.coarse.memory_bytes(),
                "saved_bytes": len(json.dumps(saved["coarse"])),  # type: ignore[index]
            },
            "sketch_bytes": hll.SKETCH_BYTES,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
