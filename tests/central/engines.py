"""The real engines central runs, for tests: Prometheus 2.42 with rules, VictoriaMetrics, and their query APIs.

The programs are started by the sink tests' helpers (:mod:`tests.sinks.realprocs`):
each on a free loopback port in its own temporary directory, stopped on the way
out whatever the test did. Also here: the shipped rule and dashboard files, and
the queries they hold.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.sinks.realprocs import _prometheus as start_prometheus
from tests.sinks.realprocs import _serve as serve
from tests.sinks.realprocs import binary, flush
from tests.sinks.realprocs import victoria_metrics as victoria_metrics  # re-exported beside prometheus()

CENTRAL = REPO / "central"
RULE_FILES = sorted((CENTRAL / "rules").glob("*.yaml"))
RULE_TESTS = sorted((CENTRAL / "tests").glob("*.yaml"))
DASHBOARD_FILES = sorted((CENTRAL / "dashboards").glob("*.json"))
PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
VICTORIA_METRICS = "victoria-metrics"
VMALERT = "vmalert"
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


@contextmanager
def prometheus(
    *,
    rule_files: Sequence[Path] = (),
    scrape_targets: Sequence[str] = (),
    interval: str = "1s",
) -> Iterator[str]:
    """Prometheus taking remote write, evaluating ``rule_files`` every ``interval``; yields its base URL.

    ``scrape_targets`` (``host:port``) are scraped every ``interval`` with
    ``honor_labels``, as a Pushgateway is.
    """
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(file) for file in rule_files],
        "scrape_configs": [
            {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": list(scrape_targets)}]}
        ],
    }
    with start_prometheus(config, "--web.enable-remote-write-receiver") as base:
        yield base


@contextmanager
def vmalert(datasource: str, *, rule_files: Sequence[Path], notifier: str, interval: str = "1s") -> Iterator[str]:
    """vmalert evaluating ``rule_files`` on the VictoriaMetrics at ``datasource``; yields its base URL.

    Recorded series are written back into that VictoriaMetrics (the alerts read
    them), and alerts go to the Alertmanager API at ``notifier``.
    """
    path = binary(VMALERT)
    if path is None:
        raise FileNotFoundError(VMALERT)
    with (
        tempfile.TemporaryDirectory(prefix="vmalert-") as tmp,
        serve(
            VMALERT,
            lambda port: [
                path,
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-datasource.url={datasource}",
                f"-remoteWrite.url={datasource}",
                "-remoteWrite.flushInterval=200ms",
                f"-notifier.url={notifier}",
                f"-evaluationInterval={interval}",
                "-loggerLevel=WARN",
                *(f"-rule={file}" for file in rule_files),
            ],
            Path(tmp),
        ) as base,
    ):
        yield base


@contextmanager
def flushing(base: str, every: float = 0.5) -> Iterator[None]:
    """While inside, make what the VictoriaMetrics at ``base`` took in searchable every ``every`` seconds.

    VictoriaMetrics 1.79 makes a new series searchable about 10 s after its first
    sample. The end-to-end path pays that three times in a row (the agents' series,
    then each recording rule's output, which the next rule reads), about 30 s per
    test that no dashboard or alert under test depends on. Its own
    ``/internal/force_flush`` (what :func:`tests.sinks.realprocs.flush` calls)
    makes the samples searchable at once.
    """
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError):  # the engine may be on its way down
                flush(base)

    thread = threading.Thread(target=run, name="victoria-metrics-flush", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def query(base: str, expr: str) -> tuple[int, Any]:
    """An instant query through the engine's HTTP API: the status and the JSON answer."""
    return _get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def vector(base: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query that must succeed."""
    status, answer = query(base, expr)
    assert (200, "success") == (status, answer["status"]), (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def series_over(base: str, expr: str, seconds: float, step: float = 1.0) -> list[dict[str, Any]]:
    """The result of a range query over the last ``seconds``, as a Grafana time-series panel asks for it."""
    end = time.time()
    params = {"query": expr, "start": f"{end - seconds:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    status, answer = _get(base + "/api/v1/query_range?" + urllib.parse.urlencode(params))
    assert (200, "success") == (status, answer["status"]), (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def rules(base: str) -> list[dict[str, Any]]:
    """Every rule the Prometheus at ``base`` has loaded, from ``/api/v1/rules``."""
    status, answer = _get(base + "/api/v1/rules")
    assert 200 == status
    return [rule for group in answer["data"]["groups"] for rule in group["rules"]]


def alerts(base: str) -> list[dict[str, Any]]:
    """The alerts pending or firing in the Prometheus or vmalert at ``base``, from ``/api/v1/alerts``."""
    status, answer = _get(base + "/api/v1/alerts")
    assert 200 == status
    found: list[dict[str, Any]] = answer["data"]["alerts"] or []  # vmalert says null for none
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


def panel_queries(*, range_only: bool = False) -> list[tuple[str, str, str]]:
    """``(dashboard file, panel title, expr)`` for every target of every panel (or only the range queries)."""
    return [
        (name, panel["title"], target["expr"])
        for name, dashboard in dashboards().items()
        for panel in panels(dashboard)
        for target in panel["targets"]
        if target["range"] or not range_only
    ]


def concrete(expr: str, pops: Sequence[str] = (), rate_interval: str = "1m") -> str:
    """A panel query as Grafana sends it: ``$pop`` a regex of ``pops`` (all when empty), ``$__rate_interval`` set.

    POP ids match ``^[a-z0-9][a-z0-9-]{0,62}$``, so none needs escaping in a regex.
    """
    regex = "|".join(pops) if pops else ".+"
    return expr.replace("$pop", regex).replace("$__rate_interval", rate_interval)
