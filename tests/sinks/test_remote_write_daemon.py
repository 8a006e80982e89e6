"""The real daemon with a remote-write receiver that answers badly, beside a real central that answers well.

Whatever the remote-write receiver does, central gets every heartbeat and the
ticks go on; the spool keeps for remote write exactly what its answers say to keep.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.centralserver import Central
from tests.integration.daemon import Daemon, wait_for
from tests.sinks.rwdaemon import POP, rw_daemon, sink_status
from tests.sinks.rwdecode import Decoded, decode_body

TOKEN = "central-RW-test-token-5151"


@dataclass
class BadReceiver:
    """A remote-write receiver answering every request with ``status`` (or never, when ``hang``)."""

    status: int = 204
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    received: list[Decoded] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(decode_body(await request.read()))
        if self.hang:
            await self.release.wait()
        return web.Response(status=self.status, text=self.text, headers=self.headers)

    @property
    def pops(self) -> set[str]:
        return {labels["pop"] for series in self.received for labels, _ in series}


async def start(aiohttp_server: Any, tmp_path: Path, receiver: BadReceiver, central: Central) -> Daemon:
    """The daemon delivering to both receivers, started."""
    app = web.Application()
    app.router.add_post("/api/v1/write", receiver.handle)
    rw = await aiohttp_server(app)
    ingest = await aiohttp_server(central.app())
    daemon = rw_daemon(
        tmp_path,
        str(rw.make_url("/api/v1/write")),
        POP_AGENT_SINKS__REMOTE_WRITE__READ_TIMEOUT="0.5",
        POP_AGENT_SINKS__REMOTE_WRITE__MAX_ATTEMPTS="2",
        POP_AGENT_SINKS__CENTRAL__URL=str(ingest.make_url("/ingest/v1/heartbeats")),
        POP_AGENT_SINKS__CENTRAL__TOKEN=TOKEN,
    )
    await daemon.start()
    return daemon


def rejected_reasons(daemon: Daemon) -> set[tuple[str, str]]:
    """``(sink, reason)`` of every heartbeat set aside in ``spool/rejected/``."""
    folder = daemon.state_dir / "spool" / "rejected"
    return {tuple(json.loads(p.read_text()).values()) for p in folder.glob("*.reason.json")}  # type: ignore[misc]


@pytest.mark.parametrize(
    ("behaviour", "kept", "reason"),
    [
        ({"status": 400, "text": "snappy: corrupt input"}, False, "malformed"),
        ({"status": 404}, False, "http_404"),
        ({"status": 413}, False, "too_large"),
        ({"status": 429, "headers": {"Retry-After": "0"}}, True, "http_429"),
        ({"status": 500, "text": "internal error"}, True, "http_500"),
        ({"hang": True}, True, "timeout"),
    ],
    ids=["400", "404", "413", "429", "500", "hang"],
)
async def test_a_bad_receiver_holds_up_neither_central_nor_the_ticks(
    aiohttp_server: Any, tmp_path: Path, behaviour: dict[str, Any], kept: bool, reason: str
) -> None:
    """Central gets every heartbeat; remote write keeps (5xx, 429, hang) or settles (4xx) as its answer says."""
    answer = BadReceiver(**behaviour)
    central = Central()
    daemon = await start(aiohttp_server, tmp_path, answer, central)

    def answered() -> bool:
        status = sink_status(daemon)
        return len(central.acked) >= 8 and (status.get("last_failure") is not None or status["rejected_total"] >= 3)

    try:
        await wait_for(answered, timeout=60)
        assert 0 == await daemon.stop()  # a hung request is cut short by the shutdown deadline
    finally:
        answer.release.set()

    assert {POP} == answer.pops
    assert {doc["pop"] for doc in central.received} == {POP}
    pending = {path.stem for path in daemon.pending()}
    status = sink_status(daemon)
    if kept:
        assert reason == status["last_failure"]
        assert central.acked_ids <= pending  # every heartbeat central has is still spooled for remote write
        assert set() == rejected_reasons(daemon)
    else:
        assert None is status["last_failure"]
        assert set() == central.acked_ids & pending  # settled by both sinks, so gone from the spool
        assert {("remote_write", reason)} == rejected_reasons(daemon)
