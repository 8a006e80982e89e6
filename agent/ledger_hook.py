"""The one hook through which every HTTP request of an upload sink or alert hook reaches the ledger.

Every session that can send off the machine carries an aiohttp ``TraceConfig``
from here: the upload sinks' (``sinks.http.make_session``) and the alert hooks'
(made in the runner). The trace hashes each body chunk as it is handed to the
socket, after the sink's own gzip or snappy, and on the answer (or the failure)
hands one record to a :class:`LedgerWriter`, which has the file thread write it
off the event loop.

Which sink a request belongs to comes from the runner: it sets :data:`SENDING`
around each ``sink.send`` call, so a sink needs no ledger code to be recorded.
A sink that also passes :class:`~agent.ledger.RequestIds` as ``trace_request_ctx``
gets the request's heartbeat ids and seq range in the record; one that does
not is recorded all the same, without ids. The alert hooks' session is told
its destinations when it is made, and labels each request by its URL.
A record is one attempt on the wire: aiohttp's own second try of an idempotent
request on a dead kept-alive connection is recorded apart from the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from yarl import URL

from agent.file_thread import FileThread
from agent.ledger import LEDGER_DIR, Ledger
from agent.ledger_record import RequestIds, SentRecord, destination
from agent.network_codes import network_code

if TYPE_CHECKING:
    from agent.settings import Settings

log = structlog.get_logger("agent.ledger")

# Records waiting to be written; beyond this a record is counted as lost rather
# than let a stuck disk grow the agent's memory without end.
MAX_QUEUED = 10_000

# Per delivery task (a ContextVar: each sink's loop runs in its own task, so
# sinks sending at the same time never see each other's).
SENDING: contextvars.ContextVar[Sending | None] = contextvars.ContextVar("pop_agent_sending", default=None)


class LedgerWriter:
    """Holds records taken on the event loop until a trip to the file thread writes them.

    The daemon's delivery loop makes one trip to the file thread after every send
    anyway (to settle the batch), and every tick one to store its heartbeat;
    :meth:`write_pending` rides on them, so a heartbeat's record is written and
    synced before its file leaves the spool, at no extra wake-up of a thread. On
    an idle POP a wake-up costs more CPU than the write itself. A record no such
    trip takes within ``sync_interval`` seconds (an alert hook's, between ticks)
    gets a trip of its own. Records written in one trip share one fsync. Taken off
    the event loop (a script, a test), a record is written at once.
    """

    def __init__(self, ledger: Ledger, *, sync_interval: float = 1.0, files: FileThread | None = None) -> None:
        self.ledger = ledger
        self.sync_interval = sync_interval
        self.keep_bodies = ledger.keep_bodies
        self.lost_total = 0
        self._own_files = files is None
        self._files = FileThread() if files is None else files
        self._lock = threading.Lock()  # the loop appends, the file thread takes
        self._pending: list[tuple[SentRecord, bytes | None]] = []
        self._due: asyncio.TimerHandle | None = None  # the trip of its own, while one is planned
        self._failing = False

    @classmethod
    def from_settings(cls, settings: Settings, files: FileThread | None = None) -> LedgerWriter | None:
        """The writer for ``<state_dir>/ledger``, or ``None`` when the ledger is switched off."""
        cfg = settings.ledger
        if not cfg.enabled:
            return None
        ledger = Ledger(
            settings.state_dir / LEDGER_DIR,
            max_age=cfg.max_age_days * 86_400,
            max_bytes=cfg.max_bytes,
            keep_bodies=cfg.keep_bodies,
            bodies_max_bytes=cfg.bodies_max_bytes,
        )
        return cls(ledger, sync_interval=cfg.sync_interval, files=files)

    def submit(self, record: SentRecord, body: bytes | None) -> None:
        """Take one record (and its body, to keep); returns at once."""
        with self._lock:
            if len(self._pending) >= MAX_QUEUED:
                self.lost_total += 1
                return
            self._pending.append((record, body))
            first = len(self._pending) == 1
        if first:
            self._plan_trip()

    def _plan_trip(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._files.submit(self.write_pending)
            return
        if self._due is None:
            self._due = loop.call_later(self.sync_interval, self._trip)

    def _trip(self) -> None:
        self._due = None
        if self._pending:
            self._files.submit(self.write_pending)

    def write_pending(self) -> None:
        """Write and sync every record taken so far (blocking: on the file thread)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self.ledger.append(batch)
            self.ledger.sync()
        except OSError as exc:
            with self._lock:
                self.lost_total += len(batch)
            if not self._failing:
                log.error("ledger_write_failed", code=exc.__class__.__name__, errno=exc.errno)
            self._failing = True
            return
        if self._failing:
            log.info("ledger_write_recovered")
            self._failing = False

    def written(self) -> None:
        """On the loop, after a trip that called :meth:`write_pending`: the trip of its own is not needed."""
        if self._due is not None and not self._pending:
            self._due.cancel()
            self._due = None

    def _finish(self) -> None:
        self.write_pending()
        self.ledger.close()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending and close the ledger, waiting at most ``timeout`` s (blocking: not on the loop)."""
        with contextlib.suppress(TimeoutError):
            self._files.run(self._finish, timeout=timeout)
        if self._own_files:
            self._files.shutdown(wait=False)  # stuck on the disk: the thread is left behind

    async def aclose(self, grace: float = 5.0) -> None:
        """:meth:`close` from the event loop: waits at most ``grace`` s, and the writing goes on after that."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        # Shielded: a timeout must not take the queued write off the file thread with it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._files.call(self._finish)), grace)
        if self._own_files:
            self._files.shutdown(wait=False)


@dataclass(frozen=True)
class Sending:
    """Who is sending in the current task: the writer to record into and the sink's name."""

    writer: LedgerWriter
    sink: str


@contextlib.contextmanager
def sending(writer: LedgerWriter | None, sink: str) -> Iterator[None]:
    """Within this block, requests of the upload sessions are recorded for ``sink``."""
    if writer is None:
        yield
        return
    token = SENDING.set(Sending(writer, sink))
    try:
        yield
    finally:
        SENDING.reset(token)


@dataclass
class _InFlight:
    writer: LedgerWriter
    sink: str
    method: str
    destination: str
    ids: RequestIds
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    chunks: list[bytes] | None = None

    def again(self) -> _InFlight:
        """The same request's next attempt, with nothing sent yet."""
        return _InFlight(
            self.writer, self.sink, self.method, self.destination, self.ids, chunks=None if self.chunks is None else []
        )


Resolver = Callable[[URL], "tuple[LedgerWriter, str, str] | None"]


def _trace_config(resolve: Resolver) -> aiohttp.TraceConfig:
    """A trace config that records every request ``resolve`` places: (writer, sink or hook, destination)."""

    async def on_start(session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams) -> None:
        placed = resolve(params.url)
        if placed is None:
            ctx.ledger = None
            return
        writer, sink, where = placed
        ids = ctx.trace_request_ctx if isinstance(ctx.trace_request_ctx, RequestIds) else RequestIds()
        ctx.ledger = _InFlight(writer, sink, params.method, where, ids, chunks=[] if writer.keep_bodies else None)

    async def on_chunk(session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestChunkSentParams) -> None:
        flight: _InFlight | None = getattr(ctx, "ledger", None)
        if flight is not None:
            flight.hasher.update(params.chunk)
            flight.size += memoryview(params.chunk).nbytes
            if flight.chunks is not None:
                flight.chunks.append(bytes(params.chunk))

    async def on_connection(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        # aiohttp sends an idempotent request (Kuma's GET, the Pushgateway's PUT) once
        # more, inside the same traced request, when a kept-alive connection turns out
        # dead: what the first attempt sent is a record of its own.
        flight: _InFlight | None = getattr(ctx, "ledger", None)
        if flight is not None and flight.size:
            _finish(ctx, "disconnected")
            ctx.ledger = flight.again()

    async def on_end(session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
        _finish(ctx, params.response.status)

    async def on_exception(session: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams) -> None:
        _finish(ctx, network_code(params.exception))

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_start)
    config.on_request_chunk_sent.append(on_chunk)
    config.on_connection_create_start.append(on_connection)
    config.on_connection_reuseconn.append(on_connection)
    config.on_request_end.append(on_end)
    config.on_request_exception.append(on_exception)
    return config


def _finish(ctx: SimpleNamespace, status: int | str) -> None:
    flight: _InFlight | None = getattr(ctx, "ledger", None)
    if flight is None:
        return
    ctx.ledger = None  # chunks still being written after the answer came are not this record's
    record = SentRecord(
        time=flight.started,
        sink=flight.sink,
        method=flight.method,
        destination=flight.destination,
        bytes=flight.size,
        sha256=flight.hasher.hexdigest(),
        status=status,
        ids=flight.ids.ids,
        seq=flight.ids.seq,
        ms=round((time.monotonic() - flight.started_mono) * 1000, 1),
    )
    flight.writer.submit(record, b"".join(flight.chunks) if flight.chunks is not None else None)


def upload_trace_config() -> aiohttp.TraceConfig:
    """The trace for an upload sink's session: records for whichever sink :data:`SENDING` names."""

    def resolve(url: URL) -> tuple[LedgerWriter, str, str] | None:
        current = SENDING.get()
        if current is None:
            return None  # no ledger in this process (a sink used on its own, as in its unit tests)
        return current.writer, current.sink, destination(str(url))

    return _trace_config(resolve)


def hook_trace_configs(writer: LedgerWriter | None, settings: Settings) -> list[aiohttp.TraceConfig]:
    """The trace configs for the alert hooks' session: none when the ledger is off."""
    if writer is None:
        return []
    hooks = {
        label: value.get_secret_value()
        for label, value in (("ntfy", settings.ntfy_alert_url), ("kuma", settings.kuma_push_url))
        if value is not None
    }
    return [hook_trace_config(writer, hooks)]


def hook_trace_config(writer: LedgerWriter, hooks: dict[str, str]) -> aiohttp.TraceConfig:
    """The trace for the alert hooks' session; ``hooks`` maps each hook's label to its configured URL.

    A request is labelled with the hook whose URL has its scheme, host, port and
    path; the ntfy topic, like the Kuma token, is masked in the destination.
    """
    places: dict[tuple[str, str | None, int | None, str], tuple[str, str]] = {}
    for label, raw in hooks.items():
        url = URL(raw)
        masked = destination(raw, mask_last_segment=label == "ntfy")
        places[(url.scheme, url.host, url.port, url.path)] = (label, masked)

    def resolve(url: URL) -> tuple[LedgerWriter, str, str] | None:
        label, masked = places.get((url.scheme, url.host, url.port, url.path), ("hook", destination(str(url))))
        return writer, label, masked

    return _trace_config(resolve)
