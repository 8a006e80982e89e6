"""The Grafana Loki sink: heartbeats as JSON log lines through the push API.

``POST <url>/loki/api/v1/push``, gzip-compressed JSON::

    {"streams": [{"stream": {"job": "pop_agent", "pop": "ams1", "edition": "community"},
                  "values": [["<unix ns>", "<heartbeat as compact JSON>"], ...]}]}

Labels stay low-cardinality (``job``, ``pop``, ``edition``); everything else is
in the line, for LogQL's ``| json``. Each stream's values go in timestamp order,
and a batch that cannot go whole goes in halves, first half first, so a backlog
lands oldest first.

Loki answers 400 when it refused some entries (too far behind the stream's
newest, out of order, older than ``reject_old_samples_max_age``, ...) but it has
then already stored the others. When its answer names every refused entry
unambiguously, those are rejected with a reason code and the rest acked; when it
does not (Loki lists ten at most, and other refusals name no entry), the batch is
bisected until each refused heartbeat stands alone. Re-sending an entry that
was stored is harmless: Loki drops an entry identical in timestamp and line to
one it holds, and a heartbeat's line is always the same bytes.

- 2xx: acked. 408, 429, 5xx, timeouts, connection errors: kept, with Loki's
  ``Retry-After``; each request is made once, and the delivery loop's backoff
  decides when to try again.
- 400, 413: as above; a lone heartbeat refused is rejected with the reason
  (``too_far_behind``, ``out_of_order``, ``too_old``, ``too_new``,
  ``line_too_long``, ``too_large``, else ``malformed``).
- anything else (401/403, 404, ...): kept; failure ``auth`` or ``http_<status>``.
"""

from __future__ import annotations

import calendar
import json
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import aiohttp
import structlog

from agent.deadline import Deadline
from agent.errors import ConfigError, PermanentSinkError, SinkError, TransientSinkError
from agent.ledger_record import RequestIds, destination
from agent.plugin_api import PluginContext
from agent.sample import Delivery, Pending
from sinks.http import SessionHolder, drain_quietly, error_for_status, gzipped, request_once
from sinks.loki_settings import LokiSinkSettings
from sinks.series import timestamp_ns

log = structlog.get_logger("sinks.loki")

PUSH_PATH = "/loki/api/v1/push"
JOB = "pop_agent"
# A 400's body is read to find which entries were refused; Loki's is a few KiB at most.
MAX_ERROR_BODY = 65_536
# Go's time.Time.String(), in the Loki server's zone: "2026-11-22 08:00:00.123 +0100 CET".
_GO_TIME = r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? ([+-])(\d\d)(\d\d) [A-Za-z0-9+-]+"
# Loki's ingester: "entry with timestamp <Go time> ignored, reason: '<why>'," per entry (ten at
# most), then "user '<tenant>', total ignored: N out of M for stream: {...}".
_IGNORED = re.compile(rf"entry with timestamp {_GO_TIME} ignored, reason: '([^']*)'")
# The cut-offs behind "too far behind" (the ingester, RFC 3339 in seconds) and
# "timestamp too old" (the distributor, a Go time): every entry older is refused.
_BEHIND_CUTOFF = re.compile(
    r"too far behind, entry timestamp is: \S+, oldest acceptable timestamp is: "
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))"
)
_OLD_CUTOFF = re.compile(rf"has timestamp too old: [^,]*, oldest acceptable timestamp is: {_GO_TIME}")
_TOTAL = re.compile(r"total ignored: (\d+) out of (\d+)")
_REASONS = (
    ("too far behind", "too_far_behind"),
    ("out of order", "out_of_order"),
    ("timestamp too old", "too_old"),
    ("timestamp too new", "too_new"),
    ("max entry size", "line_too_long"),
)


@dataclass(frozen=True)
class Entry:
    """One heartbeat as a Loki log entry."""

    id: str
    labels: tuple[tuple[str, str], ...]
    ns: int
    seq: int
    line: str

    @classmethod
    def of(cls, item: Pending) -> Entry:
        """The entry for a spooled heartbeat; ``ValueError``/``KeyError``/``TypeError`` if it lacks what Loki needs."""
        doc = item.doc
        pop, edition = doc["pop"], doc.get("edition", "unknown")
        if not isinstance(pop, str) or not pop or not isinstance(edition, str):
            raise ValueError("heartbeat without pop or edition")
        seq = doc.get("seq")
        line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return cls(
            id=item.id,
            labels=(("edition", edition), ("job", JOB), ("pop", pop)),
            ns=timestamp_ns(doc["ts"]),
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else -1,
            line=line,
        )


