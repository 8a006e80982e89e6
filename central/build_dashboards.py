"""Central's Grafana dashboards, generated: ``make central`` writes ``central/dashboards/*.json``.

Two dashboards: the fleet overview (every POP side by side) and the drill-down
into one POP. The JSON is checked in for Grafana to load as it is; a test keeps
it equal to what this module generates, so edit here and run ``make central``.

Usage: ``python central/build_dashboards.py [--check]``; ``--check`` writes
nothing and exits 1, naming the files, when the checked-in JSON is not what
this module generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from central.grafana import (
    FLEET_UID,
    POP_UID,
    Column,
    Graph,
    Query,
    Row,
    Table,
    dashboard,
    per_pop,
    rate_per_pop,
    selector,
)

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
# The PopSilent alert's threshold: a POP whose newest heartbeat is older is silent.
SILENT_AFTER_S = 300

LAST_HEARTBEAT = selector("pop_agent_last_heartbeat_timestamp_seconds")
HEARTBEAT_AGE = f"time() - max by (pop) (last_over_time({LAST_HEARTBEAT}[1h]))"
AGE_HELP = (
    "Seconds since the POP's newest heartbeat (by the POP's clock). Above 5 minutes the POP is silent; "
    "a POP silent for more than an hour drops off this panel (the PopSilent alert remembers it for 7 days)."
)


def fleet() -> dict[str, Any]:
    """The fleet overview: one row per POP, then each signal over time with one line per POP."""
    return dashboard(
        FLEET_UID,
        "POP fleet overview",
        "Every POP's heartbeat age, load, disk, traffic and delivery health, from the POP agent's heartbeats.",
        [
            Table(
                "POPs",
                "One row per POP, the oldest heartbeat first. Click a POP to open its drill-down.",
                (
                    Column("Heartbeat age", HEARTBEAT_AGE, "s", threshold=SILENT_AFTER_S),
                    Column("CPU", per_pop("cpu_percent"), "percent"),
                    Column("Memory", per_pop("mem_used_percent"), "percent"),
                    Column("Fullest disk", per_pop("disk_used_percent"), "percent", threshold=90),
                    Column("Requests", rate_per_pop("rate", "requests_total"), "reqps"),
                    Column("Unique IPs (1h)", per_pop("unique_ips_1h"), "short"),
                    Column("Spool backlog", per_pop("spool_pending"), "short"),
                    Column("Delivery failures in a row", per_pop("delivery_failures_consecutive"), "short", 3),
                    Column("Scrub rejections", per_pop("scrub_rejected_total"), "short", threshold=1),
                ),
            ),
            Graph("Heartbeat age", AGE_HELP, "s", (Query(HEARTBEAT_AGE),), threshold=SILENT_AFTER_S),
            Graph("CPU busy", "Share of CPU time busy.", "percent", (Query(per_pop("cpu_percent")),), max=100),
            Graph(
                "Memory used",
                "Share of RAM not available to new programs.",
                "percent",
                (Query(per_pop("mem_used_percent")),),
                max=100,
            ),
            Graph(
                "Fullest disk",
                "The fullest mount of each POP (usable space in use).",
                "percent",
                (Query(per_pop("disk_used_percent")),),
                max=100,
                threshold=95,
            ),
            Graph(
                "Request rate",
                "Requests per second in the POP's access log.",
                "reqps",
                (Query(rate_per_pop("rate", "requests_total")),),
            ),
            Graph(
                "Unique client IPs, last hour",
                "Distinct client addresses, estimated on the POP by HyperLogLog: a count, never an address.",
                "short",
                (Query(per_pop("unique_ips_1h")),),
            ),
            Graph(
                "Spool backlog",
                "Heartbeats waiting on the POP for at least one sink. Growing means it cannot deliver.",
                "short",
                (Query(per_pop("spool_pending")),),
            ),
            Graph(
                "Delivery failures in a row",
                "Delivery passes that failed in a row, to any sink; 0 once every sink delivers.",
                "short",
                (Query(per_pop("delivery_failures_consecutive")),),
                threshold=3,
            ),
            Graph(
                "Scrub rejections",
                "Heartbeats the POP's scrubber refused (never sent): a bug on the POP.",
                "short",
                (Query(rate_per_pop("increase", "scrub_rejected_total")),),
            ),
        ],
        all_pops=True,
    )


def one_pop() -> dict[str, Any]:
    """The drill-down into one POP (or a few, side by side): every signal its heartbeats carry."""
    return dashboard(
        POP_UID,
        "POP drill-down",
        "Everything one POP's heartbeats carry: agent health, machine, traffic and delivery.",
        [
            Row("Agent"),
            Graph("Heartbeat age", AGE_HELP, "s", (Query(HEARTBEAT_AGE),), threshold=SILENT_AFTER_S),
            Graph(
                "Collectors up",
                "Whether each collector succeeded in the newest heartbeat.",
                "bool_yes_no",
                (Query(per_pop("pop_agent_collector_up", "collector"), "{{pop}} {{collector}}"),),
            ),
            Graph(
                "Agent version",
                "The agent's edition and version (the series is always 1).",
                "none",
                (
                    Query(
                        per_pop("pop_agent_info", "edition", "agent_version"), "{{pop}} {{edition}} {{agent_version}}"
                    ),
                ),
            ),
            Graph(
                "Outage",
                "1 while the POP's own outage alarm is on (delivery, collectors or spool).",
                "bool_yes_no",
                (Query(per_pop("outage_active")),),
            ),
            Graph(
                "Outage length",
                "How long the longest outage under way has lasted, by the POP's count.",
                "s",
                (Query(per_pop("outage_seconds")),),
            ),
            Graph(
                "Delivery failures in a row",
                "Delivery passes that failed in a row, to any sink; 0 once every sink delivers.",
                "short",
                (Query(per_pop("delivery_failures_consecutive")),),
                threshold=3,
            ),
            Row("Machine"),
            Graph("CPU busy", "Share of CPU time busy.", "percent", (Query(per_pop("cpu_percent")),), max=100),
            Graph("Load", "Load average over 1 minute.", "short", (Query(per_pop("load1")),)),
            Graph(
                "Memory used",
                "Share of RAM not available to new programs.",
                "percent",
                (Query(per_pop("mem_used_percent")),),
                max=100,
            ),
            Graph(
                "Disk used",
                "Usable space in use, per mount.",
                "percent",
                (Query(per_pop("disk_used_percent", "mount"), "{{pop}} {{mount}}"),),
                max=100,
                threshold=95,
            ),
            Graph(
                "Disk free",
                "Space free for unprivileged users, per mount.",
                "bytes",
                (Query(per_pop("disk_free_bytes", "mount"), "{{pop}} {{mount}}"),),
            ),
            Graph("Vault stores", "Vault stores held by the POP.", "short", (Query(per_pop("vault_count")),)),
            Row("Traffic"),
            Graph(
                "Request rate",
                "Requests per second in the POP's access log.",
                "reqps",
                (Query(rate_per_pop("rate", "requests_total")),),
            ),
            Graph(
                "Requests by status class",
                "Requests per second over the POP's last interval, by HTTP status class.",
                "reqps",
                (Query(per_pop("requests_class_per_s", "class"), "{{pop}} {{class}}"),),
            ),
            Graph(
                "Unique client IPs",
                "Distinct client addresses, estimated on the POP by HyperLogLog: a count, never an address.",
                "short",
                (
                    Query(per_pop("unique_ips_1h"), "{{pop}} last hour"),
                    Query(per_pop("unique_ips_24h"), "{{pop}} last 24 hours"),
                ),
            ),
            Row("Delivery"),
            Graph(
                "Spool backlog",
                "Heartbeats waiting on the POP for at least one sink.",
                "short",
                (Query(per_pop("spool_pending")),),
            ),
            Graph(
                "Oldest spooled heartbeat",
                "Age of the oldest heartbeat still waiting: how far behind the slowest sink is.",
                "s",
                (Query(per_pop("spool_oldest_age_seconds")),),
            ),
            Graph(
                "Heartbeats dropped",
                "Heartbeats the spool dropped at its bound: lost data.",
                "short",
                (Query(rate_per_pop("increase", "spool_dropped_total")),),
            ),
            Graph(
                "Scrub rejections",
                "Heartbeats the POP's scrubber refused (never sent).",
                "short",
                (Query(rate_per_pop("increase", "scrub_rejected_total")),),
            ),
            Graph(
                "Collector errors",
                "Collector runs that failed or timed out.",
                "short",
                (Query(rate_per_pop("increase", "collector_errors_total")),),
            ),
        ],
        all_pops=False,
    )


DASHBOARDS = {"pop-fleet-overview.json": fleet, "pop-drill-down.json": one_pop}


def render(build: Any) -> str:
    """A dashboard as the checked-in file holds it: indented JSON and a final newline."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    """Write every dashboard (or with ``--check``, compare them); the exit status."""
    check = argv[1:] == ["--check"]
    if argv[1:] and not check:
        print("usage: build_dashboards.py [--check]", file=sys.stderr)
        return 2
    stale = []
    for name, build in DASHBOARDS.items():
        path = DASHBOARDS_DIR / name
        text = render(build)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(DASHBOARDS_DIR.parent.parent)}")
    if stale:
        print(f"out of date (run make central): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
