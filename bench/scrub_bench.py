"""Scrub time per heartbeat, beside the structural floor, measured in one run.

The heartbeat is the shape a POP sends: every metric the build declares (unlabelled
ones in ``metrics``; labelled ones as series with a few mounts, status classes and
logs), and every registered collector in ``collectors``. Each round, in turn:

- ``floor``: ``Heartbeat.model_validate`` alone, the structural check every scrub pays;
- ``steady``: ``scrub`` of a fresh heartbeat (new id and time), as the daemon does each
  tick: the tripwire remembers the strings it passed, so recurring names cost little;
- ``cold``: ``scrub`` with that memory emptied first, as for the first heartbeat of a
  process or a foreign backlog.

``--compare DIR`` measures the same in another tree (say ``git archive`` of the commit
before a change) in a child process, round by round alternating with this tree's, so
both see the same machine noise.

    python bench/scrub_bench.py [--heartbeats 2000] [--rounds 5] [--compare DIR]

Prints one JSON object; times are microseconds per heartbeat (median over rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
LABEL_VALUES = {"mount": ["/", "/var", "/srv/data-01", "/boot/efi"], "class": ["2xx", "4xx", "5xx"], "log": ["access"]}


def _heartbeats(count: int) -> tuple[list[dict[str, Any]], Any]:
    """``count`` heartbeats of a full build, and the allowlist that judges them."""
    from agent import heartbeat
    from agent.app import declared_metrics
    from agent.plugins import collector_refs
    from agent.sample import Sample

    allowed = declared_metrics()
    samples: list[Sample] = []
    for spec in allowed.values():
        if not spec.labels:
            samples.append(Sample(spec.name, 12.5))
            continue
        for value in LABEL_VALUES[spec.labels[0]]:
            samples.append(Sample.of(spec.name, 12.5, **{spec.labels[0]: value}))
    collectors = {ref.name: "ok" for ref in collector_refs()}
    docs = [
        heartbeat.build(
            pop="ams1",
            seq=seq,
            edition="commercial",
            version="1.4.2",
            interval=10.0,
            samples=samples,
            collectors=collectors,
            now_ns=1_795_000_000_000_000_000 + seq * 10**10,
        )
        for seq in range(count)
    ]
    return docs, allowed


def measure(count: int) -> dict[str, float]:
    """Microseconds per heartbeat for the floor, a steady scrub and a cold scrub, in this process's tree."""
    from agent import scrubber
    from agent.heartbeat import Heartbeat

    docs, allowed = _heartbeats(count)
    for doc in docs[:50]:
        scrubber.scrub(doc, allowed)  # warm imports and the regex caches
    started = time.perf_counter()
    for doc in docs:
        Heartbeat.model_validate(doc)
    floor = time.perf_counter() - started
    started = time.perf_counter()
    for doc in docs:
        scrubber.scrub(doc, allowed)
    steady = time.perf_counter() - started
    started = time.perf_counter()
    for doc in docs:
        scrubber._clean.clear()
        scrubber.scrub(doc, allowed)
    cold = time.perf_counter() - started
    return {
        name: round(value / count * 1e6, 1) for name, value in (("floor", floor), ("steady", steady), ("cold", cold))
    }


def _child(tree: Path, count: int) -> dict[str, float]:
    code = f"import sys, json; sys.path[:0] = [{str(tree)!r}, {str(ROOT / 'bench')!r}]; import scrub_bench; "
    code += f"print(json.dumps(scrub_bench.measure({count})))"
    done = subprocess.run([PYTHON, "-c", code], cwd=tree, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def run(count: int, rounds: int, compare: Path | None) -> dict[str, Any]:
    trees = {"this": ROOT, **({"compare": compare} if compare else {})}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            samples[name].append(_child(tree, count))
    report: dict[str, Any] = {"heartbeats": count, "rounds": rounds, "unit": "us_per_heartbeat"}
    for name, got in samples.items():
        report[name] = {key: statistics.median(s[key] for s in got) for key in got[0]}
    this = report["this"]
    report["ratios"] = {
        "steady_vs_floor": round(this["steady"] / this["floor"], 2),
        "cold_vs_floor": round(this["cold"] / this["floor"], 2),
    }
    if compare:
        other = report["compare"]
        report["ratios"]["steady_vs_compare"] = round(this["steady"] / other["steady"], 2)
        report["ratios"]["cold_vs_compare"] = round(this["cold"] / other["cold"], 2)
        report["ratios"]["compare_steady_vs_its_floor"] = round(other["steady"] / other["floor"], 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--heartbeats", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another tree to measure in the same run")
    args = parser.parse_args()
    print(json.dumps(run(args.heartbeats, args.rounds, args.compare), indent=2))


if __name__ == "__main__":
    main()
