"""The shipped Grafana dashboards: generated from code, and built the way a shared dashboard must be."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from central.build_dashboards import DASHBOARDS, main, render
from tests.central.engines import DASHBOARD_FILES, dashboards, panels

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\(")
SELECTOR = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{([^}]*)\}")
FLEET = "pop-fleet-overview.json"
DRILL_DOWN = "pop-drill-down.json"


def every_dashboard() -> list[Any]:
    return [pytest.param(dashboard, id=name) for name, dashboard in dashboards().items()]


def every_panel() -> list[Any]:
    return [
        pytest.param(panel, id=f"{name}:{panel['title']}")
        for name, dashboard in dashboards().items()
        for panel in panels(dashboard)
    ]


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [var for var in dashboard["templating"]["list"] if var["name"] == name]
    return found


def walk(node: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a JSON document."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from walk(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def test_checked_in_dashboards_are_what_the_generator_writes() -> None:
    """Each checked-in JSON file is byte for byte what ``make central`` generates, and there is no other."""
    assert sorted(DASHBOARDS) == [path.name for path in DASHBOARD_FILES]
    for path in DASHBOARD_FILES:
        assert render(DASHBOARDS[path.name]) == path.read_text(encoding="utf-8")
    assert 0 == main(["build_dashboards.py", "--check"])


def test_the_fleet_overview_shows_every_signal_per_pop() -> None:
    """The fleet overview has heartbeat age, CPU, memory, disk, requests, unique IPs, spool, delivery and scrub."""
    exprs = " ".join(target["expr"] for panel in panels(dashboards()[FLEET]) for target in panel["targets"])
    wanted = [
        "pop_agent_last_heartbeat_timestamp_seconds",
        "cpu_percent",
        "mem_used_percent",
        "disk_used_percent",
        "requests_total",
        "unique_ips_1h",
        "spool_pending",
        "delivery_failures_consecutive",
        "scrub_rejected_total",
    ]
    assert [] == [metric for metric in wanted if metric not in exprs]


@pytest.mark.parametrize("dashboard", every_dashboard())
def test_the_data_source_is_a_variable_and_no_uid_is_fixed(dashboard: dict[str, Any]) -> None:
    """A ``datasource`` variable of type prometheus, and no data source uid other than ``${datasource}``."""
    datasource = variable(dashboard, "datasource")
    assert ("datasource", "prometheus") == (datasource["type"], datasource["query"])
    assert [dashboard["uid"]] == [uid for uid in walk(dashboard, "uid") if uid != "${datasource}"]


@pytest.mark.parametrize("dashboard", every_dashboard())
def test_the_pop_variable_lists_the_pops_that_send_heartbeats(dashboard: dict[str, Any]) -> None:
    """The ``pop`` variable lists the POPs that send heartbeats and takes several; only the overview offers All."""
    pop = variable(dashboard, "pop")
    assert DATASOURCE == pop["datasource"]
    assert pop["definition"] == pop["query"]["query"]
    assert pop["definition"].startswith("label_values(pop_agent_last_heartbeat_timestamp_seconds")
    assert pop["definition"].endswith(", pop)")
    fleet = dashboard["uid"] == dashboards()[FLEET]["uid"]
    assert (True, fleet) == (pop["multi"], pop["includeAll"])
    assert (".+" if fleet else None) == pop.get("allValue")


@pytest.mark.parametrize("panel", every_panel())
def test_every_panel_and_target_reads_the_datasource_variable(panel: dict[str, Any]) -> None:
    """The panel and each of its targets use ``${datasource}``."""
    assert [DATASOURCE] * (1 + len(panel["targets"])) == [
        panel["datasource"],
        *(target["datasource"] for target in panel["targets"]),
    ]


@pytest.mark.parametrize("panel", every_panel())
def test_every_panel_has_a_unit(panel: dict[str, Any]) -> None:
    """``fieldConfig.defaults.unit`` is set, and so is a unit on each table column."""
    assert panel["fieldConfig"]["defaults"]["unit"]
    if panel["type"] == "table":
        renamed = panel["transformations"][1]["options"]["renameByName"].values()
        units = {
            override["matcher"]["options"]: [prop["value"] for prop in override["properties"] if prop["id"] == "unit"]
            for override in panel["fieldConfig"]["overrides"]
        }
        assert [] == [column for column in renamed if not units.get(column)]


@pytest.mark.parametrize("panel", every_panel())
def test_every_rate_and_increase_uses_the_rate_interval(panel: dict[str, Any]) -> None:
    """Each rate(), irate() or increase() takes ``[$__rate_interval]``, right at any zoom and scrape interval."""
    for target in panel["targets"]:
        expr = target["expr"]
        for match in RANGE_FUNCTION.finditer(expr):
            window = expr[match.end() :].split("[", 1)[1].split("]", 1)[0]
            assert "$__rate_interval" == window, expr


@pytest.mark.parametrize("panel", every_panel())
def test_every_selector_is_the_agents_job_and_the_chosen_pops(panel: dict[str, Any]) -> None:
    """Every series selector in a query names ``job="pop_agent"`` and ``pop=~"$pop"``."""
    for target in panel["targets"]:
        selectors = SELECTOR.findall(target["expr"])
        assert selectors, target["expr"]
        assert [] == [inner for inner in selectors if not {'job="pop_agent"', 'pop=~"$pop"'} <= set(inner.split(", "))]


@pytest.mark.parametrize("dashboard", every_dashboard())
def test_panels_have_distinct_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    """No two panels share an id or a cell of the grid, and each fits in its 24 columns."""
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert set() == cells & mine, panel["title"]
        cells |= mine
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert sorted(set(ids)) == sorted(ids)
    assert 39 == dashboard["schemaVersion"]


@pytest.mark.parametrize("panel", every_panel())
def test_every_series_is_named_after_its_pop(panel: dict[str, Any]) -> None:
    """Each graph's legend shows ``{{pop}}``, and each query keeps the ``pop`` label, so several POPs stay apart."""
    for target in panel["targets"]:
        assert re.match(r"^(time\(\) - )?max by \(pop\b", target["expr"]), target["expr"]
        if panel["type"] == "timeseries":
            assert "{{pop}}" in target["legendFormat"]


def test_links_between_dashboards_point_at_shipped_dashboards() -> None:
    """Every ``/d/<uid>`` link (the overview's table rows open the drill-down) names a dashboard that ships."""
    uids = {dashboard["uid"] for dashboard in dashboards().values()}
    urls = [url for dashboard in dashboards().values() for url in walk(dashboard, "url")]
    assert urls
    assert all(url.startswith("/d/") for url in urls)
    assert set() == {url.removeprefix("/d/").split("?")[0] for url in urls} - uids
