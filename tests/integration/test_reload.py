"""SIGHUP: the real daemon reloads a valid configuration, keeps running on an invalid one, and still delivers."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

from tests.integration.centralserver import Central
from tests.integration.daemon import Daemon, wait_for

TOKEN = "central-RELOAD-token-1111"
NEW_TOKEN = "central-RELOAD-token-2222"


def config(url: str, token: str, *, interval: float, extra: str = "") -> str:
    return f'telemetry = "on"\ninterval = {interval}\n{extra}[sinks.central]\nurl = "{url}"\ntoken = "{token}"\n'


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [line for line in daemon.logs() if line.get("event") == name]


async def test_sighup_applies_a_valid_configuration_and_refuses_an_invalid_one(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """A valid reload swaps interval, token and collectors; an invalid one is one error line; delivery goes on."""
    central = Central()
    server = await aiohttp_server(central.app())
    url = str(server.make_url("/ingest/v1/heartbeats"))
    settings_file = tmp_path / "agent.toml"
    settings_file.write_text(config(url, TOKEN, interval=0.2))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    messages: list[str] = []
    # Read as systemd does, all along: a full socket queue would block the daemon's sends.
    asyncio.get_running_loop().add_reader(notify.fileno(), lambda: messages.append(notify.recv(4096).decode()))
    vaults = tmp_path / "vaults"
    vaults.mkdir()
    (vaults / "a.db").touch()
    daemon = Daemon(tmp_path, POP_AGENT_CONFIG=str(settings_file), NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    await daemon.start()
    assert daemon.proc is not None
    try:
        await wait_for(lambda: len(central.acked) >= 3)
        settings_file.write_text(
            config(url, NEW_TOKEN, interval=0.3, extra=f'[collectors.vaults]\npath = "{vaults}"\n')
        )
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: bool(events(daemon, "config_reloaded")))
        acked = len(central.acked)
        await wait_for(lambda: len(central.acked) >= acked + 3)
        assert f"Bearer {NEW_TOKEN}" == central.headers[-1]["Authorization"]
        assert 1 == central.acked[-1]["metrics"]["vault_count"]

        settings_file.write_text("interval = = 1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: bool(events(daemon, "reload_refused")))
        acked = len(central.acked)
        await wait_for(lambda: len(central.acked) >= acked + 3)
        assert daemon.proc.returncode is None
    finally:
        assert 0 == await daemon.stop()
        asyncio.get_running_loop().remove_reader(notify.fileno())
        notify.close()
    [reloaded] = events(daemon, "config_reloaded")
    assert ["collectors.vaults.path", "interval", "sinks.central.token"] == reloaded["changed"]
    assert "vaults" in reloaded["collectors"]
    [refused] = events(daemon, "reload_refused")
    assert refused["error"].startswith(f"config file {settings_file}: invalid TOML")
    assert 1 == sum('"reload_refused"' in line for line in daemon.all_output().splitlines())
    assert NEW_TOKEN not in daemon.all_output() and TOKEN not in daemon.all_output()
    reloads = [message for message in messages if message.startswith("RELOADING=1")]
    assert 2 == len(reloads)
    assert all(message.split("\n")[1].startswith("MONOTONIC_USEC=") for message in reloads)
    after_first = messages[messages.index(reloads[0]) :]
    assert "READY=1" in after_first
    seqs = sorted({doc["seq"] for doc in central.acked})
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # nothing lost across the reloads
    assert [] == daemon.pending()


async def test_sighup_refuses_a_change_that_needs_a_restart(aiohttp_server: Any, tmp_path: Path) -> None:
    """Changing the spool's bound on a reload is refused by name, and delivery goes on as it was."""
    central = Central()
    server = await aiohttp_server(central.app())
    url = str(server.make_url("/ingest/v1/heartbeats"))
    settings_file = tmp_path / "agent.toml"
    settings_file.write_text(config(url, TOKEN, interval=0.2))
    daemon = Daemon(tmp_path, POP_AGENT_CONFIG=str(settings_file))
    await daemon.start()
    assert daemon.proc is not None
    try:
        await wait_for(lambda: len(central.acked) >= 2)
        settings_file.write_text(config(url, TOKEN, interval=0.2, extra="[spool]\nmax_files = 500\n"))
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: bool(events(daemon, "reload_refused")))
        acked = len(central.acked)
        await wait_for(lambda: len(central.acked) >= acked + 2)
    finally:
        assert 0 == await daemon.stop()
    [refused] = events(daemon, "reload_refused")
    assert "spool.max_files: changing it needs a restart (systemctl restart pop-agent)" == refused["error"]
    assert not events(daemon, "config_reloaded")
