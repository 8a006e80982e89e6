"""A newest-only sink (the Pushgateway) reads the newest heartbeat and never holds a file back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.plugins import discover
from agent.runner import Runner
from agent.settings import SpoolSettings, settings_class
from agent.spool import Spool
from agent.wiring import allowed_metrics
from alerts.health import HEALTH_METRICS
from sinks.central import CentralSink
from sinks.pushgateway import PushgatewaySink
from sinks.series import LAST_HEARTBEAT

BIG = 1 << 30
SINKS = ("central", "pushgateway")


def uuid7(ms: int) -> str:
    hex_ = f"{ms:012x}7000{ms:016x}"
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:32]}"


def ids_of(n: int, start: int = 1_700_000_000_000) -> list[str]:
    return [uuid7(start + i) for i in range(n)]


def doc(doc_id: str) -> bytes:
    return json.dumps({"schema": "pop-heartbeat/1", "id": doc_id}).encode()


def pending(spool: Spool) -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in (spool.root / "pending").iterdir())


@pytest.fixture
def make_spool(tmp_path: Path) -> Iterator[Callable[..., Spool]]:
    """Open spools on one root, the Pushgateway newest-only, and close them all afterwards."""
    opened: list[Spool] = []

    def make(sinks: tuple[str, ...] = SINKS) -> Spool:
        newest_only = [sink for sink in sinks if sink == "pushgateway"]
        spool = Spool(tmp_path / "spool", SpoolSettings(), sinks=sinks, newest_only=newest_only, fsync=False)
        spool.open()
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        spool.close()


def fill(spool: Spool, ids: list[str]) -> None:
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))


def test_it_is_handed_only_the_newest_heartbeat(make_spool: Callable[..., Spool]) -> None:
    """Of a backlog of five, the Pushgateway gets the newest alone; central gets all five, oldest first."""
    spool = make_spool()
    ids = ids_of(5)
    fill(spool, ids)
    newest = [p.id for p in spool.batch("pushgateway", 1000, BIG)]
    oldest_first = [p.id for p in spool.batch("central", 1000, BIG)]
    assert ([ids[-1]], ids) == (newest, oldest_first)


def test_once_it_pushed_the_newest_it_waits_for_a_newer_one(make_spool: Callable[..., Spool]) -> None:
    """After settling the newest, nothing is left for it until a newer heartbeat is spooled."""
    spool = make_spool()
    ids = ids_of(3)
    fill(spool, ids)
    spool.settle("pushgateway", [ids[-1]], {})
    left = spool.batch("pushgateway", 10, BIG)
    newer = uuid7(1_800_000_000_000)
    spool.put(newer, doc(newer))
    assert ([], [newer]) == (left, [p.id for p in spool.batch("pushgateway", 10, BIG)])


def test_a_pushgateway_that_is_down_holds_no_file_back(make_spool: Callable[..., Spool]) -> None:
    """Central acks every heartbeat while the Pushgateway never answers: only the newest stays on disk."""
    spool = make_spool()
    ids = ids_of(6)
    held = []
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
        spool.settle("central", [p.id for p in spool.batch("central", 10, BIG)], {})
        held.append(pending(spool))
    assert [[doc_id] for doc_id in ids] == held


def test_central_that_is_down_keeps_its_backlog_while_the_pushgateway_moves_on(
    make_spool: Callable[..., Spool],
) -> None:
    """One slow sink never holds another: the Pushgateway pushes each newest; every file waits for central."""
    spool = make_spool()
    pushed = []
    for doc_id in ids_of(4):
        spool.put(doc_id, doc(doc_id))
        batch = [p.id for p in spool.batch("pushgateway", 10, BIG)]
        spool.settle("pushgateway", batch, {})
        pushed.append(batch)
    backlog = pending(spool)
    spool.settle("central", backlog, {})
    assert ([[doc_id] for doc_id in ids_of(4)], ids_of(4), []) == (pushed, backlog, pending(spool))


def test_as_the_only_sink_the_spool_keeps_just_the_newest(make_spool: Callable[..., Spool]) -> None:
    """With the Pushgateway alone and down, each new heartbeat supersedes the one before it on disk."""
    spool = make_spool(("pushgateway",))
    ids = ids_of(4)
    fill(spool, ids)
    assert ([ids[-1]], 0) == (pending(spool), spool.stats().dropped_total)


def test_a_late_older_heartbeat_goes_to_central_but_never_to_the_pushgateway(
    make_spool: Callable[..., Spool],
) -> None:
    """A heartbeat older than the newest (enqueued late) would set the gateway's gauges back: only central gets it."""
    spool = make_spool()
    ids = ids_of(3, start=1_700_000_000_100)
    fill(spool, ids)
    spool.settle("pushgateway", [p.id for p in spool.batch("pushgateway", 10, BIG)], {})
    late = uuid7(1_700_000_000_000)
    spool.put(late, doc(late))
    assert ([], [late, *ids]) == (
        spool.batch("pushgateway", 10, BIG),
        [p.id for p in spool.batch("central", 10, BIG)],
    )


