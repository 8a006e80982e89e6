"""The Uptime Kuma push hook: one request per tick.

Uptime Kuma's push monitor takes ``GET <push URL>?status=up|down&msg=...&ping=...``.
The push URL operators copy from Kuma often carries those parameters already
(``?status=up&msg=OK&ping=``); they are replaced, and any other parameter kept.
The URL holds the monitor's push token, so it is never logged: the hook appears
in logs by the fixed label ``kuma`` only.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Literal

import aiohttp
from yarl import URL

from agent.network_codes import network_code
from alerts.hooks import HookStatus

if TYPE_CHECKING:
    from agent.settings import Settings

LABEL = "kuma"
# Kuma shows msg to whoever reads the monitor; only short fixed codes go there.
_MSG = re.compile(r"[A-Za-z0-9_. -]{0,64}", re.ASCII)


def push_url(base: URL, status: Literal["up", "down"], msg: str, ping_ms: float | None) -> URL:
    """``base`` with ``status``, ``msg`` and ``ping`` set, replacing any already there."""
    ping = "" if ping_ms is None else f"{max(0.0, float(ping_ms)):.1f}"
    return base.update_query(status=status, msg=msg if _MSG.fullmatch(msg) else "other", ping=ping)


class KumaHook:
    """Pushes the POP's delivery status to one Uptime Kuma push monitor."""

    def __init__(self, push_url: str, *, session: aiohttp.ClientSession, timeout: float) -> None:
        self._url = URL(push_url)
        self._session = session
        self._timeout = timeout
        self.status = HookStatus(LABEL)

    @classmethod
    def from_settings(cls, settings: Settings, session: aiohttp.ClientSession) -> KumaHook | None:
        """The hook for ``KUMA_PUSH_URL``, or ``None`` when it is unset."""
        if settings.kuma_push_url is None:
            return None
        return cls(settings.kuma_push_url.get_secret_value(), session=session, timeout=settings.alerts.hook_timeout)

    async def push(self, status: Literal["up", "down"], msg: str, ping_ms: float | None) -> bool:
        """Push one status; ``False`` (never an exception) when Kuma did not take it."""
        try:
            url = push_url(self._url, "down" if status == "down" else "up", msg, ping_ms)
            async with asyncio.timeout(self._timeout):
                async with self._session.get(
                    url, timeout=aiohttp.ClientTimeout(total=self._timeout), allow_redirects=False
                ) as response:
                    code = response.status
                    # Kuma answers {"ok": false, "msg": ...} for an unknown or paused monitor.
                    answer = await response.json(content_type=None) if 200 <= code < 300 else None
        except aiohttp.ClientError as exc:  # first: a certificate that fails to verify is also a ValueError
            return self.status.failed(network_code(exc))
        except ValueError:
            return self.status.failed("bad_answer")
        except Exception as exc:
            return self.status.failed(network_code(exc))
        if not 200 <= code < 300:
            return self.status.failed(f"http_{code}")
        if isinstance(answer, dict) and answer.get("ok") is False:
            return self.status.failed("rejected")
        return self.status.succeeded()

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the caller."""
