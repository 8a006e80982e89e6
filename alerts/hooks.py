"""Alert hooks: how health events reach people, without ever slowing or breaking the agent.

:class:`AlertHooks` does the wiring the runner needs: it logs every event of
:class:`~alerts.health.Health` once and fires the ntfy and Kuma hooks as
background tasks that never delay a tick. :class:`HookStatus` keeps each hook's
up/down state, logged once per transition by a fixed label and code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from alerts.events import (
    Failing,
    HealthEvent,
    OutageEnded,
    OutageEvent,
    OutageStarted,
    PushStatus,
    event_fields,
    fixed_code,
)
from alerts.health import Health

if TYPE_CHECKING:
    import aiohttp

    from agent.ledger_hook import LedgerWriter
    from agent.settings import Settings

log = structlog.get_logger()


class HookStatus:
    """A hook's up/down state: its failures are logged once when they start and once when they end.

    The log names the hook by a fixed label and the failure by a fixed code, never
    by its URL (which may hold a token) or by exception text.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.failing = False
        self.sent_total = 0
        self.failures_total = 0

    def succeeded(self) -> bool:
        """Count a success; log the recovery if the hook was failing. Returns ``True``."""
        self.sent_total += 1
        if self.failing:
            self.failing = False
            log.info("alert_hook_recovered", hook=self.label)
        return True

    def failed(self, code: str) -> bool:
        """Count a failure; log it if the hook was fine until now. Returns ``False``."""
        self.failures_total += 1
        if not self.failing:
            self.failing = True
            log.warning("alert_hook_failing", hook=self.label, failure=fixed_code(code))
        return False


class Notifier(Protocol):
    """An outage/recovery message sender (ntfy). Never raises; ``False`` when it failed."""

    async def notify(self, event: OutageEvent) -> bool: ...


class Pusher(Protocol):
    """A per-tick status push (Uptime Kuma). Never raises; ``False`` when it failed."""

    async def push(self, status: Literal["up", "down"], msg: str, ping_ms: float | None) -> bool: ...


class AlertHooks:
    """Logs health events once and fires the hooks in the background.

    :meth:`dispatch` and :meth:`push` return at once; the hooks run as tasks whose
    results are counted in ``health``. A Kuma push still under way when the next
    tick comes is not doubled. :meth:`aclose` gives what is left a grace period,
    then cancels it, and closes the hooks' HTTP session when they were given one.
    """

    def __init__(
        self,
        health: Health,
        *,
        notifier: Notifier | None = None,
        pusher: Pusher | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._health = health
        self._notifier = notifier
        self._pusher = pusher
        self._session = session
        self._tasks: set[asyncio.Task[None]] = set()
        self._push_task: asyncio.Task[None] | None = None

    def dispatch(self, events: Iterable[HealthEvent]) -> None:
        """Log each event once; send outage starts and ends to the notifier."""
        for event in events:
            if isinstance(event, OutageStarted):
                log.error(event.event, **event_fields(event))
            elif isinstance(event, Failing):
                log.warning(event.event, **event_fields(event))
            else:
                log.info(event.event, **event_fields(event))
            if self._notifier is not None and isinstance(event, OutageStarted | OutageEnded):
                self._spawn(self._notify(self._notifier, event))

    def push(self) -> None:
        """Push the current status to Kuma, unless the previous push is still under way."""
        if self._pusher is None or (self._push_task is not None and not self._push_task.done()):
            return
        status = self._health.push_status()
        self._push_task = self._spawn(self._push(self._pusher, status))

    async def flush(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the hooks under way; ``True`` if none is left."""
        tasks = set(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, grace))
        return not self._tasks

    async def aclose(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the hooks under way, cancel the rest, release the session."""
        if not await self.flush(grace):
            pending = set(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _notify(self, notifier: Notifier, event: OutageEvent) -> None:
        self._health.record_alert(await _never_raise(notifier.notify(event)))

    async def _push(self, pusher: Pusher, status: PushStatus) -> None:
        self._health.record_push(await _never_raise(pusher.push(status.status, status.msg, status.ping_ms)))


async def _never_raise(call: Any) -> bool:
    # Hooks promise not to raise; a third-party one that does still must not kill the task quietly.
    try:
        return bool(await call)
    except Exception:
        log.warning("alert_hook_raised")
        return False


def start_hooks(health: Health, settings: Settings, ledger: LedgerWriter | None = None) -> AlertHooks:
    """The hooks ``settings`` ask for (ntfy, Kuma; unset means off).

    One session with short-lived connections for both, which :meth:`AlertHooks.aclose`
    closes. Must be called inside the running event loop.
    """
    if settings.ntfy_alert_url is None and settings.kuma_push_url is None:
        return AlertHooks(health)
    import aiohttp

    from agent.ledger_hook import hook_trace_configs
    from alerts.kuma import KumaHook
    from alerts.ntfy import NtfyHook

    # Every hook request is recorded in the sent ledger, as the upload sinks' are; no cookie is kept or sent back.
    session = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), trace_configs=hook_trace_configs(ledger, settings)
    )
    return AlertHooks(
        health,
        notifier=NtfyHook.from_settings(settings, session),
        pusher=KumaHook.from_settings(settings, session),
        session=session,
    )
