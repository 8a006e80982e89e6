"""The real time-series engines central runs, started for a test: Prometheus 2.42 and VictoriaMetrics.

Each runs on a free loopback port in its own temporary directory and is stopped
(then killed if it lingers) on the way out, whatever the test did. Also here:
the shipped rule and dashboard files, and the queries they hold.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.sinks.realprocs import binary, free_port

CENTRAL = REPO / "central"
RULE_FILES = sorted((CENTRAL / "rules").glob("*.yaml"))
RULE_TESTS = sorted((CENTRAL / "tests").glob("*.yaml"))
DASHBOARD_FILES = sorted((CENTRAL / "dashboards").glob("*.json"))
PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
VICTORIA_METRICS = "victoria-metrics"
VMALERT = "vmalert"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Loopback requests must not wander through a proxy named in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def missing(*programs: str) -> list[str]:
    """The programs among ``programs`` that are not installed."""
    return [name for name in programs if binary(name) is None]


def _get(url: str, timeout: float = 10) -> tuple[int, Any]:
    """``GET url``: the status and the JSON body (an HTTP error's body too)."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _ready(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def _serve(name: str, argv_for: Any, workdir: Path) -> Iterator[str]:
    """Run ``argv_for(port)`` until ``/-/ready`` answers 200; yield its base URL; stop it.

    A port taken between choosing and binding makes the program exit at once; it
    is then started again on another port, twice at most.
    """
    for _attempt in range(3):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with (workdir / f"{name}.log").open("ab") as log:
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
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT)
    raise RuntimeError(f"{name} exited at start three times; see its log")


@contextmanager
def prometheus(
    *,
    rule_files: Sequence[Path] = (),
    scrape_targets: Sequence[str] = (),
    interval: str = "1s",
) -> Iterator[str]:
    """Prometheus taking remote write, evaluating ``rule_files`` every ``interval``; yields its base URL.

    ``scrape_targets`` (``host:port``) are scraped with ``honor_labels``, as a
    Pushgateway is.
    """
    path = binary(PROMETHEUS)
    if path is None:
        raise FileNotFoundError(PROMETHEUS)
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        workdir = Path(tmp)
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(file) for file in rule_files],
            "scrape_configs": [
                {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": list(scrape_targets)}]}
            ],
        }
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
                "--web.enable-remote-write-receiver",
                "--log.level=warn",
            ],
            workdir,
        ) as base:
            yield base


@contextmanager
def victoria_metrics() -> Iterator[str]:
    """A fresh single-node VictoriaMetrics; yields its base URL (remote write at ``/api/v1/write``).

    Samples become visible to queries at once (``-search.latencyOffset=0s``), not
    after the default 30 s, so that tests need not wait.
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
                f"-storageDataPath={workdir / 'data'}",
                f"-httpListenAddr=127.0.0.1:{port}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=ERROR",
            ],
            workdir,
        ) as base:
            yield base


def query(base: str, expr: str) -> tuple[int, Any]:
    """An instant query through the engine's HTTP API: the status and the JSON answer."""
    return _get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def vector(base: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query that must succeed."""
    status, answer = query(base, expr)
    assert (200, "success") == (status, answer["status"]), (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def rules(base: str) -> list[dict[str, Any]]:
    """Every rule the Prometheus at ``base`` has loaded, from ``/api/v1/rules``."""
    status, answer = _get(base + "/api/v1/rules")
    assert 200 == status
    return [rule for group in answer["data"]["groups"] for rule in group["rules"]]


def alerts(base: str) -> list[dict[str, Any]]:
    """The alerts pending or firing in the Prometheus at ``base``, from ``/api/v1/alerts``."""
    status, answer = _get(base + "/api/v1/alerts")
    assert 200 == status
    found: list[dict[str, Any]] = answer["data"]["alerts"]
    return found


def label_values(base: str, label: str, selector: str) -> list[str]:
    """The values of ``label`` on the series ``selector`` matches, as Grafana's ``label_values()`` asks for them."""
    url = f"{base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})
    status, answer = _get(url)
    assert (200, "success") == (status, answer["status"])
    values: list[str] = answer["data"]
    return values


def dashboards() -> dict[str, dict[str, Any]]:
    """The shipped dashboards by file name."""
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """A dashboard's panels that show data (row headers left out)."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def panel_queries() -> list[tuple[str, str, str]]:
    """``(dashboard file, panel title, expr)`` for every target of every panel."""
    return [
        (name, panel["title"], target["expr"])
        for name, dashboard in dashboards().items()
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]


def concrete(expr: str, pops: Sequence[str] = (), rate_interval: str = "1m") -> str:
    """A panel query as Grafana sends it: ``$pop`` a regex of ``pops`` (all when empty), ``$__rate_interval`` set.

    POP ids match ``^[a-z0-9][a-z0-9-]{0,62}$``, so none needs escaping in a regex.
    """
    regex = "|".join(pops) if pops else ".+"
    return expr.replace("$pop", regex).replace("$__rate_interval", rate_interval)
