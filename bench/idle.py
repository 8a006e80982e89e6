"""Idle cost of the daemon beside the import floor, node_exporter and collectd, measured in one window.

All processes run side by side over the same window, so machine noise hits them alike:

- ``floor``: a bare Python that imports the runtime dependencies (psutil, aiohttp,
  structlog, pydantic_settings, tenacity) and sleeps: the RSS a Python agent cannot go under.
- ``agent``: ``agent run`` at a 10 s interval, telemetry off, default collectors
  (built-ins whose module is not in this tree are disabled and listed), state in a
  temporary directory. It spools every heartbeat locally (fsync included).
- ``node_exporter``: Debian's prometheus-node-exporter on a loopback port with its
  default collectors, scraped every 10 s by this script (the scrape is what costs it CPU).
- ``collectd``: cpu, memory, df, interface and load plugins at ``Interval 10``, no
  network or write plugin.

The window starts after every process has warmed up (the agent's first tick is
logged; its start offset is random within one interval). For each process: RSS
(``VmRSS``, sampled every second: median and max), and CPU over the window from
``/proc/<pid>/stat`` utime+stime (10 ms ticks) and from the per-thread
``/proc/<pid>/task/*/schedstat`` run time (nanoseconds; the precise figure the
ratios use), both scaled to CPU seconds per hour.

Then the cost of one tick: the agent alone at ``--tick-interval`` (default 0.5 s)
for ``--tick-seconds``; CPU (schedstat) divided by the heartbeats it spooled. ``360 x`` that
is the tick part of an hour at 10 s, reported beside the measured CPU-s/h.

    python bench/idle.py [--window 90] [--interval 10] [--tick-interval 0.5] [--tick-seconds 20]
                         [--compare DIR]

``--compare DIR`` adds ``agent_compare``: the agent of another tree (say ``git archive``
of the commit before a change) beside the others in the same window, telemetry off, and
its per-tick cost right after this tree's, so a change is judged against noise both saw.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
DEPS = "psutil, aiohttp, structlog, pydantic_settings, tenacity"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
COLLECTD = "/usr/sbin/collectd"
COLLECTD_PLUGINS = ("cpu", "memory", "df", "interface", "load")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc readings -------------------------------------------------------------------------


def cpu_ticks_s(pid: int) -> float:
    """utime + stime of the process (its dead threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_sched_s(pid: int) -> float:
    """CPU run time summed over the live threads of the process, from schedstat (ns)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def status_field(pid: int, name: str) -> int:
    """A numeric field of ``/proc/<pid>/status`` (VmRSS in KiB, Threads, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def rss_kib(pid: int) -> int:
    """Resident set size in KiB."""
    return status_field(pid, "VmRSS")


def fd_count(pid: int) -> int:
    """Open file descriptors."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the agent's environment ----------------------------------------------------------------


def missing_builtin_collectors() -> list[str]:
    """Built-in collectors whose module is not in this tree (yet): disabled so the agent starts."""
    sys.path.insert(0, str(ROOT))
    try:
        from agent.plugins import BUILTIN_COLLECTORS
    finally:
        sys.path.remove(str(ROOT))
    missing = []
    for name, target in BUILTIN_COLLECTORS.items():
        module = target.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def python_env() -> dict[str, str]:
    """This environment, with byte-code caching on but kept out of the checkout.

    ``make`` exports PYTHONDONTWRITEBYTECODE, which would make every start compile the
    checkout's sources; an installed wheel has its byte code, so the bench caches it too.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "pop-agent-bench-pycache")
    return env


def agent_env(state_dir: Path, root: Path = ROOT, **extra: str) -> dict[str, str]:
    """The environment for an agent process: no config file, state in ``state_dir``."""
    env = {
        k: v
        for k, v in python_env().items()
        if not k.startswith("POP_AGENT_")
        and k not in ("NTFY_ALERT_URL", "NTFY_ALERT_TOKEN", "KUMA_PUSH_URL", "NOTIFY_SOCKET", "WATCHDOG_USEC")
    }
    env["POP_AGENT_CONFIG"] = "/dev/null"
    env["POP_AGENT_STATE_DIR"] = str(state_dir)
    env["POP_AGENT_POP_ID"] = "bench"
    missing = missing_builtin_collectors()
    if missing:
        env["POP_AGENT_COLLECTORS__DISABLED"] = json.dumps(missing)
    env["PYTHONPATH"] = str(root)
    env.update(extra)
    return env


def agent_command(*args: str) -> list[str]:
    """``python -m agent ...`` with the checkout's interpreter (same code as the console script)."""
    return [PYTHON, "-m", "agent", *args]


def spooled(state_dir: Path) -> int:
    """Heartbeats in the agent's ``spool/pending/``: one per tick for an agent without a sink."""
    try:
        return sum(1 for name in os.listdir(state_dir / "spool" / "pending") if name.endswith(".json"))
    except OSError:
        return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def count_ticks(log: Path) -> int:
    """Ticks the agent logged (JSON lines with ``"event": "tick"``).

    At the default level only the first tick has a line (every tick at ``--log-level
    debug``): enough to see an agent has started ticking; :func:`spooled` counts them.
    """
    ticks = 0
    with contextlib.suppress(OSError), log.open() as handle:
        for line in handle:
            if '"tick"' in line:
                with contextlib.suppress(ValueError):
                    ticks += json.loads(line).get("event") == "tick"
    return ticks


# -- the contenders -------------------------------------------------------------------------


@dataclass
class Contender:
    """One process under measurement."""

    name: str
    proc: subprocess.Popen[bytes]
    rss: list[int] = field(default_factory=list)
    cpu_start: tuple[float, float] = (0.0, 0.0)
    cpu_end: tuple[float, float] = (0.0, 0.0)
    note: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> tuple[float, float]:
        return cpu_ticks_s(self.pid), cpu_sched_s(self.pid)


def start_floor(work: Path) -> subprocess.Popen[bytes]:
    code = f"import {DEPS}, time\ntime.sleep(86400)"
    return subprocess.Popen(
        [PYTHON, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=python_env()
    )


class _Accept(BaseHTTPRequestHandler):
    """A central that acknowledges everything (the bench process pays for it, not the agent).

    HTTP/1.1 so the agent's connection is kept alive between ticks, as a real central would.
    """

    protocol_version = "HTTP/1.1"

    heartbeats = 0  # received, over every instance: one ``"seq":`` per heartbeat in a body

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Accept.heartbeats += body.count(b'"seq":')
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def start_central() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/ingest/v1/heartbeats"


def start_agent(
    work: Path, interval: float, name: str = "agent", central: str | None = None, root: Path = ROOT
) -> tuple[subprocess.Popen[bytes], Path]:
    state = work / f"{name}-state"
    log = work / f"{name}.log"
    extra = {}
    if central is not None:
        extra = {"POP_AGENT_SINKS__CENTRAL__URL": central, "POP_AGENT_SINKS__CENTRAL__TOKEN": "bench-token"}
    env = agent_env(state, root, **extra)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            agent_command("run", "--interval", str(interval), "--telemetry", "on" if central else "off"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            cwd=work,
        )
    return proc, log


def start_node_exporter(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL,
        stderr=(work / "node_exporter.log").open("wb"),
    )
    return proc, f"http://127.0.0.1:{port}/metrics"


def start_collectd(work: Path, interval: float) -> subprocess.Popen[bytes]:
    conf = work / "collectd.conf"
    plugins = "\n".join(f"LoadPlugin {name}" for name in COLLECTD_PLUGINS)
    conf.write_text(
        f'Hostname "bench"\nFQDNLookup false\nInterval {interval:g}\nBaseDir "{work}"\n'
        f'PIDFile "{work}/collectd.pid"\nPluginDir "/usr/lib/collectd"\n'
        f'TypesDB "/usr/share/collectd/types.db"\n{plugins}\n'
    )
    return subprocess.Popen(
        [COLLECTD, "-f", "-C", str(conf)], stdout=subprocess.DEVNULL, stderr=(work / "collectd.log").open("wb")
    )


def scrape_loop(url: str, every: float, stop: threading.Event, counter: list[int]) -> None:
    """Scrape like a Prometheus server would, every ``every`` seconds."""
    while not stop.is_set():
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            counter[0] += 1
        stop.wait(every)


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL if it lingers; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def summarise(c: Contender, window: float) -> dict[str, Any]:
    ticks_cpu = c.cpu_end[0] - c.cpu_start[0]
    sched_cpu = c.cpu_end[1] - c.cpu_start[1]
    out: dict[str, Any] = {
        "rss_mib_median": round(statistics.median(c.rss) / 1024, 2) if c.rss else None,
        "rss_mib_max": round(max(c.rss) / 1024, 2) if c.rss else None,
        "cpu_s_window_stat": round(ticks_cpu, 3),
        "cpu_s_window_schedstat": round(sched_cpu, 4),
        "cpu_s_per_h_stat": round(ticks_cpu * 3600 / window, 3),
        "cpu_s_per_h": round(sched_cpu * 3600 / window, 3),
    }
    if c.note:
        out["note"] = c.note
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# -- the runs -------------------------------------------------------------------------------


def idle_window(work: Path, window: float, interval: float, compare: Path | None = None) -> dict[str, Any]:
    """Every contender side by side over one window."""
    contenders: list[Contender] = [Contender("floor", start_floor(work))]
    agent_proc, agent_log = start_agent(work, interval)
    contenders.append(Contender("agent", agent_proc))
    if compare is not None:
        cmp_proc, _ = start_agent(work, interval, name="agent_compare", root=compare)
        contenders.append(Contender("agent_compare", cmp_proc, note=f"the agent of {compare}"))
    central, central_url = start_central()
    on_proc, on_log = start_agent(work, interval, name="agent_telemetry_on", central=central_url)
    contenders.append(Contender("agent_telemetry_on", on_proc, note="central sink on, to a local central that acks"))
    stop_scraping = threading.Event()
    scrapes = [0]
    scraper: threading.Thread | None = None
    skipped: dict[str, str] = {}
    if os.access(NODE_EXPORTER, os.X_OK):
        ne, url = start_node_exporter(work)
        contenders.append(Contender("node_exporter", ne, note=f"default collectors, scraped every {interval:g} s"))
        scraper = threading.Thread(target=scrape_loop, args=(url, interval, stop_scraping, scrapes), daemon=True)
    else:
        skipped["node_exporter"] = "not installed"
    if os.access(COLLECTD, os.X_OK):
        contenders.append(
            Contender("collectd", start_collectd(work, interval), note="plugins: " + ", ".join(COLLECTD_PLUGINS))
        )
    else:
        skipped["collectd"] = "not installed"
    try:
        if scraper is not None:
            time.sleep(1.0)
            scraper.start()
        # The agent's first tick comes within one interval (random start offset).
        first_tick = wait_for(
            lambda: all(
                count_ticks(log) >= 1 or p.poll() is not None for log, p in ((agent_log, agent_proc), (on_log, on_proc))
            ),
            interval + 30,
        )
        time.sleep(2.0)  # let the first tick's threads settle, and the others' first round
        for c in contenders:
            if c.proc.poll() is not None:
                raise RuntimeError(f"{c.name} exited with {c.proc.returncode} before the window")
        ticks_before, scrapes_before = spooled(work / "agent-state"), scrapes[0]
        on_before = _Accept.heartbeats
        for c in contenders:
            c.cpu_start = c.cpu()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < window:
            for c in contenders:
                with contextlib.suppress(OSError, KeyError):
                    c.rss.append(rss_kib(c.pid))
            time.sleep(min(1.0, max(0.0, window - elapsed)))
        measured = time.monotonic() - started
        for c in contenders:
            c.cpu_end = c.cpu()
        ticks = spooled(work / "agent-state") - ticks_before
        on_ticks = _Accept.heartbeats - on_before  # delivered a flush at a time: a multiple of 3 at 10 s
        scraped = scrapes[0] - scrapes_before
        agent_threads = status_field(agent_proc.pid, "Threads")
    finally:
        stop_scraping.set()
        central.shutdown()
        codes = {c.name: stop(c.proc) for c in contenders}
    figures = {c.name: summarise(c, measured) for c in contenders}
    figures["agent"].update(ticks=ticks, threads=agent_threads, first_tick_seen=first_tick, exit_code=codes["agent"])
    figures["agent_telemetry_on"].update(ticks=on_ticks, exit_code=codes["agent_telemetry_on"])
    if "node_exporter" in figures:
        figures["node_exporter"]["scrapes"] = scraped
    return {"window_s": round(measured, 1), "interval_s": interval, "processes": figures, "skipped": skipped}


def tick_cost(
    work: Path, interval: float, seconds: float, root: Path = ROOT, name: str = "agent-ticks"
) -> dict[str, Any]:
    """CPU of one tick: the agent alone at a short interval, CPU over the heartbeats it spooled."""
    proc, _ = start_agent(work, interval, name=name, root=root)
    state = work / f"{name}-state"
    try:
        wait_for(lambda: spooled(state) >= 3 or proc.poll() is not None, 30)
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        before_ticks, (before_stat, before_sched) = spooled(state), (cpu_ticks_s(proc.pid), cpu_sched_s(proc.pid))
        started = time.monotonic()
        time.sleep(seconds)
        after_stat, after_sched = cpu_ticks_s(proc.pid), cpu_sched_s(proc.pid)
        elapsed = time.monotonic() - started
        ticks = spooled(state) - before_ticks
    finally:
        code = stop(proc)
    per_tick = (after_sched - before_sched) / max(ticks, 1)
    return {
        "interval_s": interval,
        "seconds": round(elapsed, 1),
        "ticks": ticks,
        "cpu_ms_per_tick": round(per_tick * 1000, 3),
        "cpu_ms_per_tick_stat": round((after_stat - before_stat) / max(ticks, 1) * 1000, 2),
        "extrapolated_cpu_s_per_h_at_10s": round(per_tick * 360, 3),
        "exit_code": code,
    }


def run(
    window: float, interval: float, tick_interval: float, tick_seconds: float, compare: Path | None = None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="idle-bench-"))
    try:
        report: dict[str, Any] = {"cpus": os.cpu_count(), "disabled_collectors": missing_builtin_collectors()}
        report["idle"] = idle_window(work, window, interval, compare)
        report["tick"] = tick_cost(work, tick_interval, tick_seconds)
        if compare is not None:
            report["tick_compare"] = tick_cost(work, tick_interval, tick_seconds, compare, "agent-ticks-compare")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    procs = report["idle"]["processes"]
    agent, floor = procs["agent"], procs["floor"]
    ne, cd = procs.get("node_exporter", {}), procs.get("collectd", {})
    report["ratios"] = {
        "agent_rss_vs_floor": ratio(agent["rss_mib_median"], floor["rss_mib_median"]),
        "agent_rss_vs_floor_target": 1.15,
        "agent_cpu_vs_node_exporter": ratio(agent["cpu_s_per_h"], ne.get("cpu_s_per_h")),
        "agent_cpu_vs_node_exporter_target": 0.5,
        "agent_cpu_vs_collectd": ratio(agent["cpu_s_per_h"], cd.get("cpu_s_per_h")),
        "agent_telemetry_on_rss_vs_floor": ratio(
            procs["agent_telemetry_on"]["rss_mib_median"], floor["rss_mib_median"]
        ),
        "agent_telemetry_on_cpu_vs_node_exporter": ratio(
            procs["agent_telemetry_on"]["cpu_s_per_h"], ne.get("cpu_s_per_h")
        ),
        "agent_rss_vs_node_exporter": ratio(agent["rss_mib_median"], ne.get("rss_mib_median")),
        "agent_rss_vs_collectd": ratio(agent["rss_mib_median"], cd.get("rss_mib_median")),
    }
    if compare is not None:
        report["ratios"]["agent_compare_cpu_vs_node_exporter"] = ratio(
            procs["agent_compare"]["cpu_s_per_h"], ne.get("cpu_s_per_h")
        )
        report["ratios"]["agent_cpu_vs_agent_compare"] = ratio(
            agent["cpu_s_per_h"], procs["agent_compare"]["cpu_s_per_h"]
        )
        report["ratios"]["agent_tick_vs_agent_compare"] = ratio(
            report["tick"]["cpu_ms_per_tick"], report["tick_compare"]["cpu_ms_per_tick"]
        )
    r = report["ratios"]
    report["meets_targets"] = {
        "rss": r["agent_rss_vs_floor"] is not None and r["agent_rss_vs_floor"] <= 1.15,
        "cpu": r["agent_cpu_vs_node_exporter"] is not None and r["agent_cpu_vs_node_exporter"] <= 0.5,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=90.0, help="seconds of the idle window")
    parser.add_argument("--interval", type=float, default=10.0, help="tick/scrape interval during the window")
    parser.add_argument("--tick-interval", type=float, default=0.5, help="agent interval for the per-tick cost")
    parser.add_argument("--tick-seconds", type=float, default=20.0, help="seconds of the per-tick run")
    parser.add_argument("--compare", type=Path, help="another tree whose agent runs beside this one's")
    args = parser.parse_args()
    report = run(args.window, args.interval, args.tick_interval, args.tick_seconds, args.compare)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