def push_body(entries: Sequence[Entry]) -> bytes:
    """The push request's JSON: one stream per label set, values in the order given."""
    streams: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
    for entry in entries:
        streams.setdefault(entry.labels, []).append([str(entry.ns), entry.line])
    body = {"streams": [{"stream": dict(labels), "values": values} for labels, values in streams.items()]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


async def _judge(response: aiohttp.ClientResponse) -> SinkError | None:
    """The answer's status decides, except that a 400 or 413 is read to learn which entries Loki refused."""
    error = error_for_status(response.status, response.headers)
    if isinstance(error, PermanentSinkError) and error.code in ("malformed", "too_large"):
        # Read to learn which entries Loki refused; it stays on this machine.
        text = (await response.content.read(MAX_ERROR_BODY)).decode("utf-8", "replace")
        raise _Refused(error.code, text)
    if error is None:
        await drain_quietly(response)
    return error


def reason_code(text: str) -> str:
    """The fixed code of a Loki refusal message (never the message itself)."""
    lowered = text.lower()
    for needle, code in _REASONS:
        if needle in lowered:
            return code
    return "malformed"


def _go_time_ns(groups: Sequence[str | None]) -> int:
    year, month, day, hour, minute, second = (int(part or 0) for part in groups[:6])
    fraction, sign, off_h, off_m = groups[6:10]
    offset = (int(off_h or 0) * 3600 + int(off_m or 0) * 60) * (1 if sign == "+" else -1)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def cutoffs(text: str, *, one_stream: bool) -> dict[str, int]:
    """The cut-offs a Loki 400 body states, as {reason code: ns}; every entry older is refused too.

    "Too old" holds for the whole tenant; "too far behind" only for its stream, so
    it is used only when the request held one stream (``one_stream``).
    """
    found: dict[str, int] = {}
    for match in _OLD_CUTOFF.finditer(text):
        found["too_old"] = max(found.get("too_old", 0), _go_time_ns(match.groups()))
    if one_stream:
        for match in _BEHIND_CUTOFF.finditer(text):
            when = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
            # Go prints this cut-off to the second, rounded down: older than that is older still.
            ns = int(when.timestamp()) * 1_000_000_000
            found["too_far_behind"] = max(found.get("too_far_behind", 0), ns)
    return found


def ignored_entries(text: str) -> tuple[dict[int, str], int | None, int | None]:
    """What a Loki 400 body says was refused: {timestamp ns: reason code}, total ignored and total sent.

    The totals are summed over every stream the answer mentions; ``None`` when it
    gives none (a refusal that does not come from the ingester).
    """
    named = {_go_time_ns(match.groups()): reason_code(match.group(11)) for match in _IGNORED.finditer(text)}
    totals = [(int(ignored), int(out_of)) for ignored, out_of in _TOTAL.findall(text)]
    if not totals:
        return named, None, None
    return named, sum(t[0] for t in totals), sum(t[1] for t in totals)


class _Refused(Exception):
    """A 400 or 413, with what Loki's answer says about it."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(code)
        self.code = code
        self.text = text


class LokiSink:
    """Pushes heartbeats to Grafana Loki as JSON log lines."""

    name: ClassVar[str] = "loki"
    settings_model: ClassVar[type[LokiSinkSettings]] = LokiSinkSettings

    def __init__(
        self,
        cfg: LokiSinkSettings,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if cfg.url is None:
            raise ConfigError("sinks.loki.url is not set")
        self._cfg = cfg
        self._url = cfg.url.rstrip("/") + PUSH_PATH
        self.max_batch = cfg.batch_max_count
        self._http = SessionHolder(session, connect_timeout=cfg.timeout, read_timeout=cfg.timeout)
        self._headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        if cfg.tenant_id is not None:
            self._headers["X-Scope-OrgID"] = cfg.tenant_id

    def __repr__(self) -> str:
        return f"LokiSink(url={destination(self._url)!r})"

    @classmethod
    def from_settings(cls, cfg: LokiSinkSettings, context: PluginContext) -> LokiSink | None:
        """The sink for its table, ``[sinks.loki]``, or ``None`` when no URL is set."""
        return None if cfg.url is None else cls(cfg)

    async def send(self, batch: Sequence[Pending], deadline: Deadline) -> Delivery:
        """Push ``batch`` in timestamp order per stream; what is neither acked nor rejected stays spooled."""
        rejected: dict[str, str] = {}
        entries: list[Entry] = []
        for item in batch:
            try:
                entries.append(Entry.of(item))
            except (ValueError, KeyError, TypeError):
                rejected[item.id] = "malformed"
        entries.sort(key=lambda entry: (entry.labels, entry.ns, entry.seq))

        acked: set[str] = set()
        failure: str | None = None
        retry_after: float | None = None
        work: deque[Sequence[Entry]] = deque([entries] if entries else [])
        while work:
            if deadline.expired:
                failure = "deadline"
                break
            part = work.popleft()
            try:
                await self._post(part, deadline)
            except TransientSinkError as error:
                failure, retry_after = error.code, error.retry_after
                break
            except PermanentSinkError as error:
                failure = error.code
                break
            except _Refused as refusal:
                work.extendleft(reversed(self._sort_out(part, refusal, acked, rejected)))
                continue
            acked.update(entry.id for entry in part)
        if failure is not None:
            log.debug("loki_kept", failure=failure, kept=len(batch) - len(acked) - len(rejected))
        return Delivery(acked=frozenset(acked), rejected=rejected, failure=failure, retry_after=retry_after)

    def _sort_out(
        self, part: Sequence[Entry], refusal: _Refused, acked: set[str], rejected: dict[str, str]
    ) -> list[Sequence[Entry]]:
        """Record what a refusal of ``part`` settles; return what is to be sent again, in order.

        In turn: a lone entry is rejected; entries Loki named beyond doubt are
        rejected and the rest acked; entries older than a cut-off it stated are
        rejected and the rest sent again; failing all that, the halves are.
        """
        if len(part) == 1:
            named, _, _ = ignored_entries(refusal.text)
            fallback = "too_large" if refusal.code == "too_large" else reason_code(refusal.text)
            self._reject(rejected, {part[0].id: named.get(part[0].ns) or fallback})
            return []
        settled = self._settle(part, refusal)
        if settled is not None:
            self._reject(rejected, settled)
            acked.update(entry.id for entry in part if entry.id not in settled)
            return []
        below = self._below_cutoff(part, refusal)
        if below:
            self._reject(rejected, below)
            rest = [entry for entry in part if entry.id not in below]
            return [rest] if rest else []
        middle = len(part) // 2
        return [part[:middle], part[middle:]]

    @staticmethod
    def _reject(rejected: dict[str, str], refused: dict[str, str]) -> None:
        rejected.update(refused)
        for code in refused.values():
            log.info("loki_rejected", reason=code)

    @staticmethod
    def _settle(part: Sequence[Entry], refusal: _Refused) -> dict[str, str] | None:
        """The refused entries of ``part`` by id, if Loki's answer names each of them beyond doubt."""
        if refusal.code != "malformed":
            return None
        named, ignored, sent = ignored_entries(refusal.text)
        if not named or ignored != len(named) or sent != len(part):
            return None
        refused = {entry.id: named[entry.ns] for entry in part if entry.ns in named}
        if len(refused) != len(named):  # a timestamp shared by two entries, or one not sent
            return None
        return refused

    @staticmethod
    def _below_cutoff(part: Sequence[Entry], refusal: _Refused) -> dict[str, str]:
        """The entries of ``part`` older than a cut-off Loki's answer states, by id, with its reason code.

        The rest of ``part`` is then sent again: some of it may have landed, and
        Loki keeps one of an entry sent twice.
        """
        if refusal.code != "malformed":
            return {}
        limits = cutoffs(refusal.text, one_stream=len({entry.labels for entry in part}) == 1)
        refused: dict[str, str] = {}
        for entry in part:
            for code, limit in limits.items():
                if entry.ns < limit:
                    refused[entry.id] = code
                    break
        return refused

    async def aclose(self) -> None:
        """Close the session if this sink opened it."""
        await self._http.aclose()

    async def _post(self, part: Sequence[Entry], deadline: Deadline) -> None:
        """One push of ``part``; raises what its outcome means (:class:`_Refused` for 400 and 413)."""
        if deadline.expired:
            raise TransientSinkError(code="deadline")
        body = await gzipped(push_body(part))  # before the session is taken: the thread may take a while
        await request_once(
            self._http.get(),
            "POST",
            self._url,
            sink=self.name,
            data=body,
            headers=self._headers,
            client_timeout=aiohttp.ClientTimeout(total=deadline.timeout(self._cfg.timeout)),
            sent=RequestIds.carrying((entry.id, entry.seq) for entry in part),
            judge=_judge,
        )
