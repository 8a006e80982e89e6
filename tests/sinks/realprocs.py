"""Helpers for sink tests: start and stop the real Pushgateway, Prometheus and VictoriaMetrics; build heartbeats.

Each program runs on a free loopback port with its own temporary directory, and
is stopped (then killed if it lingers) and its directory removed on the way out,
whatever the test did.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.sample import Pending

PUSHGATEWAY = "prometheus-pushgateway"
PROMETHEUS = "prometheus"
VICTORIA_METRICS = "victoria-metrics"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Loopback requests must not wander through a proxy named in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary(name: str) -> str | None:
    """The path of program ``name`` (``$PATH``, then ``/usr/bin``), or ``None``."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    return found


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


@contextmanager
def _serve(name: str, argv_for: Any, workdir: Path) -> Iterator[str]:
    """Run ``argv_for(port)`` until ``/-/ready`` answers; yield its base URL; stop it.

    A port taken between choosing and binding makes the program exit at once; it
    is then started again on another port, twice at most.
    """
    for _attempt in range(3):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = (workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv_for(port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        try:
            give_up = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and time.monotonic() < give_up and not _ready(base + "/-/ready"):
                time.sleep(0.05)
            if proc.poll() is not None:
                continue
            if not _ready(base + "/-/ready"):
                raise RuntimeError(f"{name} did not become ready in {START_TIMEOUT:.0f} s")
            yield base
            return
        finally:
            _stop(proc)
            log.close()
    raise RuntimeError(f"{name} exited at start three times; see its log")


@contextmanager
def pushgateway() -> Iterator[str]:
    """A fresh Pushgateway, in memory only; yields its base URL."""
    path = binary(PUSHGATEWAY)
    if path is None:
        raise FileNotFoundError(PUSHGATEWAY)
    with (
        tempfile.TemporaryDirectory(prefix="pushgateway-") as tmp,
        _serve(
            PUSHGATEWAY,
            lambda port: [path, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=", "--log.level=warn"],
            Path(tmp),
        ) as base,
    ):
        yield base


@contextmanager
def prometheus(targets: Sequence[str], *, scrape_interval: str = "1s") -> Iterator[str]:
    """A fresh Prometheus scraping ``targets`` (``host:port``) with ``honor_labels``; yields its base URL."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": list(targets)}]}
        ],
    }
    with _prometheus(config) as base:
        yield base


@contextmanager
def prometheus_receiver(*, out_of_order_window: str | None = None) -> Iterator[str]:
    """A fresh Prometheus that scrapes nothing and takes remote write at ``/api/v1/write``; yields its base URL.

    ``out_of_order_window`` (say ``"10m"``) sets the TSDB's out-of-order window,
    under which Prometheus 2.42 answers 500 to samples older than the window.
    """
    config: dict[str, Any] = {"global": {"evaluation_interval": "1s"}}
    if out_of_order_window is not None:
        config["storage"] = {"tsdb": {"out_of_order_time_window": out_of_order_window}}
    with _prometheus(config, "--web.enable-remote-write-receiver") as base:
        yield base


@contextmanager
def _prometheus(config: dict[str, Any], *flags: str) -> Iterator[str]:
    """A fresh Prometheus with ``config`` and its own storage; yields its base URL."""
    path = binary(PROMETHEUS)
    if path is None:
        raise FileNotFoundError(PROMETHEUS)
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        workdir = Path(tmp)
        # JSON is YAML, so no YAML library is needed.
        (workdir / "prometheus.yml").write_text(json.dumps(config))
        (workdir / "data").mkdir()
        with _serve(
            PROMETHEUS,
            lambda port: [
                path,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
                *flags,
            ],
            workdir,
        ) as base:
            yield base


@contextmanager
def victoria_metrics() -> Iterator[str]:
    """A fresh single-node VictoriaMetrics with its own storage; yields its base URL.

    Retention is long enough for any backdated sample, and queries see samples
    at once (no latency offset, no result cache); call :func:`flush` after writing.
    """
    path = binary(VICTORIA_METRICS)
    if path is None:
        raise FileNotFoundError(VICTORIA_METRICS)
    with tempfile.TemporaryDirectory(prefix="victoria-metrics-") as tmp:
        workdir = Path(tmp)
        with _serve(
            VICTORIA_METRICS,
            lambda port: [
                path,
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-storageDataPath={workdir / 'data'}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=WARN",
            ],
            workdir,
        ) as base:
            yield base


def flush(base: str) -> None:
    """Make what VictoriaMetrics took in so far searchable now, instead of within a second or so."""
    get_text(base + "/internal/force_flush")


def export(base: str, match: str) -> list[dict[str, Any]]:
    """VictoriaMetrics' raw samples of the series matching ``match``: ``[{metric, values, timestamps}, ...]``."""
    text = get_text(base + "/api/v1/export?" + urllib.parse.urlencode({"match[]": match, "start": "0"}))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def get_text(url: str) -> str:
    """The body of ``GET url`` as text."""
    with _DIRECT.open(url, timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


def promql(base: str, query: str) -> list[dict[str, Any]]:
    """The result vector of an instant PromQL query."""
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    answer = json.loads(get_text(url))
    assert answer["status"] == "success"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def poll(fetch: Any, *, until: Any, timeout: float = 30.0, every: float = 0.25) -> Any:
    """Call ``fetch()`` until ``until(value)`` holds or ``timeout`` passes; return the last value."""
    give_up = time.monotonic() + timeout
    value = fetch()
    while not until(value) and time.monotonic() < give_up:
        time.sleep(every)
        value = fetch()
    return value


# The text exposition format, as far as the Pushgateway writes it.
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')
_UNESCAPE = re.compile(r"\\(.)")


def parse_exposition(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """``({family: type}, [(name, labels, value), ...])`` from a text-format page."""
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    for line in text.split("\n"):
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            types[family] = kind
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match is not None, line
            name, inner, value = match.groups()
            labels = {
                key: _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), raw)
                for key, raw in _LABEL.findall(inner or "")
            }
            samples.append((name, labels, float(value)))
    return types, samples


def uuid7(ms: int) -> str:
    """A UUIDv7 for Unix time ``ms``."""
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | secrets.randbits(12) << 64 | 0b10 << 62 | secrets.randbits(62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def iso(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, as heartbeats carry ``ts``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


DEFAULT_METRICS = {"cpu_percent": 12.5, "mem_used_percent": 40.1, "spool_pending": 3, "requests_total": 1200}
DEFAULT_SERIES = [{"name": "disk_used_percent", "labels": {"mount": "/"}, "value": 41.2}]


def heartbeat(
    pop: str = "ams1",
    seq: int = 1,
    ts: float | None = None,
    *,
    metrics: dict[str, float] | None = None,
    series: list[dict[str, Any]] | None = None,
    edition: str = "community",
) -> Pending:
    """A spooled ``pop-heartbeat/1`` as a sink receives it."""
    when = time.time() if ts is None else ts
    doc = {
        "schema": "pop-heartbeat/1",
        "id": uuid7(int(when * 1000)),
        "pop": pop,
        "ts": iso(when),
        "seq": seq,
        "edition": edition,
        "agent_version": "0.1.0",
        "interval_s": 10.0,
        "metrics": dict(DEFAULT_METRICS) if metrics is None else metrics,
        "series": list(DEFAULT_SERIES) if series is None else series,
        "collectors": {"cpu": "ok", "disk": "ok"},
    }
    return Pending(str(doc["id"]), json.dumps(doc).encode())
