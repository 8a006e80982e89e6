"""The sent ledger end to end: the real daemon, a local central, real Pushgateway and VictoriaMetrics, ntfy, Kuma."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.ledger import body_path
from tests.conftest import RunAgent
from tests.integration.daemon import Daemon, wait_for
from tests.sinks import realprocs

CENTRAL_TOKEN = "CANARYCENTRALTOKEN9d1e"
GATEWAY_PASSWORD = "CANARYURLPASSWORD4b7c"
KUMA_TOKEN = "CANARYKUMATOKEN2f8a"
NTFY_TOPIC = "pop-alerts-CANARYTOPIC6c3d"
NTFY_TOKEN = "tk_CANARYNTFYTOKEN5a0b"
CANARIES = (CENTRAL_TOKEN, GATEWAY_PASSWORD, KUMA_TOKEN, NTFY_TOPIC, NTFY_TOKEN)


@dataclass
class Wire:
    """Every request body as it arrived on the wire (before any decompression), by sink or hook."""

    bodies: list[tuple[str, str]] = field(default_factory=list)  # (sink, sha256)
    central_ok: bool = False
    heartbeats: int = 0
    gateway: str = ""
    vm: str = ""

    def received(self, sink: str, body: bytes) -> None:
        self.bodies.append((sink, hashlib.sha256(body).hexdigest()))

    def count(self, sink: str) -> int:
        return sum(1 for name, _ in self.bodies if name == sink)

    async def central(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received("central", body)
        if not self.central_ok:
            return web.Response(status=503)
        self.heartbeats += len(json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)["heartbeats"])
        return web.json_response({"accepted": True})

    async def ntfy(self, request: web.Request) -> web.Response:
        self.received("ntfy", await request.read())
        return web.json_response({"id": "x1", "event": "message"})

    async def kuma(self, request: web.Request) -> web.Response:
        self.received("kuma", await request.read())
        return web.json_response({"ok": True})

    async def pushgateway(self, request: web.Request) -> web.Response:
        """Record the body, then hand the request on to the real Pushgateway and return its answer."""
        return await self._relay("pushgateway", self.gateway, request)

    async def remote_write(self, request: web.Request) -> web.Response:
        """Record the body, then hand the request on to the real VictoriaMetrics and return its answer."""
        return await self._relay("remote_write", self.vm, request)

    async def _relay(self, sink: str, base: str, request: web.Request) -> web.Response:
        body = await request.read()
        self.received(sink, body)
        names = ("Content-Type", "Content-Encoding", "X-Prometheus-Remote-Write-Version")
        headers = {name: request.headers[name] for name in names if name in request.headers}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(request.method, base + request.path, data=body, headers=headers) as answer,
        ):
            return web.Response(status=answer.status, body=await answer.read())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/ingest/v1/heartbeats", self.central)
        app.router.add_get("/api/push/{token}", self.kuma)
        app.router.add_route("*", "/metrics/{tail:.*}", self.pushgateway)
        app.router.add_post("/api/v1/write", self.remote_write)
        app.router.add_post("/{topic}", self.ntfy)
        return app


@pytest.fixture
def gateway() -> Iterator[str]:
    """The real Prometheus Pushgateway, or a skip where Debian's package is not installed."""
    if realprocs.binary(realprocs.PUSHGATEWAY) is None:
        pytest.skip("prometheus-pushgateway is not installed")
    with realprocs.pushgateway() as base:
        yield base


@pytest.fixture
def vm() -> Iterator[str]:
    """The real VictoriaMetrics, or a skip where Debian's package is not installed."""
    if realprocs.binary(realprocs.VICTORIA_METRICS) is None:
        pytest.skip("victoria-metrics is not installed")
    with realprocs.victoria_metrics() as base:
        yield base


