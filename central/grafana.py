"""Grafana's dashboard JSON model as plain dicts: panels, table columns, variables, layout.

Only the standard library, so that generating the dashboards
(:mod:`central.build_dashboards`) needs no development dependency. Every panel
and target reads the data source chosen in the ``datasource`` variable, never a
fixed uid, and every POP query is filtered by the ``pop`` variable.

Every query reads the series the POP agent's heartbeats become (docs/central.md):
each carries ``job="pop_agent"`` and ``pop``, and through the Pushgateway also an
``instance`` label. Queries therefore aggregate ``max by (pop, ...)``, which
gives one series per POP whichever path fed the data source, and never doubles
a POP scraped through two Pushgateways.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FLEET_UID = "pop-agent-fleet"
POP_UID = "pop-agent-pop"
# Grafana's grid is 24 columns wide.
GRID_WIDTH = 24
PANEL_HEIGHT = 8


def selector(metric: str) -> str:
    """``metric`` restricted to the agent's job and the POPs chosen in the ``pop`` variable."""
    return f'{metric}{{job="pop_agent", pop=~"$pop"}}'


def per_pop(metric: str, *labels: str) -> str:
    """The newest value of a series, one per POP (and per each of ``labels``)."""
    return f"max by ({', '.join(('pop', *labels))}) ({selector(metric)})"


def rate_per_pop(function: str, metric: str, *labels: str) -> str:
    """``rate`` or ``increase`` of a counter over Grafana's ``$__rate_interval``, one series per POP."""
    return f"max by ({', '.join(('pop', *labels))}) ({function}({selector(metric)}[$__rate_interval]))"


@dataclass(frozen=True)
class Query:
    """One target: a PromQL expression and the legend of its series."""

    expr: str
    legend: str = "{{pop}}"


@dataclass(frozen=True)
class Graph:
    """A time-series panel."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    width: int = 8
    max: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Column:
    """One column of a table panel: an instant query, one row per POP."""

    title: str
    expr: str
    unit: str
    threshold: float | None = None


@dataclass(frozen=True)
class Table:
    """A table panel with one row per POP and one column per instant query, joined on ``pop``."""

    title: str
    description: str
    columns: tuple[Column, ...]
    height: int = 10


@dataclass(frozen=True)
class Row:
    """A row header grouping the panels after it."""

    title: str


@dataclass
class _Layout:
    """Places panels left to right, top to bottom, on Grafana's grid."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    next_id: int = 1
    panels: list[dict[str, Any]] = field(default_factory=list)

    def place(self, panel: dict[str, Any], width: int, height: int) -> None:
        if self.x + width > GRID_WIDTH:
            self.newline()
        panel = {"id": self.next_id, "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y}, **panel}
        self.next_id += 1
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0


def _thresholds(threshold: float | None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    return {"mode": "absolute", "steps": steps}


def _target(ref: str, expr: str, legend: str, *, instant: bool) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DATASOURCE, "refId": ref, "expr": expr, "legendFormat": legend}
    if instant:
        target.update(format="table", instant=True, range=False)
    else:
        target.update(instant=False, range=True)
    return target


def _graph(panel: Graph) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "min": 0,
        "thresholds": _thresholds(panel.threshold),
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 0,
            "showPoints": "never",
            "spanNulls": False,
            "thresholdsStyle": {"mode": "off" if panel.threshold is None else "line"},
        },
    }
    if panel.max is not None:
        defaults["max"] = panel.max
    return {
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            _target(chr(ord("A") + index), query.expr, query.legend, instant=False)
            for index, query in enumerate(panel.queries)
        ],
    }


def _table(panel: Table) -> dict[str, Any]:
    refs = [chr(ord("A") + index) for index in range(len(panel.columns))]
    renames = {f"Value #{ref}": column.title for ref, column in zip(refs, panel.columns, strict=True)}
    overrides: list[dict[str, Any]] = [
        {
            "matcher": {"id": "byName", "options": "pop"},
            "properties": [
                {"id": "displayName", "value": "POP"},
                {
                    "id": "links",
                    "value": [
                        {
                            "title": "Open this POP",
                            "url": f"/d/{POP_UID}?${{datasource:queryparam}}&var-pop=${{__value.raw}}",
                        }
                    ],
                },
            ],
        }
    ]
    for column in panel.columns:
        properties: list[dict[str, Any]] = [{"id": "unit", "value": column.unit}]
        if column.threshold is not None:
            properties += [
                {"id": "thresholds", "value": _thresholds(column.threshold)},
                {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            ]
        overrides.append({"matcher": {"id": "byName", "options": column.title}, "properties": properties})
    return {
        "type": "table",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": "short", "thresholds": _thresholds(None)}, "overrides": overrides},
        "options": {"showHeader": True, "sortBy": [{"displayName": panel.columns[0].title, "desc": True}]},
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": renames}},
        ],
        "targets": [
            _target(ref, column.expr, "", instant=True) for ref, column in zip(refs, panel.columns, strict=True)
        ],
    }


def _variables(*, all_pops: bool) -> dict[str, Any]:
    pop_query = 'label_values(pop_agent_last_heartbeat_timestamp_seconds{job="pop_agent"}, pop)'
    pop: dict[str, Any] = {
        "name": "pop",
        "label": "POP",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": pop_query,
        "query": {"query": pop_query, "refId": "PopVariable"},
        "current": {},
        "hide": 0,
        "includeAll": all_pops,
        "multi": True,
        "options": [],
        "refresh": 2,  # on time range change, so a new POP appears without a reload
        "regex": "",
        "sort": 1,
    }
    if all_pops:
        pop["allValue"] = ".+"  # all POPs as one regex, not an alternation of thousands of names
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 1,
                "regex": "",
            },
            pop,
        ]
    }


def dashboard(
    uid: str, title: str, description: str, panels: list[Graph | Table | Row], *, all_pops: bool
) -> dict[str, Any]:
    """A whole dashboard: its variables, links and the panels laid out in order.

    The ``pop`` variable always takes several POPs; ``all_pops`` adds "All",
    which a drill-down leaves out so that nobody draws a thousand POPs on it.
    """
    layout = _Layout()
    for panel in panels:
        if isinstance(panel, Row):
            layout.newline()
            layout.place({"type": "row", "title": panel.title, "collapsed": False, "panels": []}, GRID_WIDTH, 1)
            layout.newline()
        elif isinstance(panel, Table):
            layout.place(_table(panel), GRID_WIDTH, panel.height)
        else:
            layout.place(_graph(panel), panel.width, PANEL_HEIGHT)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["pop-agent"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "title": "POP dashboards",
                "tags": ["pop-agent"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": _variables(all_pops=all_pops),
        "panels": layout.panels,
    }