def test_after_a_restart_it_is_handed_the_newest_and_superseded_files_go(make_spool: Callable[..., Spool]) -> None:
    """Reopened with the Pushgateway added, a spool hands it the newest, and files central acked go."""
    before = make_spool(("central",))
    ids = ids_of(5)
    fill(before, ids)
    before.settle("central", ids[:4], {})
    before.close()
    spool = make_spool()
    newest = [p.id for p in spool.batch("pushgateway", 10, BIG)]
    assert ([ids[-1]], [ids[-1]]) == (newest, pending(spool))


# -- the real daemon, with a central and a Pushgateway on 127.0.0.1 --------------------------


class Receivers:
    """A central and a Pushgateway that answer with the statuses set on them, recording what they got."""

    def __init__(self) -> None:
        self.central_status = 200
        self.gateway_status = 200
        self.central_ids: list[str] = []
        self.pushed_times: list[float] = []

    async def ingest(self, request: web.Request) -> web.Response:
        if self.central_status == 200:
            self.central_ids += [hb["id"] for hb in json.loads(await request.read())["heartbeats"]]
        return web.Response(status=self.central_status)

    async def push(self, request: web.Request) -> web.Response:
        if self.gateway_status == 200:
            for line in (await request.read()).decode().splitlines():
                if line.startswith(LAST_HEARTBEAT + " "):
                    self.pushed_times.append(float(line.split()[1]))
        return web.Response(status=self.gateway_status)


async def run_daemon(
    aiohttp_server: Any, tmp_path: Path, receivers: Receivers, until: Callable[[], bool]
) -> list[Path]:
    """Run the daemon with both sinks until ``until()`` holds; the files it left in ``pending/``."""
    app = web.Application()
    app.router.add_post("/ingest", receivers.ingest)
    app.router.add_put("/metrics/{tail:.*}", receivers.push)
    server = await aiohttp_server(app)
    settings = settings_class(discover(third_party=False))(
        state_dir=tmp_path / "state",
        interval=0.1,
        telemetry="on",
        delivery={"backoff_initial": 0.01, "backoff_max": 0.05, "flush_interval": 0},
        sinks={
            "central": {"url": str(server.make_url("/ingest")), "token": "t0k3n"},
            "pushgateway": {"url": str(server.make_url(""))},
        },
    )
    central = CentralSink(settings.sinks.central, token="t0k3n")
    gateway = PushgatewaySink(settings.sinks.pushgateway)
    runner = Runner(
        settings,
        edition="community",
        version="0.1.0",
        telemetry=True,
        collectors=[],
        allowed=allowed_metrics([], HEALTH_METRICS),
        sinks=[central, gateway],
    )
    task = asyncio.create_task(runner.run())
    try:
        for _ in range(3000):
            if until():
                break
            await asyncio.sleep(0.01)
    finally:
        runner.request_stop()
        await task
    return sorted((settings.state_dir / "spool" / "pending").iterdir())


async def test_the_daemon_keeps_nothing_for_a_pushgateway_that_is_down(aiohttp_server: Any, tmp_path: Path) -> None:
    """With the Pushgateway answering 503 and central 200, eight heartbeats reach central and one at most stays."""
    receivers = Receivers()
    receivers.gateway_status = 503
    left = await run_daemon(aiohttp_server, tmp_path, receivers, lambda: len(receivers.central_ids) >= 8)
    assert len(left) <= 1


async def test_the_daemon_pushes_the_newest_while_central_is_down(aiohttp_server: Any, tmp_path: Path) -> None:
    """With central answering 503 the Pushgateway still gets each newest heartbeat, in order; all stay for central."""
    receivers = Receivers()
    receivers.central_status = 503
    left = await run_daemon(aiohttp_server, tmp_path, receivers, lambda: len(receivers.pushed_times) >= 4)
    assert receivers.pushed_times == sorted(set(receivers.pushed_times))
    assert len(left) >= len(receivers.pushed_times) >= 4
