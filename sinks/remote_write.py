"""The Prometheus remote-write sink (remote write 1.0).

``POST <url>`` with a protobuf ``WriteRequest`` (:mod:`sinks.prompb`), compressed
with snappy in the block format (not the framed one), and the headers the spec
names: ``Content-Encoding: snappy``, ``Content-Type: application/x-protobuf``,
``X-Prometheus-Remote-Write-Version: 0.1.0`` and a ``User-Agent``. The series are
those of :mod:`sinks.series`, the mapping the Pushgateway sink shares; every
sample is stamped with its heartbeat's own ``ts`` (milliseconds), so a backlog
replays at its true times. Within a request the heartbeats go oldest first, so the
samples of one series are in timestamp order, and a request is only sent once
every older one has been answered. The runner hands over up to four requests'
worth at a time (in spool order); each request is read (by the heartbeats' shape,
:mod:`sinks.shapes`, where one fits) and encoded in a thread while the one before
it is in flight.

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
from dataclasses import dataclass
from typing import ClassVar

import aiohttp
import structlog

from agent.deadline import Deadline
from agent.errors import ConfigError, PermanentSinkError, SinkError, TransientSinkError
from agent.ledger_record import RequestIds, destination
from agent.plugin_api import PluginContext
from agent.sample import Delivery, Pending
from agent.version import __version__
from sinks.credentials import read_secret
from sinks.http import SessionHolder, drain_quietly, error_for_status, request_once, request_timeout
from sinks.remote_write_body import BodyEncoder, Prepared, Preparer, snappy_available
from sinks.remote_write_settings import RemoteWriteSinkSettings

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
# Requests per call of send(): the runner hands over this many times batch_max_count heartbeats, so
# that each request's reading and encoding overlaps the one before it in flight.
REQUESTS_PER_SEND = 4


@dataclass(frozen=True, slots=True)
class Part:
    """One request's worth of a batch: the heartbeats to send, oldest first, and what was settled unsent."""

    ready: list[Prepared]
    body: bytes | None  # None: not encodable as it stands (a value no double holds); _deliver bisects it
    rejected: dict[str, str]
    skipped: dict[str, str]


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
    settings_model: ClassVar[type[RemoteWriteSinkSettings]] = RemoteWriteSinkSettings

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
        self.request_max = cfg.batch_max_count
        self.max_batch = cfg.batch_max_count * REQUESTS_PER_SEND
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
    def from_settings(cls, cfg: RemoteWriteSinkSettings, context: PluginContext) -> RemoteWriteSink | None:
        """The sink for its table, ``[sinks.remote_write]``, or ``None`` when no URL is set."""
        if cfg.url is None:
            return None
        return cls(cfg, authorization=authorization(cfg, str(context.credentials_dir or "")))

    async def send(self, batch: Sequence[Pending], deadline: Deadline) -> Delivery:
        """Deliver ``batch`` oldest first; what is not acked, rejected or skipped when something fails stays spooled.

        The batch goes in requests of ``batch_max_count`` heartbeats, in spool order,
        each sent once the one before it has been answered; a request is read and
        encoded (in a thread) while the one before it is in flight.
        """
        acked: set[str] = set()
        rejected: dict[str, str] = {}
        skipped: dict[str, str] = {}
        failure: str | None = None
        retry_after: float | None = None
        chunks = [batch[start : start + self.request_max] for start in range(0, len(batch), self.request_max)]
        following = iter(chunks)
        upcoming = self._make_ready(chunk) if (chunk := next(following, None)) else None
        try:
            while upcoming is not None:
                part = await upcoming
                upcoming = self._make_ready(chunk) if (chunk := next(following, None)) else None
                rejected.update(part.rejected)
                skipped.update(part.skipped)
                self._note_skipped(len(part.skipped), len(part.ready))
                failure, retry_after = await self._deliver(part, deadline, acked, rejected)
                if failure is not None:
                    break
        finally:
            if upcoming is not None:
                # Let the thread finish rather than cancel the future (which would not stop it): no read of
                # this send outlives it, so the shapes and the encoder are never used by two threads at once.
                # Its heartbeats stay spooled, read again on the next pass.
                with contextlib.suppress(Exception):
                    await upcoming
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

    def _make_ready(self, chunk: Sequence[Pending]) -> asyncio.Future[Part]:
        """``chunk`` read and encoded: in a thread when large (it would hold the event loop), else at once."""
        if len(chunk) >= _THREAD_ENCODE_COUNT:
            return asyncio.ensure_future(asyncio.to_thread(self._ready, chunk))
        done: asyncio.Future[Part] = asyncio.get_running_loop().create_future()
        done.set_result(self._ready(chunk))
        return done

    def _ready(self, chunk: Sequence[Pending]) -> Part:
        """One request's heartbeats, oldest first, and its body; the unusable ones rejected, the too old skipped."""
        oldest_ms = int((time.time() - self._cfg.max_sample_age) * 1000)
        ready: list[Prepared] = []
        rejected: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for item, prepared in zip(chunk, self.preparer.prepare_all(chunk), strict=True):
            if prepared is None:
                rejected[item.id] = "malformed"
                continue
            if prepared.ts_ms < oldest_ms:
                skipped[item.id] = "too_old"
                continue
            ready.append(prepared)
        ready.sort(key=lambda prepared: prepared.ts_ms)
        body: bytes | None = None
        if ready:
            with contextlib.suppress(OverflowError, struct.error):  # encoded again, and bisected, by _deliver
                body = self.encoder.encode(ready)
        return Part(ready, body, rejected, skipped)

    def _note_skipped(self, count: int, sending: int) -> None:
        """Count heartbeats skipped as too old; log when a run of them begins, not for every request."""
        self.skipped_total += count
        if count and not self._skipping:
            log.warning("remote_write_skipped_old", count=count, max_sample_age=self._cfg.max_sample_age)
        self._skipping = bool(count) or (self._skipping and not sending)

    async def _deliver(
        self, part: Part, deadline: Deadline, acked: set[str], rejected: dict[str, str]
    ) -> tuple[str | None, float | None]:
        """Send one request's heartbeats, bisecting refusals; the failure that stopped it and its ``Retry-After``."""
        work = deque([part.ready] if part.ready else [])
        body = part.body
        while work:
            if deadline.expired:
                return "deadline", None
            prepared = work.popleft()
            try:
                if body is None:
                    body = await self._encode(prepared)
                await self._post(body, RequestIds.carrying((item.id, item.seq) for item in prepared), deadline)
            except TransientSinkError as error:
                return error.code, error.retry_after
            except PermanentSinkError as error:
                if error.code in _SPLIT_CODES and len(prepared) > 1:
                    middle = len(prepared) // 2
                    work.extendleft((prepared[middle:], prepared[:middle]))
                    continue
                rejected.update((item.id, error.code) for item in prepared)
                self._note_refusal(error.code, len(prepared))
                continue
            finally:
                body = None
            acked.update(item.id for item in prepared)
            self._refusing = None
        return None, None

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
        await request_once(
            self._http.get(),
            "POST",
            self._url,
            sink=self.name,
            data=body,
            headers=self._headers,
            client_timeout=request_timeout(self._cfg.connect_timeout, self._cfg.read_timeout, remaining),
            sent=sent,
            judge=_judge,
        )


async def _judge(response: aiohttp.ClientResponse) -> SinkError | None:
    """The answer's status decides, except that a refusal's text may name a sample the receiver will never take."""
    error = error_for_status(response.status, response.headers)
    if error is not None and (response.status in (400, 409, 422) or response.status >= 500):
        text = (await response.content.read(MAX_ERROR_BODY)).decode("utf-8", "replace")
        code = refusal_code(response.status, text)
        if code is not None:
            error = PermanentSinkError(code, code=code)
    else:
        await drain_quietly(response)
    return error


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
