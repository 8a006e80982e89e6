"""``make bench``: every benchmark in one run, one JSON report, a short table of ratios.

Each script runs as a subprocess, one after the other (so they do not measure each
other), and prints one JSON object on stdout; its stderr goes to
``bench/results/<name>.log``. A script that fails or times out is recorded with its
exit code and the tail of its stderr, and the others still run.

Sizes are cut so the whole run stays under about ten minutes on a 2-core machine;
``BENCH_FULL=1`` uses the sizes the issues name (100,000-heartbeat backlogs, more
rounds), which takes considerably longer.

    python bench/run_all.py [--only NAME ...]

Writes ``bench/results/report.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
FULL = os.environ.get("BENCH_FULL") == "1"
TIMEOUT_S = 1800 if FULL else 300
TIMEOUT_IDLE_S = 600  # its window alone is 300 s

# name -> (script, arguments). Quick sizes by default; the issues' sizes with BENCH_FULL=1.
SCRIPTS: dict[str, tuple[str, list[str]]] = {
    "startup": ("startup.py", ["--runs", "15"]),
    "idle": ("idle.py", ["--window", "300", "--interval", "10", "--tick-interval", "0.5", "--tick-seconds", "20"]),
    "spool": ("spool_bench.py", [] if FULL else ["--writes", "1000", "--rounds", "3", "--backlog", "20000"]),
    "drain": ("drain_bench.py", [] if FULL else ["--count", "20000", "--rounds", "1"]),
    "scrub": ("scrub_bench.py", [] if FULL else ["--heartbeats", "1000", "--rounds", "3"]),
    "ledger": ("ledger_bench.py", [] if FULL else ["--count", "20000", "--rounds", "2", "--tick-seconds", "40"]),
    "logscan": (
        "logscan_bench.py",
        ["--lines", "1000000", "--distinct", "50000", "--repeat", "3"],  # best of three: a scan takes about 1 s
    ),
    "rw_replay": ("rw_replay_bench.py", ["--count", "60480"]),
    # The Pushgateway baseline slows down as it fills: each path gets a time budget per size.
    "rw_fleet": ("rw_fleet_bench.py", ["--pops", "1000", "5000", "--ticks", "3" if FULL else "2", "--budget", "60"]),
    # 1,000 POPs, a 5-minute outage played 5x faster (interval, outage and backoff all scaled), plus a baseline.
    "retry_storm": ("retry_storm.py", ["--pops", "1000", "--outage", "300", "--scale", "5"]),
}


def parse_json(text: str) -> Any:
    """The JSON object a script printed (tolerating lines around it)."""
    try:
        return json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        return json.loads(text[start : end + 1])


def run_script(name: str, script: str, args: list[str]) -> dict[str, Any]:
    """Run one bench script; its result, or how it failed."""
    log = RESULTS / f"{name}.log"
    argv = [sys.executable, str(BENCH / script), *args]
    started = time.monotonic()
    entry: dict[str, Any] = {"script": f"bench/{script}", "args": args}
    if not (BENCH / script).exists():
        return {**entry, "ok": False, "exit_code": None, "error": "script missing"}
    print(f"bench: {name} ({script} {' '.join(args)}) ...", file=sys.stderr, flush=True)
    timeout = max(TIMEOUT_S, TIMEOUT_IDLE_S) if name == "idle" else TIMEOUT_S
    try:
        with log.open("wb") as err:
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, timeout=timeout, cwd=BENCH.parent)
    except subprocess.TimeoutExpired:
        return {**entry, "ok": False, "exit_code": None, "error": f"timeout after {timeout} s", "log": str(log)}
    entry.update(seconds=round(time.monotonic() - started, 1), exit_code=done.returncode)
    try:
        entry["result"] = parse_json(done.stdout.decode())
    except ValueError:
        entry["result"] = None
    entry["ok"] = done.returncode == 0 and entry["result"] is not None
    if not entry["ok"]:
        entry["error_tail"] = log.read_text(errors="replace")[-2000:]
        entry["log"] = str(log)
    return entry


def dig(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def row(
    figure: str, value: Any, unit: str, baseline: str = "", ratio: Any = None, target: str = "", met: Any = None
) -> dict[str, Any]:
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def headline(scripts: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures the issues ask for, each beside what it is measured against."""
    s = {name: entry.get("result") or {} for name, entry in scripts.items()}
    rows = []
    st = s.get("startup", {})
    if st:
        deps_exit = dig(st, "python_import_deps", "exit_ms")
        rows += [
            row("python -c pass, to exit", dig(st, "python_pass", "exit_ms"), "ms"),
            row("python importing the runtime deps, to exit", deps_exit, "ms"),
            row("agent --version, to exit", dig(st, "agent_version", "exit_ms"), "ms"),
            row(
                "agent --once, to first byte",
                dig(st, "agent_once", "first_byte_ms"),
                "ms",
                "deps import",
                dig(st, "ratios", "agent_once_first_byte_vs_import_deps"),
            ),
            row(
                "agent --once, to exit",
                dig(st, "agent_once", "exit_ms"),
                "ms",
                "deps import",
                dig(st, "ratios", "agent_once_exit_vs_import_deps"),
                "well under 1 s",
                (dig(st, "agent_once", "exit_ms") or 1e9) < 1000,
            ),
        ]
    idle = s.get("idle", {})
    procs = dig(idle, "idle", "processes") or {}
    ratios = dig(idle, "ratios") or {}
    if procs:
        rows += [
            row("import floor RSS (deps imported, sleeping)", dig(procs, "floor", "rss_mib_median"), "MiB"),
            row(
                "agent idle RSS (10 s, telemetry off)",
                dig(procs, "agent", "rss_mib_median"),
                "MiB",
                "import floor",
                ratios.get("agent_rss_vs_floor"),
                "<= 1.15",
                dig(idle, "meets_targets", "rss"),
            ),
            row(
                "agent idle RSS (10 s, central sink on)",
                dig(procs, "agent_telemetry_on", "rss_mib_median"),
                "MiB",
                "import floor",
                ratios.get("agent_telemetry_on_rss_vs_floor"),
                "<= 1.15",
                (ratios.get("agent_telemetry_on_rss_vs_floor") or 9) <= 1.15,
            ),
            row(
                "agent CPU (10 s, telemetry off)",
                dig(procs, "agent", "cpu_s_per_h"),
                "CPU-s/h",
                "node_exporter",
                ratios.get("agent_cpu_vs_node_exporter"),
                "<= 0.5",
                dig(idle, "meets_targets", "cpu"),
            ),
            row(
                "agent CPU (10 s, central sink on)",
                dig(procs, "agent_telemetry_on", "cpu_s_per_h"),
                "CPU-s/h",
                "node_exporter",
                ratios.get("agent_telemetry_on_cpu_vs_node_exporter"),
                "<= 0.5",
                (ratios.get("agent_telemetry_on_cpu_vs_node_exporter") or 9) <= 0.5,
            ),
            row(
                "agent CPU vs collectd",
                dig(procs, "agent", "cpu_s_per_h"),
                "CPU-s/h",
                "collectd",
                ratios.get("agent_cpu_vs_collectd"),
            ),
            row("agent CPU per tick", dig(idle, "tick", "cpu_ms_per_tick"), "ms"),
            row("  x 360 ticks/h at 10 s", dig(idle, "tick", "extrapolated_cpu_s_per_h_at_10s"), "CPU-s/h"),
            row("node_exporter RSS", dig(procs, "node_exporter", "rss_mib_median"), "MiB"),
            row("node_exporter CPU (scraped every 10 s)", dig(procs, "node_exporter", "cpu_s_per_h"), "CPU-s/h"),
            row("collectd RSS", dig(procs, "collectd", "rss_mib_median"), "MiB"),
            row("collectd CPU", dig(procs, "collectd", "cpu_s_per_h"), "CPU-s/h"),
        ]
    sc = s.get("scrub", {})
    if sc:
        steady_ratio = dig(sc, "ratios", "steady_vs_floor")
        rows += [
            row(
                "scrub per heartbeat (steady)",
                dig(sc, "this", "steady"),
                "us",
                "model_validate alone",
                steady_ratio,
                "<= 10",
                (steady_ratio or 99) <= 10,
            ),
            row(
                "scrub per heartbeat (cold)",
                dig(sc, "this", "cold"),
                "us",
                "model_validate alone",
                dig(sc, "ratios", "cold_vs_floor"),
            ),
        ]
    sp = s.get("spool", {})
    if sp:
        rows += [
            row(
                "spool writes",
                sp.get("put_per_s"),
                "/s",
                "raw fsync loop",
                sp.get("put_ratio"),
                ">= 0.8",
                (sp.get("put_ratio") or 0) >= 0.8,
            ),
            row("spool drain, no HTTP", sp.get("drain_per_s"), "hb/s"),
        ]
    dr = s.get("drain", {})
    if dr:
        rows.append(
            row(
                "drain to local central",
                dig(dr, "drain", "hb_per_s"),
                "hb/s",
                "bare read+POST (gzip)",
                dig(dr, "drain", "drain_vs_gzip_baseline") or dr.get("drain_vs_baseline_gzip"),
                ">= 10000 hb/s",
                dr.get("meets_target"),
            )
        )
    ls = s.get("logscan", {})
    if ls:
        window = max(dig(ls, "window_1h", "memory_bytes") or 0, dig(ls, "window_24h", "memory_bytes") or 0)
        pipe = "awk|sort -u|wc -l, CPU"
        rows += [
            row(
                "log scan (bulk), per CPU-second",
                ls.get("collector_lines_per_cpu_s"),
                "lines/s",
                pipe,
                ls.get("ratio_to_pipeline"),
                ">= 1.0",
                (ls.get("ratio_to_pipeline") or 0) >= 1.0,
            ),
            row(
                "log scan (recent), per CPU-second",
                dig(ls, "recent", "lines_per_cpu_s"),
                "lines/s",
                pipe,
                ls.get("ratio_recent_to_pipeline"),
            ),
            row(
                "log scan (JSON), per CPU-second",
                dig(ls, "json", "lines_per_cpu_s"),
                "lines/s",
                pipe,
                ls.get("ratio_json_to_pipeline"),
            ),
            row("requests tick at 1,000 req/s (median)", dig(ls, "tick_at_1000_per_s", "cpu_ms_median"), "ms CPU"),
            row(
                "log scan unique count error",
                ls.get("unique_error_pct"),
                "%",
                target="within 2",
                met=abs(ls.get("unique_error_pct", 100)) <= 2,
            ),
            row("log scan state per window (max)", window, "bytes", target="<= 65536", met=window <= 65536),
        ]
    rows += remote_write_rows(s.get("rw_replay", {}), s.get("rw_fleet", {}))
    ledger = s.get("ledger", {})
    if ledger:
        for figure, ratio in (
            ("agent CPU per tick, sent ledger on (central + Kuma)", dig(ledger, "tick", "ratio")),
            ("drain CPU, sent ledger on", dig(ledger, "drain", "cpu_ratio_with_ledger")),
        ):
            rows.append(row(figure, ratio, "x", "same, ledger off", ratio, "<= 1.10", (ratio or 9) <= 1.10))
    rs = s.get("retry_storm", {})
    if rs:
        paced = rs.get("paced") or {}
        rows += [
            row(
                "retry storm: requests per POP per 30 s",
                paced.get("requests_per_pop_per_30s"),
                "req",
                "retry every tick",
                dig(rs, "ratios", "requests_paced_vs_every_tick"),
                "<= 1",
                dig(rs, "meets_targets", "requests_per_pop_per_30s_le_1"),
            ),
            row("retry storm: busiest 1 s vs mean", paced.get("busiest_1s_vs_mean"), "x"),
            row("retry storm: busiest 1 s vs its 30 s", paced.get("busiest_1s_vs_its_30s"), "x"),
            row(
                "retry storm: every backlog drained after",
                dig(paced, "drain_s", "last"),
                "s",
                target="all drained",
                met=dig(rs, "meets_targets", "every_backlog_drained"),
            ),
        ]
    return rows


