"""Every dashboard query, and every query docs/central.md suggests, is valid in Prometheus 2.42 and VictoriaMetrics."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.central.engines import (
    PROMETHEUS,
    VICTORIA_METRICS,
    concrete,
    missing,
    panel_queries,
    prometheus,
    query,
    victoria_metrics,
)
from tests.conftest import REPO

QUERIES = panel_queries()
IDS = [f"{name}:{title}:{index}" for index, (name, title, _expr) in enumerate(QUERIES)]
CENTRAL_DOC = REPO / "docs" / "central.md"


def cookbook() -> list[str]:
    """The PromQL queries of docs/central.md's cookbook: one per line, an indented line continuing the last."""
    queries: list[str] = []
    for block in re.findall(r"```promql\n(.*?)```", CENTRAL_DOC.read_text(), re.DOTALL):
        for line in block.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            if line.startswith(" ") and queries:
                queries[-1] += " " + line.strip()
            else:
                queries.append(line)
    return queries


@pytest.fixture(scope="module", params=[PROMETHEUS, VICTORIA_METRICS])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty engine's base URL: Prometheus, then VictoriaMetrics."""
    absent = missing(request.param)
    if absent:
        pytest.skip(f"{request.param} not installed (.ci/run installs Debian's packages)")
    with prometheus() if request.param == PROMETHEUS else victoria_metrics() as base:
        yield base


def test_the_dashboards_and_the_cookbook_hold_queries() -> None:
    """There is something to check: both dashboards' panels and the cookbook hold queries."""
    assert {"pop-fleet-overview.json", "pop-drill-down.json"} == {name for name, _title, _expr in QUERIES}
    assert len(cookbook()) >= 10


@pytest.mark.parametrize(("name", "title", "expr"), QUERIES, ids=IDS)
def test_every_panel_query_parses_and_runs(engine: str, name: str, title: str, expr: str) -> None:
    """The query, with Grafana's variables filled in, is accepted by the engine's query API."""
    status, answer = query(engine, concrete(expr, ["ams1", "fra-2"]))
    assert (200, "success") == (status, answer["status"]), answer


@pytest.mark.parametrize("expr", cookbook())
def test_every_cookbook_query_parses_and_runs(engine: str, expr: str) -> None:
    """Each PromQL query docs/central.md suggests is accepted by the engine's query API."""
    status, answer = query(engine, expr)
    assert (200, "success") == (status, answer["status"]), answer


def test_a_broken_query_is_refused(engine: str) -> None:
    """The check above can fail: an engine refuses a query that does not parse."""
    status, answer = query(engine, "max by (pop) (rate(cpu_percent[1m])")
    assert "error" == answer["status"]
    assert status in {400, 422}
