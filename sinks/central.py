"""The central ingest sink (``pop-heartbeat ingest v1``).

``POST <url>`` with ``{"heartbeats": [doc, ...]}`` built by joining the spooled
bytes, so a document is sent exactly as the scrubber passed it. What each status
means for the batch:

- 2xx: every heartbeat in the request is acknowledged (the body is not read).
- 408, 429, 5xx, timeouts, connection errors: kept; failure ``http_<status>`` (or
  ``timeout``, ``connect``, ...) with central's ``Retry-After``.
- 401/403: kept; failure ``auth``.
- 413: split in halves until it fits; a lone heartbeat still refused is ``too_large``.
- 400/422: bisected; each lone heartbeat refused is ``malformed``, the rest go.
- anything else: kept; failure ``http_<status>``.

Each request is made once: the first one that fails ends the send, and the
delivery loop's backoff (:mod:`agent.pacing`) decides when to try again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import ClassVar

import aiohttp
import structlog

from agent.deadline import Deadline
from agent.errors import ConfigError, PermanentSinkError, TransientSinkError
from agent.ledger_record import RequestIds, destination
from agent.plugin_api import PluginContext
from agent.sample import Delivery, Pending
from sinks.central_settings import CentralSinkSettings
from sinks.credentials import read_secret
from sinks.http import SessionHolder, gzipped, request_once, request_timeout

log = structlog.get_logger("sinks.central")

CREDENTIAL_NAME = "central-token"
_HEAD = b'{"heartbeats":['
_TAIL = b"]}"
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL)
# Codes after which the request is cut in halves instead of kept as a whole.
_SPLIT_CODES = frozenset({"too_large", "malformed"})


def plan_requests(batch: Sequence[Pending], max_count: int, max_bytes: int) -> list[Sequence[Pending]]:
    """Cut ``batch`` in order into requests of at most ``max_count`` heartbeats and ``max_bytes`` body bytes.

    A heartbeat larger than ``max_bytes`` on its own still goes, alone: central
    decides, and answers 413 if it cannot take it.
    """
    requests: list[Sequence[Pending]] = []
    start = 0
    size = ENVELOPE_BYTES
    for index, item in enumerate(batch):
        extra = len(item.raw) + (1 if index > start else 0)
        if index > start and (index - start >= max_count or size + extra > max_bytes):
            requests.append(batch[start:index])
            start, size, extra = index, ENVELOPE_BYTES, len(item.raw)
        size += extra
    if start < len(batch):
        requests.append(batch[start:])
    return requests


def request_body(part: Sequence[Pending]) -> bytes:
    """The request body: the spooled documents joined as they are, never re-serialised."""
    return b"".join((_HEAD, b",".join(item.raw for item in part), _TAIL))


def read_token(cfg: CentralSinkSettings, credentials_dir: str | None = None) -> str:
    """The bearer token: ``token``, else ``token_file``, else the systemd credential ``central-token``.

    Raises :class:`ConfigError` with a one-line message that names where the
    token was looked for, never the token itself.
    """
    token = read_secret(
        cfg.token,
        cfg.token_file,
        setting="sinks.central.token",
        what="token",
        credential=CREDENTIAL_NAME,
        credentials_dir=credentials_dir,
    )
    assert token is not None  # required: a missing token raised
    return token


class CentralSink:
    """Delivers heartbeats to central's ingest endpoint over one shared HTTP session."""

    name: ClassVar[str] = "central"
    settings_model: ClassVar[type[CentralSinkSettings]] = CentralSinkSettings

    def __init__(
        self,
        cfg: CentralSinkSettings,
        *,
        token: str,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if cfg.url is None:
            raise ConfigError("sinks.central.url is not set")
        self._cfg = cfg
        self._url = cfg.url
        self.max_batch = cfg.batch_max_count
        self._http = SessionHolder(session, connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout)
        self._plain_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._gzip_headers = {**self._plain_headers, "Content-Encoding": "gzip"}

    def __repr__(self) -> str:
        return f"CentralSink(url={destination(self._url)!r})"

    @classmethod
    def from_settings(cls, cfg: CentralSinkSettings, context: PluginContext) -> CentralSink | None:
        """The sink for its table, ``[sinks.central]``, or ``None`` when no URL is set."""
        if cfg.url is None:
            return None
        return cls(cfg, token=read_token(cfg, str(context.credentials_dir or "")))

    async def send(self, batch: Sequence[Pending], deadline: Deadline) -> Delivery:
        """Deliver ``batch`` in order; what is not acked or rejected when something fails stays spooled."""
        acked: set[str] = set()
        rejected: dict[str, str] = {}
        failure: str | None = None
        retry_after: float | None = None
        work = deque(plan_requests(batch, self.max_batch, self._cfg.batch_max_bytes))
        while work:
            if deadline.expired:
                failure = "deadline"
                break
            part = work.popleft()
            body, headers = await self._encode(part)
            sent = RequestIds.of(part)
            try:
                await self._post(body, headers, sent, deadline)
            except TransientSinkError as error:
                failure, retry_after = error.code, error.retry_after
                break
            except PermanentSinkError as error:
                if error.code not in _SPLIT_CODES:
                    failure = error.code
                    break
                if len(part) > 1:
                    middle = len(part) // 2
                    work.extendleft((part[middle:], part[:middle]))
                    continue
                rejected[part[0].id] = error.code
                log.info("central_rejected", reason=error.code)
                continue
            acked.update(item.id for item in part)
        if failure is not None:
            log.debug("central_kept", failure=failure, kept=len(batch) - len(acked) - len(rejected))
        return Delivery(acked=frozenset(acked), rejected=rejected, failure=failure, retry_after=retry_after)

    async def aclose(self) -> None:
        """Close the session if this sink opened it."""
        await self._http.aclose()

    async def _encode(self, part: Sequence[Pending]) -> tuple[bytes, dict[str, str]]:
        """The body for ``part`` (gzip-compressed from the threshold on) and its headers, built once for all tries."""
        body = request_body(part)
        if len(body) < self._cfg.gzip_min_bytes:
            return body, self._plain_headers
        return await gzipped(body), self._gzip_headers

    async def _post(self, body: bytes, headers: dict[str, str], sent: RequestIds, deadline: Deadline) -> None:
        """One request; raises the :class:`SinkError` its outcome means."""
        remaining = deadline.remaining()
        if remaining <= 0:
            raise TransientSinkError("deadline", code="deadline")
        timeout = request_timeout(self._cfg.connect_timeout, self._cfg.read_timeout, remaining)
        await request_once(
            self._http.get(),
            "POST",
            self._url,
            sink=self.name,
            data=body,
            headers=headers,
            client_timeout=timeout,
            sent=sent,
        )