def _records(run_agent: RunAgent, **env: str) -> list[dict[str, Any]]:
    done = run_agent("sent", "--json", **env)
    assert 0 == done.returncode, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_every_request_is_in_the_ledger_as_the_receiver_got_it(
    aiohttp_server: Any, tmp_path: Path, gateway: str, vm: str, run_agent: RunAgent
) -> None:
    """Each receiver's body digests match the ledger's, --verify passes, a tampered body fails, no secret shows."""
    wire = Wire(gateway=gateway, vm=vm)
    server = await aiohttp_server(wire.app(), auto_decompress=False)
    base = f"127.0.0.1:{server.port}"
    env = {
        "POP_AGENT_TELEMETRY": "on",
        "POP_AGENT_INTERVAL": "0.2",
        "POP_AGENT_ALERTS__OUTAGE_AFTER": "0.6",
        "POP_AGENT_SINKS__CENTRAL__URL": f"http://{base}/ingest/v1/heartbeats",
        "POP_AGENT_SINKS__CENTRAL__TOKEN": CENTRAL_TOKEN,
        "POP_AGENT_SINKS__CENTRAL__GZIP_MIN_BYTES": "2048",
        "POP_AGENT_SINKS__PUSHGATEWAY__URL": f"http://pop:{GATEWAY_PASSWORD}@{base}",
        "POP_AGENT_SINKS__REMOTE_WRITE__URL": f"http://{base}/api/v1/write",
        "POP_AGENT_LEDGER__KEEP_BODIES": "true",
        "NTFY_ALERT_URL": f"http://{base}/{NTFY_TOPIC}",
        "NTFY_ALERT_TOKEN": NTFY_TOKEN,
        "KUMA_PUSH_URL": f"http://{base}/api/push/{KUMA_TOKEN}?status=up&msg=OK&ping=",
    }
    daemon = Daemon(tmp_path, **env)
    await daemon.start()
    try:
        await wait_for(lambda: wire.count("ntfy") >= 1, timeout=30)  # central down long enough: an outage
        wire.central_ok = True
        await wait_for(
            lambda: (
                wire.count("ntfy") >= 2
                and wire.heartbeats >= 10
                and wire.count("pushgateway") >= 3
                and wire.count("remote_write") >= 3
            )
        )
        await asyncio.sleep(0.5)
    finally:
        assert 0 == await daemon.stop()
    metrics = realprocs.get_text(gateway + "/metrics")
    assert 'pop="test-pop"' in metrics
    realprocs.flush(vm)
    assert '"pop":"test-pop"' in realprocs.get_text(vm + '/api/v1/export?match[]={pop="test-pop"}')

    records = _records(run_agent, **env)
    answered = Counter((r["sink"], r["sha256"]) for r in records if isinstance(r["status"], int))
    every = Counter((r["sink"], r["sha256"]) for r in records)
    received = Counter(wire.bodies)
    assert {"central", "pushgateway", "remote_write", "ntfy", "kuma"} == {r["sink"] for r in records}
    assert Counter() == answered - received  # every answered request was received with these exact bytes
    assert Counter() == received - every  # and every request received is in the ledger
    assert {503, 200} <= {r["status"] for r in records if r["sink"] == "central"}
    central = [r for r in records if r["sink"] == "central" and r["ids"]]
    assert all(r["seq"][0] <= r["seq"][1] and r["bytes"] > 0 for r in central)

    verified = run_agent("sent", "--verify", **env)
    assert 0 == verified.returncode, verified.stderr
    summary = verified.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{len(records):,} requests, ") and " 0 findings" in summary

    egress = run_agent("egress", **env)
    listing = run_agent("sent", **env)
    places = {"egress": egress.stdout + egress.stderr, "sent": listing.stdout + listing.stderr}
    places.update({str(p): p.read_text(errors="replace") for p in (daemon.state_dir / "ledger").glob("*.jsonl")})
    for where, text in places.items():
        for canary in CANARIES:
            assert canary not in text, (canary, where)
    assert f"http://127.0.0.1:{server.port}/api/push/********" in places["egress"]

    # A kept body edited on disk to hold an address: the second scrub names the record.
    index, target = next((i, r) for i, r in enumerate(records, 1) if r["sink"] == "central" and r["status"] == 200)
    path = body_path(daemon.state_dir / "ledger", target["sha256"])
    raw = path.read_bytes()
    plain = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    path.write_bytes(plain.replace(b'"pop":"test-pop"', b'"pop":"10.0.0.7"', 1))
    tampered = run_agent("sent", "--verify", **env)
    assert 1 == tampered.returncode
    assert f"record {index} (" in tampered.stderr
    assert "does not match its digest" in tampered.stderr
    assert "ip_address" in tampered.stderr
    assert "10.0.0.7" not in tampered.stderr + tampered.stdout


def test_sent_refuses_a_bad_duration_in_one_line(run_agent: RunAgent) -> None:
    """A --since that is not a duration is exit 2 with one line, no traceback."""
    done = run_agent("sent", "--since", "yesterday")

    assert (2, 1, "") == (done.returncode, len(done.stderr.splitlines()), done.stdout)


def test_sent_on_an_unreadable_ledger_says_so_in_one_line(run_agent: RunAgent, tmp_path: Path) -> None:
    """A ledger path that is not a directory is exit 2 with one line naming it."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger").write_text("not a directory")
    done = run_agent("sent", "--verify")

    assert (2, 1) == (done.returncode, len(done.stderr.splitlines()))
    assert "ledger" in done.stderr
