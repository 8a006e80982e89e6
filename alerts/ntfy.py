"""The ntfy alert hook: one message when an outage starts, one when it ends.

Publishes with ntfy's documented HTTP API: ``POST`` to the topic URL, the message
as a plain-text body, ``Title``, ``Priority`` and ``Tags`` headers, and
``Authorization: Bearer <token>`` when a token is set. Messages come from fixed
templates filled with the POP id, fixed codes and numbers only: never exception
text, a URL or a token.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from agent.sample import POP_ID_PATTERN
from alerts.events import SINK_NAME, AlarmKind, OutageEvent, OutageStarted, fixed_code
from alerts.hooks import HookStatus, failure_code

if TYPE_CHECKING:
    from agent.settings import Settings

LABEL = "ntfy"
_POP = re.compile(POP_ID_PATTERN, re.ASCII)

_WHAT = {
    AlarmKind.DELIVERY: "heartbeat delivery",
    AlarmKind.COLLECTORS: "collectors",
    AlarmKind.SPOOL: "spool",
}
_STARTED_TITLE = {
    AlarmKind.DELIVERY: "{pop}: heartbeat delivery outage ({sink})",
    AlarmKind.COLLECTORS: "{pop}: every collector failing",
    AlarmKind.SPOOL: "{pop}: spool about to overflow",
}
_STARTED_BODY = {
    AlarmKind.DELIVERY: "POP {pop} has not delivered heartbeats to {sink} for {duration}.",
    AlarmKind.COLLECTORS: "Every collector on POP {pop} has failed for {duration}.",
    AlarmKind.SPOOL: "The spool on POP {pop} is about to overflow; the oldest heartbeats are dropped when it does.",
}
_STARTED_TAIL = "Failure: {failure}\nBacklog: {backlog} heartbeats in the spool."
_ENDED_TITLE = "{pop}: {what} recovered"
_ENDED_BODY = "POP {pop}: {what} is back after {duration}.\nBacklog: {backlog} heartbeats in the spool, {drain}."


def format_duration(seconds: float) -> str:
    """``42s``, ``5m 00s``, ``2h 03m 04s``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def render(event: OutageEvent) -> tuple[str, str, str, str]:
    """The message for ``event``: ``(title, priority, tags, body)``, from fixed templates only."""
    pop = event.pop if _POP.fullmatch(event.pop) else "pop"
    sink = event.sink if SINK_NAME.fullmatch(event.sink) else "a receiver"
    kind = AlarmKind(event.kind)
    tags = f"{{emoji}},pop-agent,{kind}"
    if isinstance(event, OutageStarted):
        body = _STARTED_BODY[kind].format(pop=pop, sink=sink, duration=format_duration(event.at - event.since))
        tail = _STARTED_TAIL.format(failure=fixed_code(event.failure), backlog=max(0, int(event.backlog)))
        title = _STARTED_TITLE[kind].format(pop=pop, sink=sink)
        return title, "high", tags.format(emoji="rotating_light"), f"{body}\n{tail}"
    if event.drain_per_s is None:
        drain = "drain rate not yet known"
    else:
        drain = f"draining at {float(event.drain_per_s):.1f} per second"
    what = _WHAT[kind] + (f" to {sink}" if kind is AlarmKind.DELIVERY else "")
    body = _ENDED_BODY.format(
        pop=pop, what=what, duration=format_duration(event.duration_s), backlog=max(0, int(event.backlog)), drain=drain
    )
    return _ENDED_TITLE.format(pop=pop, what=what), "default", tags.format(emoji="white_check_mark"), body


class NtfyHook:
    """Publishes outage and recovery messages to one ntfy topic."""

    def __init__(self, url: str, token: str | None, *, session: aiohttp.ClientSession, timeout: float) -> None:
        self._url = URL(url)
        self._token = token
        self._session = session
        self._timeout = timeout
        self.status = HookStatus(LABEL)

    @classmethod
    def from_settings(cls, settings: Settings, session: aiohttp.ClientSession) -> NtfyHook | None:
        """The hook for ``NTFY_ALERT_URL`` (and ``NTFY_ALERT_TOKEN``), or ``None`` when the URL is unset."""
        if settings.ntfy_alert_url is None:
            return None
        token = settings.ntfy_alert_token.get_secret_value() if settings.ntfy_alert_token is not None else None
        return cls(
            settings.ntfy_alert_url.get_secret_value(),
            token or None,
            session=session,
            timeout=settings.alerts.hook_timeout,
        )

    async def notify(self, event: OutageEvent) -> bool:
        """Publish the message for ``event``; ``False`` (never an exception) when it did not get through."""
        try:
            title, priority, tags, body = render(event)
        except Exception:
            return self.status.failed("render")
        headers = {
            "Title": title,
            "Priority": priority,
            "Tags": tags,
            "Content-Type": "text/plain; charset=utf-8",
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.post(
                    self._url,
                    data=body.encode(),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                    allow_redirects=False,
                ) as response:
                    status = response.status
        except Exception as exc:
            return self.status.failed(failure_code(exc))
        if 200 <= status < 300:
            return self.status.succeeded()
        return self.status.failed(f"http_{status}")

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the caller."""
