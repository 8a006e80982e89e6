"""The one hook through which every HTTP request of an upload sink or alert hook reaches the ledger.

Every session that can send off the machine carries an aiohttp ``TraceConfig``
from here: the upload sinks' (``sinks.http.make_session``) and the alert hooks'
(made in the runner). The trace hashes each body chunk as it is handed to the
socket, after the sink's own gzip or snappy, and on the answer (or the failure)
hands one record to a :class:`LedgerWriter`, whose thread does the file work off
the event loop.

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
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from yarl import URL

from agent.ledger import LEDGER_DIR, Ledger
from agent.ledger_record import RequestIds, SentRecord, destination

if TYPE_CHECKING:
    from agent.settings import Settings

log = structlog.get_logger("agent.ledger")

# Records waiting for the writer thread; beyond this a record is counted as lost
# rather than let a stuck disk grow the agent's memory without end.
MAX_QUEUED = 10_000
_STOP = object()

# Per delivery task (a ContextVar: each sink's loop runs in its own task, so
# sinks sending at the same time never see each other's).
SENDING: contextvars.ContextVar[Sending | None] = contextvars.ContextVar("pop_agent_sending", default=None)


class LedgerWriter:
    """A thread that appends records to the ledger, in batches, off the event loop."""

    def __init__(self, ledger: Ledger, *, sync_interval: float = 1.0) -> None:
        self.ledger = ledger
        self.sync_interval = sync_interval
        self.keep_bodies = ledger.keep_bodies
        self.lost_total = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LedgerWriter | None:
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
        return cls(ledger, sync_interval=cfg.sync_interval)

    def submit(self, record: SentRecord, body: bytes | None) -> None:
        """Queue one record (and its body, to keep); returns at once."""
        with self._lock:
            if self._queued >= MAX_QUEUED:
                self.lost_total += 1
                return
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="pop-agent-ledger", daemon=True)
                self._thread.start()
        self._queue.put((record, body))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting at most ``timeout`` seconds), then stop the thread (blocking)."""
        thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
            self._thread = None
            if thread.is_alive():
                return  # stuck on the disk: a daemon thread, it dies with the process
        self.ledger.close()

    async def aclose(self, grace: float = 5.0) -> None:
        """:meth:`close` from the event loop."""
        await asyncio.to_thread(self.close, grace)

    def _work(self) -> None:
        sync_due: float | None = None  # when what was written must be on the disk
        while True:
            try:
                wait = None if sync_due is None else max(0.0, sync_due - time.monotonic())
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                self._sync()
                sync_due = None
                continue
            batch = []
            stop = item is _STOP
            if not stop:
                batch.append(item)
            while not stop:  # everything queued meanwhile goes in one go
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                stop = item is _STOP
                if not stop:
                    batch.append(item)
            if batch:
                self._write(batch)
                if sync_due is None:
                    sync_due = time.monotonic() + self.sync_interval
            if stop or (sync_due is not None and time.monotonic() >= sync_due):
                self._sync()
                sync_due = None
            if stop:
                return

    def _sync(self) -> None:
        try:
            self.ledger.sync()
        except OSError as exc:
            if not self._failing:
                log.error("ledger_write_failed", code=exc.__class__.__name__, errno=exc.errno)
            self._failing = True

    def _write(self, batch: list[tuple[SentRecord, bytes | None]]) -> None:
        with self._lock:
            self._queued -= len(batch)
        try:
            self.ledger.append(batch)
        except OSError as exc:
            self.lost_total += len(batch)
            if not self._failing:
                log.error("ledger_write_failed", code=exc.__class__.__name__, errno=exc.errno)
            self._failing = True
            return
        if self._failing:
            log.info("ledger_write_recovered")
            self._failing = False


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
        _finish(ctx, failure_code(params.exception))

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


def failure_code(exc: BaseException) -> str:
    """The fixed code the ledger records for a request that got no answer (never the exception's text)."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return "connect"
    return "error"


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
