"""Start-up: wall time to the first byte of output and to exit, beside bare Python, in one run.

Each round runs, in turn (so machine noise hits them alike):

- ``python -c pass``: the interpreter alone;
- ``python -c "import psutil, aiohttp, structlog, pydantic_settings, tenacity"``: the runtime dependencies;
- ``agent --version``: the CLI with no settings and no collection;
- ``agent --once``: one whole tick printed (its CPU collector waits a short first window).

For each, the median over ``--runs`` rounds of the time from spawn to the first byte on
stdout and to exit (the bare commands print one byte at the end so both figures exist).
``agent`` is ``python -m agent`` from the checkout's virtual environment, the same code the
console script runs.

    python bench/startup.py [--runs 15]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from idle import DEPS, PYTHON, agent_command, agent_env, python_env


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Seconds to the first stdout byte and to exit, and the exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - started
    proc.stdout.read()
    code = proc.wait()
    return first, time.perf_counter() - started, code


def run(runs: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    try:
        env = agent_env(work / "state")
        plain = python_env()
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "python_pass": ([PYTHON, "-c", "print(end='.')"], plain),
            "python_import_deps": ([PYTHON, "-c", f"import {DEPS}; print(end='.')"], plain),
            "agent_version": (agent_command("--version"), env),
            "agent_once": (agent_command("--once"), env),
        }
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cases}
        for argv, case_env in cases.values():
            timed(argv, case_env)  # warm the page cache and the byte-code cache
        for _ in range(runs):
            for name, (argv, case_env) in cases.items():
                samples[name].append(timed(argv, case_env))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {"runs": runs}
    for name, got in samples.items():
        report[name] = {
            "first_byte_ms": round(statistics.median(s[0] for s in got) * 1000, 1),
            "exit_ms": round(statistics.median(s[1] for s in got) * 1000, 1),
            "exit_codes": sorted({s[2] for s in got}),
        }
    once, deps, bare = report["agent_once"], report["python_import_deps"], report["python_pass"]
    report["ratios"] = {
        "agent_once_first_byte_vs_import_deps": round(once["first_byte_ms"] / deps["exit_ms"], 2),
        "agent_once_exit_vs_import_deps": round(once["exit_ms"] / deps["exit_ms"], 2),
        "import_deps_vs_python_pass": round(deps["exit_ms"] / bare["exit_ms"], 2),
        "agent_once_beyond_import_deps_ms": round(once["exit_ms"] - deps["exit_ms"], 1),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(run(args.runs), indent=2))


if __name__ == "__main__":
    main()
