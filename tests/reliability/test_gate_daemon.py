"""The gate in the running daemon: foreign heartbeats with repeated keys or unknown collectors never reach central."""

from __future__ import annotations

import json
from typing import Any

from agent import heartbeat
from tests.heartbeats import make_heartbeat
from tests.reliability.harness import Central, events, rejected_ids, start_central, wait_for


def with_repeated_pop(doc: dict[str, Any]) -> bytes:
    """``doc`` whose bytes name `pop` twice, first as an address (a parser keeps the second)."""
    return ('{"pop": "10.0.0.7", ' + json.dumps(doc)[1:]).encode()


async def test_foreign_heartbeats_are_held_to_the_gate(aiohttp_server: Any, make_daemon: Any) -> None:
    """Spooled before start or handed over while running, a repeated key or an unknown collector stops a heartbeat."""
    central = Central()
    daemon = make_daemon(await start_central(aiohttp_server, central))
    pending = daemon.state_dir / "spool" / "pending"
    pending.mkdir(parents=True)
    backlog_repeated, backlog_clean = make_heartbeat(1, interval=0.1), make_heartbeat(2, interval=0.1)
    (pending / f"{backlog_repeated['id']}.json").write_bytes(with_repeated_pop(backlog_repeated))
    (pending / f"{backlog_clean['id']}.json").write_bytes(heartbeat.dumps(backlog_clean))
    await daemon.start()
    await wait_for(lambda: backlog_clean["id"] in central.acked_ids)
    incoming = daemon.state_dir / "spool" / "incoming"
    incoming.mkdir(exist_ok=True)
    handed_repeated = make_heartbeat(3, interval=0.1)
    handed_unknown = make_heartbeat(4, collectors={"cpu": "ok", "shell": "ok"}, interval=0.1)
    handed_clean = make_heartbeat(5, interval=0.1)
    (incoming / f"{handed_repeated['id']}.json").write_bytes(with_repeated_pop(handed_repeated))
    (incoming / f"{handed_unknown['id']}.json").write_bytes(heartbeat.dumps(handed_unknown))
    (incoming / f"{handed_clean['id']}.json").write_bytes(heartbeat.dumps(handed_clean))
    await wait_for(lambda: handed_clean["id"] in central.acked_ids)
    assert 0 == await daemon.stop()
    refused = {backlog_repeated["id"], handed_repeated["id"], handed_unknown["id"]}
    assert set() == refused & {doc["id"] for doc in central.received}
    assert {backlog_repeated["id"]: "scrub_duplicate_key"} == rejected_ids(daemon)
    assert 2 == len(events(daemon, "incoming_refused"))
    assert [] == list(incoming.iterdir())
