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

from agent.network_codes import network_code
from agent.sample import POP_ID_PATTERN
from alerts.events import SINK_NAME, AlarmKind, OutageEnded, OutageEvent, OutageStarted, fixed_code
from alerts.hooks import HookStatus

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
_STARTED_TAIL = "Cause: {cause} ({failure}).\n{backlog} held in the spool on the POP{reassurance}."
_REASSURANCE = {AlarmKind.DELIVERY: "; nothing is lost while the spool has room"}
_ENDED_TITLE = "{pop}: {what} recovered"
_ENDED_BODY = {
    AlarmKind.DELIVERY: "POP {pop} delivers heartbeats to {sink} again, after an outage of {duration}.",
    AlarmKind.COLLECTORS: "POP {pop}: collectors report again, after an outage of {duration}.",
    AlarmKind.SPOOL: "POP {pop}: the spool is below 80% again, after {duration}.",
}

# What each fixed failure code means, for a person reading the alert; the code itself is kept in brackets.
_CAUSES = {
    "auth": "{sink} refuses the POP's token (HTTP 401 or 403)",
    "connect": "{sink} cannot be reached",
    "dns": "{sink}'s host name does not resolve",
    "tls": "the TLS connection to {sink} fails",
    "timeout": "{sink} does not answer in time",
    "disconnected": "{sink} drops the connection",
    "deadline": "delivery to {sink} runs out of time",
    "no_progress": "{sink} takes nothing and gives no reason",
    "all_collectors_failed": "every collector fails",
    "spool_near_full": "the spool is over 90% full",
    "spool_dropping": "the spool is full and the oldest heartbeats are dropped",
}
_HTTP = re.compile(r"http_([1-5][0-9][0-9])", re.ASCII)


def describe_failure(code: str, sink: str = "the receiver") -> str:
    """A failure code of ``sink`` (``http_503``, ``connect``) in words, from fixed phrases only."""
    http = _HTTP.fullmatch(code)
    if http:
        return f"{sink} answers HTTP {http.group(1)}"
    phrase = _CAUSES.get(code)
    return phrase.format(sink=sink) if phrase else "a failure without a known cause"


def _heartbeats(count: int) -> str:
    return "1 heartbeat" if count == 1 else f"{count} heartbeats"


def _drain(event: OutageEnded) -> str:
    """What became of the heartbeats held back during the outage."""
    backlog = max(0, int(event.backlog))
    if event.kind is not AlarmKind.DELIVERY and backlog == 0:
        return "Nothing is waiting in the spool."
    if backlog == 0:
        return "Every heartbeat held back during the outage has been delivered; nothing is waiting."
    if event.drain_per_s is None or event.drain_per_s <= 0:
        return f"{_heartbeats(backlog)} held back during the outage are waiting and being delivered now."
    rate = float(event.drain_per_s)
    return (
        f"{_heartbeats(backlog)} held back during the outage are still waiting, delivered at {rate:.1f} per second: "
        f"about {format_duration(backlog / rate)} to go."
    )


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
        failure = fixed_code(event.failure)
        tail = _STARTED_TAIL.format(
            cause=describe_failure(failure, sink),
            failure=failure,
            backlog=_heartbeats(max(0, int(event.backlog))),
            reassurance=_REASSURANCE.get(kind, ""),
        )
        title = _STARTED_TITLE[kind].format(pop=pop, sink=sink)
        return title, "high", tags.format(emoji="rotating_light"), f"{body}\n{tail}"
    body = _ENDED_BODY[kind].format(pop=pop, sink=sink, duration=format_duration(event.duration_s))
    what = _WHAT[kind] + (f" to {sink}" if kind is AlarmKind.DELIVERY else "")
    title = _ENDED_TITLE.format(pop=pop, what=what)
    return title, "default", tags.format(emoji="white_check_mark"), f"{body}\n{_drain(event)}"


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
            return self.status.failed(network_code(exc))
        if 200 <= status < 300:
            return self.status.succeeded()
        return self.status.failed(f"http_{status}")

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the caller."""
