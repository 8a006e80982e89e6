"""Spool throughput on this machine, as ratios against a raw loop measured in the same run.

    .venv/bin/python bench/spool_bench.py [--writes 1000] [--backlog 100000] [--batch 500]

Prints one JSON object:
- ``put_per_s`` / ``raw_per_s``: Spool.put against a bare write+fsync+rename+dir-fsync
  loop of the same bytes, in alternating rounds (median of each); ``put_ratio``
  is the figure that matters (target >= 0.8).
- ``open_s``: building the index of the backlog when the spool opens.
- ``drain_per_s``: batch + settle (which takes the files out of pending/ and fsyncs
  the directory once per batch) over the whole backlog, no HTTP (target well
  above 10,000/s). ``raw_unlink_per_s`` is there for context: on a filesystem
  mounted with ``discard`` a bare unlink is slow, which is why settled files are
  renamed into trash/ and removed by a background thread. ``raw_drain_per_s`` is
  the bare loop of the same system calls (open, read, parse, rename, one fsync
  per batch) on an equal backlog, and ``drain_ratio`` the spool against it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.settings import SpoolSettings
from agent.spool import Spool


def heartbeat(n: int) -> tuple[str, bytes]:
    """A realistic heartbeat of about 700 bytes with a UUIDv7-shaped id."""
    ms = 1_700_000_000_000 + n
    hex_ = f"{ms:012x}7000{n:016x}"
    doc_id = f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:32]}"
    doc = {
        "schema": "pop-heartbeat/1",
        "id": doc_id,
        "pop": "ams1",
        "ts": "2026-11-22T07:00:00.123Z",
        "seq": n,
        "edition": "community",
        "agent_version": "0.1.0",
        "interval_s": 10.0,
        "metrics": {f"metric_{i}": i * 1.5 for i in range(12)} | {"requests_total": n},
        "series": [{"name": "disk_used_percent", "labels": {"mount": m}, "value": 41.2} for m in ("/", "/var")],
        "collectors": {"cpu": "ok", "disk": "ok", "vaults": "ok"},
    }
    return doc_id, json.dumps(doc).encode()


def raw_round(root: Path, docs: list[tuple[str, bytes]]) -> float:
    """Writes per second of the bare durable-write loop the spool is built on."""
    tmp, pending = root / "tmp", root / "pending"
    tmp.mkdir(parents=True)
    pending.mkdir()
    dir_fd = os.open(pending, os.O_RDONLY | os.O_DIRECTORY)
    start = time.perf_counter()
    for doc_id, raw in docs:
        path = f"{tmp}/{doc_id}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, raw)
        os.fsync(fd)
        os.close(fd)
        os.rename(path, f"{pending}/{doc_id}.json")
        os.fsync(dir_fd)
    elapsed = time.perf_counter() - start
    os.close(dir_fd)
    return len(docs) / elapsed


def spool_round(root: Path, docs: list[tuple[str, bytes]]) -> float:
    """Writes per second through Spool.put."""
    spool = Spool(root, SpoolSettings(), sinks=("central",))
    spool.open()
    start = time.perf_counter()
    for doc_id, raw in docs:
        spool.put(doc_id, raw)
    elapsed = time.perf_counter() - start
    spool.close()
    return len(docs) / elapsed


def measure_writes(base: Path, writes: int, rounds: int) -> dict[str, float]:
    docs = [heartbeat(n) for n in range(writes)]
    raw_rates, put_rates = [], []
    for i in range(rounds):
        # Alternate which goes first, so drift in the machine's load hits both alike,
        # and settle the disk (removals trim blocks on this kind of mount) in between.
        order = [("raw", raw_round, raw_rates), ("spool", spool_round, put_rates)]
        for name, measure, rates in order if i % 2 == 0 else reversed(order):
            rates.append(measure(base / f"{name}{i}", docs))
            shutil.rmtree(base / f"{name}{i}")
            os.sync()
    raw, put = statistics.median(raw_rates), statistics.median(put_rates)
    return {"raw_per_s": round(raw), "put_per_s": round(put), "put_ratio": round(put / raw, 3)}


def measure_unlink(base: Path, count: int) -> dict[str, float]:
    """Bare unlinks per second of flushed heartbeat-sized files: what a delete-per-file drain is bound by."""
    root = base / "unlink"
    root.mkdir()
    _, raw = heartbeat(0)
    for n in range(count):
        (root / str(n)).write_bytes(raw)
    os.sync()
    start = time.perf_counter()
    for n in range(count):
        os.unlink(root / str(n))
    rate = count / (time.perf_counter() - start)
    root.rmdir()
    return {"raw_unlink_per_s": round(rate)}


def fill(root: Path, backlog: int) -> int:
    """Spool ``backlog`` heartbeats quickly (no fsync, then one sync); returns their bytes."""
    filler = Spool(root, SpoolSettings(max_files=max(backlog, 10)), fsync=False)
    filler.open()
    size = 0
    for n in range(backlog):
        doc_id, raw = heartbeat(n)
        filler.put(doc_id, raw)
        size += len(raw)
    filler.close()
    os.sync()
    return size


def measure_raw_drain(base: Path, backlog: int, batch: int) -> dict[str, float]:
    """The floor for a drain: open, read, parse and rename every file, one directory fsync per batch."""
    root = base / "rawdrain"
    fill(root, backlog)
    pending, trash = root / "pending", root / "trash"
    names = sorted(os.listdir(pending))
    dir_fd = os.open(pending, os.O_RDONLY | os.O_DIRECTORY)
    start = time.perf_counter()
    for first in range(0, len(names), batch):
        chunk = names[first : first + batch]
        for name in chunk:
            fd = os.open(pending / name, os.O_RDONLY)
            json.loads(os.read(fd, 1 << 16))
            os.close(fd)
        for name in chunk:
            os.rename(pending / name, trash / name)
        os.fsync(dir_fd)
    elapsed = time.perf_counter() - start
    os.close(dir_fd)
    shutil.rmtree(root)
    os.sync()
    return {"raw_drain_per_s": round(len(names) / elapsed)}


def measure_drain(base: Path, backlog: int, batch: int) -> dict[str, float]:
    root = base / "drain"
    size = fill(root, backlog)

    start = time.perf_counter()
    spool = Spool(root, SpoolSettings(max_files=max(backlog, 10)), sinks=("central",))
    spool.open()
    opened = time.perf_counter()
    drained = 0
    while items := spool.batch("central", batch, 8 << 20):
        spool.settle("central", [p.id for p in items], {})
        drained += len(items)
    elapsed = time.perf_counter() - opened
    left = spool.stats().pending
    spool.close()
    return {
        "backlog": backlog,
        "backlog_bytes": size,
        "batch": batch,
        "open_s": round(opened - start, 3),
        "drained": drained,
        "left": left,
        "drain_s": round(elapsed, 3),
        "drain_per_s": round(drained / elapsed),
    }


def main() -> None:
    """Run both measurements and print them as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=1000, help="writes per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of raw and spool writes")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    try:
        result = {"dir": str(base)} | measure_writes(base, args.writes, args.rounds)
        result |= measure_unlink(base, 5000)
        result |= measure_raw_drain(base, args.backlog, args.batch)
        result |= measure_drain(base, args.backlog, args.batch)
        result["drain_ratio"] = round(result["drain_per_s"] / result["raw_drain_per_s"], 3)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
