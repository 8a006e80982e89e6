"""A third-party sink that raises (a bug, not a delivery failure) beside central."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.reliability.harness import (
    Central,
    assert_keeps_rhythm,
    events,
    start_central,
    ticks,
    wait_for,
)

PLUGIN = """
import json, os
from agent.plugin_api import NoSettings
from agent.sample import Delivery

class Buggy:
    name = "buggy"
    max_batch = 5
    settings_model = NoSettings

    @classmethod
    def from_settings(cls, cfg, context):
        return cls()

    def __init__(self):
        self.calls = 0

    async def send(self, batch, deadline):
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("a bug in a plugin, 198.51.100.9")
        with open(os.environ["BUGGY_SINK_LOG"], "a") as log:
            for item in batch:
                log.write(json.dumps(json.loads(item.raw)["seq"]) + "\\n")
        return Delivery(acked=frozenset(item.id for item in batch))

    async def aclose(self):
        pass
"""


def plugin_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    info = site / "pop_agent_buggy-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pop-agent-buggy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pop_agent.sinks]\nbuggy = buggysink:Buggy\n")
    (site / "buggysink.py").write_text(textwrap.dedent(PLUGIN))
    return site


async def test_sink_that_raises_keeps_delivering(aiohttp_server: Any, make_daemon: Any, tmp_path: Path) -> None:
    """A sink whose every other send raises: its loop lives on, it gets everything, and so does central."""
    received = tmp_path / "buggy.log"
    central = Central()
    daemon = make_daemon(
        await start_central(aiohttp_server, central),
        PYTHONPATH=f"{REPO}:{plugin_site(tmp_path)}",
        BUGGY_SINK_LOG=str(received),
    )
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 5 and received.exists())
    await assert_keeps_rhythm(daemon)
    await wait_for(lambda: not daemon.pending())
    assert 0 == await daemon.stop()
    # Central took everything; the buggy sink everything but what its last (raising) call left spooled for it.
    left = {json.loads(path.read_bytes())["seq"] for path in daemon.pending()}
    assert set() == set(ticks(daemon)) - {doc["seq"] for doc in central.acked}
    buggy = {json.loads(line) for line in received.read_text().splitlines()}
    assert set() == set(ticks(daemon)) - buggy - left
    assert {("buggy", "RuntimeError")} == {(line["sink"], line["code"]) for line in events(daemon, "delivery_failed")}
    assert "198.51.100.9" not in daemon.all_output()