def remote_write_rows(replay: dict[str, Any], fleet: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's figures: the 7-day replay, and fleet ingest per size against the Pushgateway path."""
    rows = []
    if replay:
        rows.append(
            row(
                "remote write replay, 7 days of one POP",
                dig(replay, "remote_write", "hb_per_s"),
                "hb/s",
                "central sink, same docs",
                replay.get("ratio_vs_central_sink"),
                ">= 20000, 0 lost",
                replay.get("meets_target"),
            )
        )
    for pops, size in (fleet.get("sizes") or {}).items():
        rw, gw = size.get("remote_write", {}), size.get("pushgateway", {})
        ratios = size.get("ratios_remote_write_vs_pushgateway", {})
        rows += [
            row(
                f"{pops} POPs: central CPU per POP-tick",
                rw.get("central_cpu_ms_per_pop_per_tick"),
                "ms",
                "Pushgateway+Prometheus",
                ratios.get("cpu_per_pop"),
                "< 1",
                (ratios.get("cpu_per_pop") or 9) < 1,
            ),
            row(
                f"{pops} POPs: central RSS per POP",
                rw.get("rss_kib_per_pop_total"),
                "KiB",
                "Pushgateway+Prometheus",
                ratios.get("rss_per_pop_total"),
            ),
            row(
                f"{pops} POPs: one fleet-wide tick",
                rw.get("tick_wall_s_median"),
                "s",
                "Pushgateway+Prometheus",
                ratios.get("tick_wall"),
            ),
            row(
                f"{pops} POPs: central CPU per fleet-wide tick",
                rw.get("central_cpu_s_per_fleet_tick"),
                "CPU-s",
                "Pushgateway+Prometheus",
                ratio_or_none(rw.get("central_cpu_s_per_fleet_tick"), gw.get("central_cpu_s_per_fleet_tick")),
            ),
            row(
                f"{pops} POPs: fleet overview, all panels",
                rw.get("overview_ms"),
                "ms",
                "same on Prometheus",
                ratio_or_none(rw.get("overview_ms"), gw.get("overview_ms")),
                "< 1000",
                (rw.get("overview_ms") or 1e9) < 1000,
            ),
        ]
    return rows


def ratio_or_none(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'figure':<44} {'value':>10} {'unit':<8} {'ratio':>7}  {'vs':<22} {'target':<14} met"]
    for r in rows:
        value = r["value"]
        shown = f"{value:,.2f}" if isinstance(value, float) else ("-" if value is None else f"{value:,}")
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(
            f"{r['figure']:<44} {shown:>10} {r['unit']:<8} {ratio:>7}  {r['baseline']:<22} {r['target']:<14} {met}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SCRIPTS), help="run only these")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    scripts = {
        name: run_script(name, script, script_args)
        for name, (script, script_args) in SCRIPTS.items()
        if not args.only or name in args.only
    }
    rows = headline(scripts)
    report = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "loadavg_at_end": os.getloadavg(),
        },
        "full_sizes": FULL,
        "seconds": round(time.monotonic() - started, 1),
        "failed": {name: e.get("exit_code") for name, e in scripts.items() if not e["ok"]},
        "headline": rows,
        "scripts": scripts,
    }
    path = RESULTS / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    for name, entry in scripts.items():
        if not entry["ok"]:
            print(f"FAILED {name}: exit {entry.get('exit_code')} {entry.get('error', '')} (see {entry.get('log')})")
    print(f"report: {path} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
