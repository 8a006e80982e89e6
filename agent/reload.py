"""SIGHUP: read the configuration again and apply it between two ticks, or keep the old one.

The new settings go through the same loading and wiring as at start-up
(:func:`agent.preflight.wire`); an invalid configuration is one error line and
the daemon runs on as it was. A valid one replaces the collectors, the sinks,
the alert hooks and the interval. The spool, the sinks' cursors, the collectors'
saved state (offsets, sketches) and the outage state are not rebuilt, so nothing
spooled or alerted is lost or repeated. What the spool and the alarms are keyed
on cannot change under them: those settings, and the set of sinks, need a restart.

What changed is logged by setting name, never by value. systemd hears
``RELOADING=1`` (with ``MONOTONIC_USEC``) when the reload starts and ``READY=1``
when it is done, as ``Type=notify-reload`` expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from agent.collecting import COLLECTOR_STATE_DIR, saved_states, write_states
from agent.errors import ConfigError
from agent.preflight import Wiring
from agent.settings import Settings

if TYPE_CHECKING:
    from agent.runner import Runner

log = structlog.get_logger("agent")

# Settings the spool, the alarms and the heartbeat's identity are built on: changing them needs a restart.
RESTART_ONLY = ("pop_id", "state_dir", "spool", "alerts", "delivery")

Rebuild = Callable[[], tuple[Settings, Wiring]]


class Reloads:
    """SIGHUP's requests to ``runner``: one reload at a time, between ticks; a stop cancels one still waiting."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.rebuild: Rebuild | None = None  # set by the daemon: settings and parts built anew
        self._task: asyncio.Task[bool] | None = None

    def request(self) -> None:
        """Read the configuration again and apply it between ticks (SIGHUP calls this)."""
        if self.rebuild is None or self.runner.stopping:
            return
        if self._task is not None and not self._task.done():
            return  # the reload under way reads the files after this signal anyway
        self._task = asyncio.ensure_future(reload(self.runner, self.rebuild))

    async def cancel(self) -> None:
        """A stop wins over a reload still waiting for its turn."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The dotted names of the settings whose values differ (secrets compared, never shown)."""
    before, after = dict(_flatten(old.model_dump())), dict(_flatten(new.model_dump()))
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), value


def check_reloadable(old: Settings, new: Settings, old_sinks: list[str], new_sinks: list[str]) -> list[str]:
    """The keys that changed; a :class:`ConfigError` if one of them cannot change without a restart."""
    changed = changed_keys(old, new)
    frozen = sorted({key for key in changed for root in RESTART_ONLY if key == root or key.startswith(root + ".")})
    problems = [f"{key}: changing it needs a restart (systemctl restart pop-agent)" for key in frozen]
    if sorted(old_sinks) != sorted(new_sinks):
        problems.append(
            f"sinks: the sinks that run would change from {', '.join(sorted(old_sinks)) or 'none'} to "
            f"{', '.join(sorted(new_sinks)) or 'none'}, which needs a restart (systemctl restart pop-agent)"
        )
    if problems:
        raise ConfigError("; ".join(problems), problems=problems)
    return changed


async def reload(runner: Runner, rebuild: Rebuild) -> bool:
    """Apply a new configuration to ``runner`` between ticks; ``False`` (and the old one kept) if it is invalid."""
    runner.notifier.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    try:
        async with runner.tick_lock:
            try:
                settings, wiring, changed = await _prepare(runner, rebuild)
            except ConfigError as exc:
                log.error("reload_refused", error=str(exc), kept="the running configuration")
                return False
            except Exception as exc:  # a bug while building the new parts must not end the daemon
                log.error("reload_refused", error=type(exc).__name__, kept="the running configuration")
                return False
            await _apply(runner, settings, wiring)
            log.info(
                "config_reloaded",
                changed=changed,
                interval=settings.interval,
                collectors=[slot.name for slot in runner.collectors],
                sinks=[sink.name for sink in runner.sinks],
            )
            return True
    finally:
        runner.notifier.ready()


async def _prepare(runner: Runner, rebuild: Rebuild) -> tuple[Settings, Wiring, list[str]]:
    """The new settings, their parts and the changed keys; a :class:`ConfigError` (parts closed) if unusable."""
    settings, wiring = await asyncio.to_thread(rebuild)
    try:
        if wiring.errors:
            problems = [finding.text for finding in wiring.errors]
            raise ConfigError("; ".join(problems), problems=problems)
        old_sinks = [sink.name for sink in runner.sinks]
        changed = check_reloadable(runner.settings, settings, old_sinks, [sink.name for sink in wiring.sinks])
    except ConfigError:
        await _discard(wiring)
        raise
    return settings, wiring, changed


async def _discard(wiring: Wiring) -> None:
    """Close what a refused reload built; nothing of it ran."""
    for slot in wiring.collectors:
        await slot.aclose()
    for sink in wiring.sinks:
        with contextlib.suppress(Exception):
            await sink.aclose()


async def _apply(runner: Runner, settings: Settings, wiring: Wiring) -> None:
    """Swap collectors, sinks and hooks; keep the spool, cursors, backoffs, collector state and health."""
    states = saved_states(runner.collectors)
    await runner.files.call(write_states, runner.state_dir / COLLECTOR_STATE_DIR, states)
    for slot in runner.collectors:
        await slot.aclose()
    await runner.delivery.stop()
    for sink in runner.sinks:
        with contextlib.suppress(Exception):
            await sink.aclose()
    await runner.hooks.aclose(runner.settings.alerts.hook_timeout)  # and releases their session
    runner.settings = settings
    runner.collectors = list(wiring.collectors)
    runner.allowed = wiring.allowed
    await runner.files.call(runner.restore_collectors)
    runner.set_sinks(wiring.sinks)
    runner.start_hooks()
    runner.delivery.start()
