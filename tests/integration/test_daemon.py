"""The real daemon against a real central on 127.0.0.1: delivery, outages, shutdown, crashes."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web

from tests.conftest import REPO
from tests.integration.centralserver import Central
from tests.integration.daemon import Daemon, wait_for

SCHEMA = json.loads((REPO / "docs" / "heartbeat.schema.json").read_text())
TOKEN = "central-TEST-token-4242"


async def start_central(aiohttp_server: Any, central: Central) -> str:
    server = await aiohttp_server(central.app())
    return str(server.make_url("/ingest/v1/heartbeats"))


def daemon_for(tmp_path: Path, url: str, **env: str) -> Daemon:
    settings = {
        "POP_AGENT_TELEMETRY": "on",
        "POP_AGENT_INTERVAL": env.pop("interval", "0.2"),
        "POP_AGENT_SINKS__CENTRAL__URL": url,
        "POP_AGENT_SINKS__CENTRAL__TOKEN": TOKEN,
        "POP_AGENT_DELIVERY__BACKOFF_INITIAL": "0.05",
        "POP_AGENT_DELIVERY__BACKOFF_MAX": "0.2",
    }
    return Daemon(tmp_path, **{**settings, **env})


async def test_delivers_and_stops_cleanly(aiohttp_server: Any, tmp_path: Path) -> None:
    """Heartbeats reach central with the bearer token, seq increases, SIGTERM exits 0 with an empty spool."""
    central = Central()
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 5)
    assert await daemon.stop() == 0
    for doc in central.acked:
        jsonschema.validate(doc, SCHEMA)
    seqs = [doc["seq"] for doc in central.acked]
    assert seqs == sorted(set(seqs))
    assert central.headers[0]["Authorization"] == f"Bearer {TOKEN}"
    assert daemon.pending() == []
    events = [line["event"] for line in daemon.logs()]
    assert "agent_started" in events and "agent_stopped" in events
    assert TOKEN not in daemon.all_output()


async def test_a_flush_interval_sends_the_first_heartbeat_at_once_then_several_together(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """delivery.flush_interval: the first tick's heartbeat goes alone at once; later ticks' wait and go together."""
    central = Central()
    sizes: list[int] = []

    def count(batch: list[dict[str, Any]]) -> web.StreamResponse:
        sizes.append(len(batch))
        return web.json_response({"accepted": len(batch)})

    central.respond = count
    url = await start_central(aiohttp_server, central)
    daemon = daemon_for(tmp_path, url, POP_AGENT_DELIVERY__FLUSH_INTERVAL="1")  # about five 0.2 s ticks a flush
    await daemon.start()
    await wait_for(lambda: len(sizes) >= 3)
    assert await daemon.stop() == 0
    assert (1, True) == (sizes[0], all(size >= 2 for size in sizes[1:3]))
    seqs = [doc["seq"] for doc in central.acked]
    assert (seqs, []) == (list(range(seqs[0], seqs[0] + len(seqs))), daemon.pending())


async def test_outage_then_recovery_delivers_everything(aiohttp_server: Any, tmp_path: Path) -> None:
    """Central answers 503 for a while: heartbeats stay spooled, then all of them arrive once it is back."""
    central = Central()
    central.respond = lambda batch: web.Response(status=503, headers={"Retry-After": "0"})
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(daemon.pending()) >= 8)
    assert central.acked == []
    central.respond = None
    await wait_for(lambda: len(central.acked) >= 12 and not daemon.pending())
    assert await daemon.stop() == 0
    seqs = sorted({doc["seq"] for doc in central.acked})
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    logs = daemon.logs()
    failures = [line for line in logs if line["event"] == "delivery_failed"]
    assert len(failures) == 1  # logged once per transition, not every tick
    assert any(line["event"] == "delivery_recovered" for line in logs)


async def test_telemetry_off_sends_nothing(aiohttp_server: Any, tmp_path: Path) -> None:
    """With telemetry off the daemon collects and spools locally, and central hears nothing."""
    central = Central()
    daemon = daemon_for(
        tmp_path,
        await start_central(aiohttp_server, central),
        POP_AGENT_TELEMETRY="off",
        POP_AGENT_SPOOL__LOCAL_MAX_FILES="10",
        POP_AGENT_ALERTS__OUTAGE_AFTER="0.2",
    )
    await daemon.start()
    await wait_for(lambda: '"spool_dropped_total":3' in "".join(p.read_text() for p in daemon.pending()))
    assert await daemon.stop() == 0
    assert central.requests == 0
    assert len(daemon.pending()) == 10
    # A full local spool with nowhere to send is its normal state, not an outage.
    assert not [line for line in daemon.logs() if line.get("level") == "error"]
    for path in daemon.pending():
        jsonschema.validate(json.loads(path.read_bytes()), SCHEMA)


async def test_sigterm_during_a_hung_send_keeps_the_batch(aiohttp_server: Any, tmp_path: Path) -> None:
    """Central accepts and never answers: SIGTERM still exits 0 within the deadline, nothing is lost."""
    central = Central()
    hang = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        central.requests += 1
        await hang.wait()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/ingest/v1/heartbeats", never)
    server = await aiohttp_server(app)
    daemon = daemon_for(tmp_path, str(server.make_url("/ingest/v1/heartbeats")), POP_AGENT_SHUTDOWN_DEADLINE="2")
    await daemon.start()
    await wait_for(lambda: central.requests >= 1 and len(daemon.pending()) >= 3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await daemon.stop(timeout=20) == 0
    assert loop.time() - started < 15  # bounded by the 2 s deadline plus start-up noise, not by central
    ids = {path.stem for path in daemon.pending()}
    assert len(ids) >= 3
    hang.set()


async def test_status_reports_spool_and_delivery(aiohttp_server: Any, tmp_path: Path) -> None:
    """`agent status --json` shows edition, telemetry, spool depth and the sink's last result."""
    central = Central()
    central.respond = lambda batch: web.Response(status=401)
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(daemon.pending()) >= 3 and (daemon.state_dir / "status.json").exists())
    await asyncio.sleep(0.5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "status", "--json", cwd=tmp_path, env=daemon.env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert await daemon.stop() == 0
    status = json.loads(out)
    assert status["edition"] == "community"
    assert status["telemetry"] == "on"
    assert status["spool"]["pending"] >= 3
    assert status["sinks"]["central"]["last_failure"] == "auth"
    assert status["sinks"]["central"]["consecutive_failures"] >= 1
    assert set(status["collectors"]) >= {"cpu", "memory", "disk"}


async def test_a_healthy_daemon_logs_its_first_tick_and_then_keeps_quiet(tmp_path: Path) -> None:
    """At the default level only the first tick has a line: the journal shows the daemon works, not each tick."""
    daemon = Daemon(tmp_path, POP_AGENT_INTERVAL="0.1")
    await daemon.start("--log-level", "info")  # the last flag wins over the helper's debug
    try:
        await wait_for(lambda: len(daemon.pending()) >= 5)
    finally:
        assert 0 == await daemon.stop()
    ticks = [(line["level"], line["seq"]) for line in daemon.logs() if line.get("event") == "tick"]
    assert [("info", 0)] == ticks


async def test_sigkill_while_writing_and_draining(aiohttp_server: Any, tmp_path: Path) -> None:
    """Killed with SIGKILL again and again mid-write and mid-drain: every pending file parses, nothing is lost."""
    central = Central()
    flaky = random.Random(7)
    central.respond = lambda batch: web.Response(status=503 if flaky.random() < 0.3 else 200)
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central), interval="0.1")
    rounds = random.Random(11)
    for _ in range(8):
        await daemon.start()
        # Kill at a random moment once the run is ticking: mid-write, mid-drain or idle.
        await wait_for(lambda: '"event": "tick"' in daemon.log_path.read_text(errors="replace"), timeout=60)
        await asyncio.sleep(rounds.uniform(0.0, 0.6))
        daemon.kill()
        await daemon.proc.wait()  # type: ignore[union-attr]
        for path in daemon.pending():
            json.loads(path.read_bytes())  # every file that made it to pending/ is whole
    central.respond = None
    await daemon.start()
    await wait_for(lambda: '"event": "tick"' in daemon.log_path.read_text(errors="replace"), timeout=60)
    await wait_for(lambda: not daemon.pending(), timeout=60)
    assert await daemon.stop() == 0
    # Each run hands out seq from a fresh block; within a run no heartbeat may be missing.
    by_block: dict[int, list[int]] = {}
    for seq in {doc["seq"] for doc in central.acked}:
        by_block.setdefault(seq // 1000, []).append(seq)
    for block, seqs in by_block.items():
        assert sorted(seqs) == list(range(block * 1000, block * 1000 + len(seqs))), block
    assert len(by_block) >= 8
    assert not list((daemon.state_dir / "spool" / "quarantine").glob("*"))


async def test_sigint_is_a_clean_stop(aiohttp_server: Any, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) stops the daemon cleanly with exit 0."""
    central = Central()
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 1)
    assert await daemon.stop(signal.SIGINT) == 0


async def test_backlog_is_scrubbed_on_its_way_out(aiohttp_server: Any, tmp_path: Path, run_agent: Any) -> None:
    """A heartbeat dropped into pending/ by hand with an address in it never reaches central, nor stays on disk."""
    once = run_agent("--once")
    clean = json.loads(once.stdout)
    tainted = json.loads(once.stdout)
    from agent.heartbeat import uuid7

    clean["id"], tainted["id"] = uuid7(), uuid7()
    tainted["pop"] = "10-20-30-40"
    pending = tmp_path / "state" / "spool" / "pending"
    pending.mkdir(parents=True)
    for doc in (clean, tainted):
        (pending / f"{doc['id']}.json").write_text(json.dumps(doc))
    central = Central()
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: clean["id"] in central.acked_ids and not daemon.pending())
    assert await daemon.stop() == 0
    assert tainted["id"] not in {doc["id"] for doc in central.received}
    rejected = daemon.state_dir / "spool" / "rejected"
    assert not (rejected / f"{tainted['id']}.json").exists()  # only the reason is kept, never the document
    reasons = json.loads((rejected / f"{tainted['id']}.reason.json").read_text())
    assert reasons["reason"] == "scrub_ip_address"


async def test_enqueue_beside_a_running_daemon(aiohttp_server: Any, tmp_path: Path, run_agent: Any) -> None:
    """`agent enqueue` while the daemon holds the spool hands the document over, and central gets it."""
    central = Central()
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 1)
    doc = json.loads(run_agent("--once").stdout)
    from agent.heartbeat import uuid7

    doc["id"] = uuid7()
    path = tmp_path / "drop.json"
    path.write_text(json.dumps(doc))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "enqueue", str(path), cwd=tmp_path, env=daemon.env,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert b"handed" in out
    await wait_for(lambda: doc["id"] in central.acked_ids)
    assert await daemon.stop() == 0
    assert not list((daemon.state_dir / "spool" / "incoming").glob("*.json"))


async def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    """Through $NOTIFY_SOCKET: READY=1 at start, WATCHDOG=1 at half the watchdog period between ticks, STOPPING=1."""
    import socket

    address = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.setblocking(False)
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return

    daemon = Daemon(tmp_path, POP_AGENT_INTERVAL="30", NOTIFY_SOCKET=str(address), WATCHDOG_USEC="400000")
    await daemon.start()
    await wait_for(lambda: (drain(), messages.count("WATCHDOG=1") >= 4)[1], timeout=30)
    assert await daemon.stop() == 0
    drain()
    sock.close()
    assert messages[0] == "READY=1"
    assert messages[-1] == "STOPPING=1"


async def test_upload_drains_by_hand_and_counts_what_is_left(aiohttp_server: Any, tmp_path: Path) -> None:
    """`agent upload` with central down leaves the backlog and says how much; with central up it drains all."""
    central = Central()
    central.respond = lambda batch: web.Response(status=503)
    daemon = daemon_for(tmp_path, await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(daemon.pending()) >= 4)
    assert await daemon.stop() == 0
    backlog = len(daemon.pending())

    env = daemon.env

    async def upload() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "upload", cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    code, out = await upload()
    assert code == 1
    assert f"{backlog} pending" in out
    central.respond = None
    code, out = await upload()
    assert code == 0
    assert "0 pending" in out
    assert daemon.pending() == []
