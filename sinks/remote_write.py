"""The Prometheus remote-write sink (remote write 1.0).

``POST <url>`` with a protobuf ``WriteRequest`` (:mod:`sinks.prompb`), compressed
with snappy in the block format (not the framed one), and the headers the spec
names: ``Content-Encoding: snappy``, ``Content-Type: application/x-protobuf``,
``X-Prometheus-Remote-Write-Version: 0.1.0`` and a ``User-Agent``. The series are
those of :mod:`sinks.series`, the mapping the Pushgateway sink shares; every
sample is stamped with its heartbeat's own ``ts`` (milliseconds), so a backlog
replays at its true times. Within a request the heartbeats go oldest first, so the
samples of one series are in timestamp order, and a request is only sent once
every older one has been answered.

What each answer means:

- 2xx: acked.
- 429, 408, other 5xx, timeouts, connection errors: kept; the delivery loop's
  backoff decides when to try again (``Retry-After`` honoured).
- 400, 409, 422, and a 5xx whose body says a sample was too old, out of order or a
  duplicate: the receiver refuses one of the samples and drops the whole request
  (Prometheus rolls its append back), so the request is bisected, older half first,
  until each refused heartbeat stands alone; that one is rejected with the reason
  (``too_old``, ``out_of_order``, ``duplicate``, ``conflict``, else ``malformed``)
  and the rest are delivered. Prometheus before 2.50 answers such samples with 500
  when an out-of-order window is configured; retrying those would never end.
- 413: split in halves; a lone heartbeat still refused is rejected ``too_large``.
- any other 4xx (401/403, 404, ...): the receiver will never take these samples:
  rejected (``auth``, ``http_<status>``), logged once per change of reason.

Heartbeats older than ``max_sample_age`` are not sent: they are settled for this
sink as skipped (``too_old``) and counted. Time heals any other stuck answer too:
a heartbeat that stays unsent ages past that bound and is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import aiohttp
import structlog

from agent.deadline import Deadline
from agent.errors import ConfigError, PermanentSinkError, SinkError, TransientSinkError
from agent.ledger_record import RequestIds, destination
from agent.sample import Delivery, Pending
from agent.version import __version__
from sinks.credentials import read_secret
from sinks.http import SessionHolder, drain, error_for_exception, error_for_status, request_timeout
from sinks.remote_write_body import BodyEncoder, Prepared, Preparer, snappy_available

if TYPE_CHECKING:
    from agent.settings import RemoteWriteSinkSettings, Settings

log = structlog.get_logger("sinks.remote_write")

# Names of systemd credentials ($CREDENTIALS_DIRECTORY), not secrets.
TOKEN_CREDENTIAL = "remote-write-token"  # noqa: S105
PASSWORD_CREDENTIAL = "remote-write-password"  # noqa: S105
BASE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": f"pop-agent/{__version__}",
}
# Codes after which a request is cut in halves: one of its heartbeats is refused, not all.
_SPLIT_CODES = frozenset({"too_large", "malformed", "too_old", "out_of_order", "duplicate", "conflict"})
# Enough of an error body to tell which sample error it is; receivers put the reason first.
MAX_ERROR_BODY = 4096
# Refusals of single samples, as Prometheus (storage/interface.go), Mimir and Thanos word them.
_SAMPLE_REFUSALS = (
    ("out of bounds", "too_old"),
    ("too old", "too_old"),
    ("out of order", "out_of_order"),
    ("out-of-order", "out_of_order"),
    ("duplicate sample", "duplicate"),
)
# Parsing and encoding this many heartbeats holds the event loop for milliseconds: a thread does it.
_THREAD_ENCODE_COUNT = 64


def refusal_code(status: int, body: str) -> str | None:
    """The rejection code of a sample-level refusal in ``body``, for a 4xx or a 5xx; ``None`` if it is none."""
    text = body.lower()
    for phrase, code in _SAMPLE_REFUSALS:
        if phrase in text:
            return code
    if status == 409:
        return "conflict"
    return None


class RemoteWriteSink:
    """Delivers heartbeats as samples at their own time to a Prometheus remote-write receiver."""

    name: ClassVar[str] = "remote_write"

    def __init__(
        self,
        cfg: RemoteWriteSinkSettings,
        *,
        authorization: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if cfg.url is None:
            raise ConfigError("sinks.remote_write.url is not set")
        if not snappy_available():
            raise ConfigError("sinks.remote_write: the cramjam package (snappy) is not installed: pip install cramjam")
        self._cfg = cfg
        self._url = cfg.url
        self.max_batch = cfg.batch_max_count
        self._http = SessionHolder(session, connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout)
        self._headers = dict(BASE_HEADERS)
        if authorization is not None:
            self._headers["Authorization"] = authorization
        if cfg.tenant_id is not None:
            self._headers["X-Scope-OrgID"] = cfg.tenant_id
        self.encoder = BodyEncoder(cfg.job)
        self.preparer = Preparer()
        self._refusing: str | None = None
        self._skipping = False
        self.skipped_total = 0
        self.refused_total = 0

    def __repr__(self) -> str:
        return f"RemoteWriteSink(url={destination(self._url)!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteWriteSink | None:
        """The sink for ``settings.sinks.remote_write``, or ``None`` when no URL is set."""
        cfg = settings.sinks.remote_write
        if cfg.url is None:
            return None
        return cls(cfg, authorization=authorization(cfg))

    async def send(self, batch: Sequence[Pending], deadline: Deadline) -> Delivery:
        """Deliver ``batch`` oldest first; what is not acked, rejected or skipped when something fails stays spooled."""
        acked: set[str] = set()
        rejected: dict[str, str] = {}
        skipped: dict[str, str] = {}
        if len(batch) >= _THREAD_ENCODE_COUNT:  # parsing a large batch would hold the event loop
            ready = await asyncio.to_thread(self._prepare, batch, rejected, skipped)
        else:
            ready = self._prepare(batch, rejected, skipped)
        failure: str | None = None
        retry_after: float | None = None
        work = deque(ready[start : start + self.max_batch] for start in range(0, len(ready), self.max_batch))
        while work:
            if deadline.expired:
                failure = "deadline"
                break
            part = work.popleft()
            try:
                body = await self._encode(part)
                await self._post(body, RequestIds.carrying((item.id, item.seq) for item in part), deadline)
            except TransientSinkError as error:
                failure, retry_after = error.code, error.retry_after
                break
            except PermanentSinkError as error:
                if error.code in _SPLIT_CODES and len(part) > 1:
                    middle = len(part) // 2
                    work.extendleft((part[middle:], part[:middle]))
                    continue
                rejected.update((item.id, error.code) for item in part)
                self._note_refusal(error.code, len(part))
                continue
            acked.update(item.id for item in part)
            self._refusing = None
        if failure is not None:
            log.debug("remote_write_kept", failure=failure, kept=len(batch) - len(acked) - len(rejected) - len(skipped))
        return Delivery(
            acked=frozenset(acked | skipped.keys()),
            rejected=rejected,
            skipped=skipped,
            failure=failure,
            retry_after=retry_after,
        )

    async def aclose(self) -> None:
        """Close the session if this sink opened it."""
        await self._http.aclose()

    def _prepare(self, batch: Sequence[Pending], rejected: dict[str, str], skipped: dict[str, str]) -> list[Prepared]:
        """The heartbeats to send, oldest first; the unusable ones rejected, the too old ones skipped."""
        oldest_ms = int((time.time() - self._cfg.max_sample_age) * 1000)
        ready: list[Prepared] = []
        for item in batch:
            try:
                prepared = self.preparer.prepare(item)
            except (ValueError, TypeError, KeyError, AttributeError):
                rejected[item.id] = "malformed"
                continue
            if prepared.ts_ms < oldest_ms:
                skipped[item.id] = "too_old"
                continue
            ready.append(prepared)
        ready.sort(key=lambda prepared: prepared.ts_ms)
        self.skipped_total += len(skipped)
        if skipped and not self._skipping:
            log.warning("remote_write_skipped_old", count=len(skipped), max_sample_age=self._cfg.max_sample_age)
        self._skipping = bool(skipped) or (self._skipping and not ready)
        return ready

    async def _encode(self, part: Sequence[Prepared]) -> bytes:
        """The body for ``part``, encoded in a thread when large; a value no double can hold is ``malformed``."""
        try:
            if len(part) >= _THREAD_ENCODE_COUNT:
                return await asyncio.to_thread(self.encoder.encode, part)
            return self.encoder.encode(part)
        except (OverflowError, struct.error):
            raise PermanentSinkError("malformed", code="malformed") from None

    def _note_refusal(self, code: str, count: int) -> None:
        """Count refused heartbeats; log when the reason changes, not for every request."""
        self.refused_total += count
        if code != self._refusing:
            log.warning("remote_write_refused", reason=code, count=count)
            self._refusing = code

    async def _post(self, body: bytes, sent: RequestIds, deadline: Deadline) -> None:
        """One request; raises the :class:`SinkError` its outcome means."""
        remaining = deadline.remaining()
        if remaining <= 0:
            raise TransientSinkError("deadline", code="deadline")
        timeout = request_timeout(self._cfg.connect_timeout, self._cfg.read_timeout, remaining)
        error: SinkError | None
        try:
            async with self._http.get().post(
                self._url,
                data=body,
                headers=self._headers,
                timeout=timeout,
                allow_redirects=False,
                trace_request_ctx=sent,
            ) as response:
                error = error_for_status(response.status, response.headers)
                if error is not None and (response.status in (400, 409, 422) or response.status >= 500):
                    text = (await response.content.read(MAX_ERROR_BODY)).decode("utf-8", "replace")
                    code = refusal_code(response.status, text)
                    if code is not None:
                        error = PermanentSinkError(code, code=code)
                else:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        await drain(response)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = error_for_exception(exc)
        if error is not None:
            log.debug("remote_write_attempt_failed", code=error.code)
            raise error


def authorization(cfg: RemoteWriteSinkSettings, credentials_dir: str | None = None) -> str | None:
    """The ``Authorization`` header: a bearer token or basic auth, from the settings, a file or a credential.

    A bearer token comes from ``token``, ``token_file`` or the systemd credential
    ``remote-write-token`` (when present); basic auth is used when ``username`` is
    set, its password from ``password``, ``password_file`` or the credential
    ``remote-write-password``. Both at once is a :class:`ConfigError`.
    """
    token = read_secret(
        cfg.token,
        cfg.token_file,
        setting="sinks.remote_write.token",
        what="token",
        credential=None if cfg.username is not None else TOKEN_CREDENTIAL,
        credentials_dir=credentials_dir,
        required=False,
    )
    if cfg.username is None:
        return None if token is None else f"Bearer {token}"
    if token is not None:
        raise ConfigError("sinks.remote_write: set a bearer token or a username, not both")
    password = read_secret(
        cfg.password,
        cfg.password_file,
        setting="sinks.remote_write.password",
        what="password",
        credential=PASSWORD_CREDENTIAL,
        credentials_dir=credentials_dir,
    )
    pair = f"{cfg.username}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")
