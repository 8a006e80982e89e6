"""Every collector raising or hanging at once: the daemon still ticks, delivers, and stops on time."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.reliability.harness import (
    Central,
    assert_delivered,
    assert_keeps_rhythm,
    events,
    start_central,
    ticks,
    wait_for,
)

BUILTINS = ("cpu", "memory", "disk", "network", "system", "vaults", "janitor", "requests")
# More hung threads than the default executor has workers on a small machine (min(32, cpus + 4)).
HUNG_THREADS = 10

PLUGIN = """
import asyncio, threading
from agent.errors import CollectorError
from agent.plugin_api import NoSettings
from agent.sample import MetricKind, MetricSpec, Sample

def _spec(name):
    return (MetricSpec(f"{name}_value", MetricKind.GAUGE, "never"),)

class _Base:
    settings_model = NoSettings

    @classmethod
    def from_settings(cls, cfg, context):
        return cls()

class Raises(_Base):
    name = "raises"; metrics = _spec(name)
    async def collect(self):
        raise RuntimeError("detail 198.51.100.23 must not leak")

class Refuses(_Base):
    name = "refuses"; metrics = _spec(name)
    async def collect(self):
        raise CollectorError("no source", code="no_source")

class Cancelled(_Base):
    name = "cancelled"; metrics = _spec(name)
    async def collect(self):
        raise asyncio.CancelledError()

class ReturnsNone(_Base):
    name = "returns_none"; metrics = _spec(name)
    async def collect(self):
        return None

class Waits(_Base):
    name = "waits"; metrics = _spec(name)
    async def collect(self):
        await asyncio.Event().wait()

class Sleeps(_Base):
    name = "sleeps"; metrics = _spec(name)
    async def collect(self):
        await asyncio.sleep(3600)
        return [Sample("sleeps_value", 1)]

HUNG = threading.Event()

def _thread_hang(index):
    class Hangs(_Base):
        name = f"hangs{index}"; metrics = _spec(name)
        async def collect(self):
            await asyncio.to_thread(HUNG.wait)  # never set: a stuck NFS read, say
            return []
    return Hangs
"""


def plugin_site(tmp_path: Path) -> Path:
    """A third-party distribution whose collectors all raise, return garbage or hang."""
    site = tmp_path / "site"
    info = site / "pop_agent_hostile-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pop-agent-hostile\nVersion: 1.0\n")
    names = ["raises = hostile:Raises", "refuses = hostile:Refuses", "cancelled = hostile:Cancelled"]
    names += ["returns_none = hostile:ReturnsNone", "waits = hostile:Waits", "sleeps = hostile:Sleeps"]
    names += [f"hangs{i} = hostile:Hangs{i}" for i in range(HUNG_THREADS)]
    (info / "entry_points.txt").write_text("[pop_agent.collectors]\n" + "\n".join(names) + "\n")
    hung = "".join(f"Hangs{i} = _thread_hang({i})\n" for i in range(HUNG_THREADS))
    (site / "hostile.py").write_text(textwrap.dedent(PLUGIN) + hung)
    return site


async def test_every_collector_failing_at_once(aiohttp_server: Any, tmp_path: Path, make_daemon: Any) -> None:
    """Every collector raising, returning None or hanging: heartbeats still go out each tick, SIGTERM exits 0."""
    central = Central()
    daemon = make_daemon(
        await start_central(aiohttp_server, central),
        PYTHONPATH=f"{REPO}:{plugin_site(tmp_path)}",
        POP_AGENT_COLLECTORS__TIMEOUT="0.05",
        POP_AGENT_COLLECTORS__DISABLED='["' + '","'.join(BUILTINS) + '"]',
    )
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3, timeout=20)
    await assert_keeps_rhythm(daemon, seconds=3.0)
    statuses = central.acked[-1]["collectors"]
    assert "ok" not in statuses.values()
    assert statuses["raises"] == "error"
    assert statuses["returns_none"] == "error"
    assert statuses["hangs0"] in ("timeout", "busy")
    assert statuses["waits"] in ("timeout", "busy")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert 0 == await daemon.stop(timeout=30)
    assert loop.time() - started < 20  # the 3 s shutdown deadline, not the hung threads, bounds the stop
    assert_delivered(daemon, central)
    assert len(ticks(daemon)) >= 10
    assert events(daemon, "tick_failed") == []
    assert "198.51.100.23" not in daemon.all_output()
