"""The Prometheus Pushgateway sink.

Each POP is one group, ``PUT <url>/metrics/job/<job>/pop/<pop>``, holding the
latest heartbeat in the text exposition format (see :mod:`sinks.exposition`).
A PUT replaces the whole group and the Pushgateway keeps only the latest value
of every series, counters included, so of a backlog only the newest heartbeat
per POP is pushed; the older ones are acknowledged as superseded, since pushing
them first would show nothing that the next push does not overwrite. The spool
knows this too (``newest_only``): it hands the sink only the newest heartbeat
and never keeps an older one for it, so a Pushgateway that is down holds no
file on disk (see agent/spool_cursors.py).

What each answer means:

- 2xx: the pushed heartbeat and every older one of its POP in the batch are acked.
- 408, 429, 5xx, timeouts, connection errors: kept, with the receiver's ``Retry-After``.
- 400: the Pushgateway refused the body (say a metric pushed elsewhere with
  another type): that heartbeat is rejected ``malformed`` and the next newest is
  tried, a few times per call at most, so a gateway that refuses everything costs
  a bounded number of requests per tick.
- anything else (401/403, 404, ...): kept; failure ``auth`` or ``http_<status>``.

Each request is made once; when to try again is the delivery loop's backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import aiohttp
import structlog

from agent.deadline import Deadline
from agent.errors import ConfigError, PermanentSinkError, SinkError, TransientSinkError
from agent.ledger_record import RequestIds, destination
from agent.plugin_api import PluginContext
from agent.sample import Delivery, Pending
from sinks.exposition import CONTENT_TYPE, grouping_path, render
from sinks.http import SessionHolder, drain_quietly, error_for_status, request_once
from sinks.pushgateway_settings import PushgatewaySinkSettings
from sinks.series import timestamp_ns

log = structlog.get_logger("sinks.pushgateway")

# Only the newest heartbeat matters, so a large batch costs one request per POP.
MAX_BATCH = 1000
# Heartbeats of one POP the gateway may refuse (400) in one call before the rest
# wait for the next tick.
MAX_REFUSED_PER_CALL = 3


def _newest_first_key(item: Pending) -> tuple[int, int]:
    doc = item.doc
    seq = doc.get("seq")
    return (seq if isinstance(seq, int) and not isinstance(seq, bool) else -1, timestamp_ns(doc["ts"]))


class PushgatewaySink:
    """Pushes each POP's newest heartbeat to a Prometheus Pushgateway."""

    name: ClassVar[str] = "pushgateway"
    settings_model: ClassVar[type[PushgatewaySinkSettings]] = PushgatewaySinkSettings
    # The spool hands this sink only the newest heartbeat, and never keeps one for it.
    newest_only: ClassVar[bool] = True

    def __init__(
        self,
        cfg: PushgatewaySinkSettings,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if cfg.url is None:
            raise ConfigError("sinks.pushgateway.url is not set")
        self._cfg = cfg
        self._base = cfg.url.rstrip("/")
        self.max_batch = MAX_BATCH
        self._http = SessionHolder(session, connect_timeout=cfg.timeout, read_timeout=cfg.timeout)

    def __repr__(self) -> str:
        return f"PushgatewaySink(url={destination(self._base)!r})"

    @classmethod
    def from_settings(cls, cfg: PushgatewaySinkSettings, context: PluginContext) -> PushgatewaySink | None:
        """The sink for its table, ``[sinks.pushgateway]``, or ``None`` when no URL is set."""
        return None if cfg.url is None else cls(cfg)

    def group_url(self, pop: str) -> str:
        """Where the group of POP ``pop`` lives."""
        return self._base + grouping_path((("job", self._cfg.job), ("pop", pop)))

    async def send(self, batch: Sequence[Pending], deadline: Deadline) -> Delivery:
        """Push the newest heartbeat of each POP in ``batch``; older ones are acked as superseded."""
        acked: set[str] = set()
        rejected: dict[str, str] = {}
        groups: dict[str, list[Pending]] = {}
        for item in batch:
            try:
                pop = item.doc["pop"]
                _newest_first_key(item)
            except (ValueError, KeyError, TypeError):
                rejected[item.id] = "malformed"
                continue
            if not isinstance(pop, str) or not pop:
                rejected[item.id] = "malformed"
                continue
            groups.setdefault(pop, []).append(item)

        failure: str | None = None
        retry_after: float | None = None
        for pop, items in groups.items():
            stop = await self._push_group(pop, sorted(items, key=_newest_first_key), deadline, acked, rejected)
            if stop is None:
                continue
            failure = stop.code
            retry_after = stop.retry_after if isinstance(stop, TransientSinkError) else None
            if stop.code != "malformed":
                break  # the gateway is down or turns us away: the other POPs would fare no better
        if failure is not None:
            log.debug("pushgateway_kept", failure=failure, kept=len(batch) - len(acked) - len(rejected))
        return Delivery(acked=frozenset(acked), rejected=rejected, failure=failure, retry_after=retry_after)

    async def _push_group(
        self, pop: str, items: list[Pending], deadline: Deadline, acked: set[str], rejected: dict[str, str]
    ) -> SinkError | None:
        """Push the newest of one POP's ``items`` (oldest first) and ack them all; the error that stopped it, if any.

        On a 400 that heartbeat is rejected and the next newest tried, at most
        ``MAX_REFUSED_PER_CALL`` times.
        """
        refused = 0
        while items:
            if refused >= MAX_REFUSED_PER_CALL:
                return PermanentSinkError(code="malformed")
            if deadline.expired:
                return TransientSinkError(code="deadline")
            newest = items.pop()
            try:
                body = render(newest.doc)
            except (ValueError, KeyError, TypeError):
                rejected[newest.id] = "malformed"
                continue
            try:
                await self._put(self.group_url(pop), body, RequestIds.of((newest,)), deadline)
            except SinkError as error:
                if isinstance(error, TransientSinkError) or error.code != "malformed":
                    return error
                rejected[newest.id] = error.code
                log.info("pushgateway_rejected", reason=error.code)
                refused += 1
                continue
            acked.add(newest.id)
            acked.update(item.id for item in items)
            return None
        return None

    async def aclose(self) -> None:
        """Close the session if this sink opened it."""
        await self._http.aclose()

    async def _put(self, url: str, body: bytes, sent: RequestIds, deadline: Deadline) -> None:
        """One PUT; raises the :class:`SinkError` its outcome means."""
        if deadline.expired:
            raise TransientSinkError(code="deadline")
        await request_once(
            self._http.get(),
            "PUT",
            url,
            sink=self.name,
            data=body,
            headers={"Content-Type": CONTENT_TYPE},
            client_timeout=aiohttp.ClientTimeout(total=deadline.timeout(self._cfg.timeout)),
            sent=sent,
            judge=_judge,
        )


async def _judge(response: aiohttp.ClientResponse) -> SinkError | None:
    """The answer's status decides; its body is drained whatever it says, so the connection is reused."""
    error = error_for_status(response.status, response.headers)
    await drain_quietly(response)
    return error
