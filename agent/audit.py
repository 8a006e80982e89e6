"""``agent sent`` and ``agent egress``: what left this machine, and where this build could send.

``agent sent`` reads the ledger (:mod:`agent.ledger`) and lists its records;
with ``--verify`` it checks every kept body against its record's SHA-256,
decodes it as its sink encoded it and runs the scrubber again over every
heartbeat in it (and the tripwire over every line of a text body), naming the
record of each mismatch or finding and never the offending value.

``agent egress`` lists every destination the build and configuration can
contact: each upload sink and alert hook, its destination without credentials
or tokens, whether this artifact holds the code that could contact it, and
whether the edition and telemetry setting let it.
"""

from __future__ import annotations

import json
import re
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.body_decoders import DECODERS
from agent.edition import edition, upload_installed
from agent.errors import ConfigError
from agent.exits import EX_FAIL, EX_OK, EX_USAGE
from agent.ledger import LEDGER_DIR, body_path, read_ledger
from agent.ledger_record import SentRecord, destination, sha256_hex
from agent.plugins import BUILTIN_SINKS, sink_refs
from agent.settings import Settings

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)", re.ASCII)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# Paths the upload sinks add to their configured base URL.
_SINK_PATHS = {"pushgateway": "/metrics/job/{job}/pop/{pop}", "loki": "/loki/api/v1/push"}
HOOKS = ("ntfy", "kuma")


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``2h``, ``7d``, ``1w`` or a plain number of seconds; ``ValueError`` otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Verdict:
    """The outcome of ``--verify`` over the records read."""

    requests: int = 0
    heartbeats: int = 0
    findings: list[str] = field(default_factory=list)
    not_kept: int = 0
    undecoded: int = 0


def _name(index: int, record: SentRecord) -> str:
    """How a finding names a record: its place, time, sink and digest prefix (never its content)."""
    return f"record {index} ({record.to_json()['time']} {record.sink} sha256 {record.sha256[:12]})"


def verify(records: list[SentRecord], directory: Path) -> Verdict:
    """Check every kept body: digest, decoding, the scrubber over each heartbeat and the tripwire over each line."""
    from agent.app import declared_metrics
    from agent.scrubber import check, sensitive

    allowed = declared_metrics()
    verdict = Verdict(requests=len(records))
    for index, record in enumerate(records, 1):
        if not record.kept:
            verdict.not_kept += 1
            continue
        try:
            body = body_path(directory, record.sha256).read_bytes()
        except FileNotFoundError:
            verdict.not_kept += 1  # pruned by the bodies' bounds
            continue
        except OSError:
            verdict.findings.append(f"{_name(index, record)}: body unreadable")
            continue
        name = _name(index, record)
        if sha256_hex(body) != record.sha256 or len(body) != record.bytes:
            verdict.findings.append(f"{name}: body does not match its digest")
        decoder = DECODERS.get(record.sink)
        if decoder is None:
            verdict.undecoded += 1
            continue
        try:
            contents = decoder(body)
        except (ValueError, KeyError, TypeError, IndexError, OSError, EOFError, zlib.error, RecursionError):
            verdict.findings.append(f"{name}: body does not decode as {record.sink} sends it")
            continue
        verdict.heartbeats += contents.heartbeats
        carried = tuple(doc.get("id") if isinstance(doc, dict) else None for doc in contents.docs)
        if record.ids and contents.docs and carried != record.ids:
            verdict.findings.append(f"{name}: the heartbeats in the body are not the ids the record lists")
        for position, doc in enumerate(contents.docs, 1):
            for path, code in sorted(set(check(doc, allowed))):
                verdict.findings.append(f"{name}: heartbeat {position}: {path}: {code}")
        for line_no, text in enumerate(contents.texts, 1):
            reason = sensitive(text)
            if reason:
                verdict.findings.append(f"{name}: line {line_no}: {reason}")
    return verdict


# -- agent sent ---------------------------------------------------------------------------


def _render(record: SentRecord) -> str:
    data = record.to_json()
    seq = f" seq {record.seq[0]}-{record.seq[1]}" if record.seq else ""
    carried = f"{len(record.ids)} heartbeats{seq}" if record.ids else "no heartbeat ids"
    return (
        f"{data['time']}  {record.sink:<12} {record.method:<4} {record.destination}  {record.status}  "
        f"{record.bytes} B  {carried}  sha256 {record.sha256}"
    )


def sent(settings: Settings, *, since: str | None, as_json: bool, verify_bodies: bool) -> int:
    """``agent sent``: the ledger's records (since a duration ago), as text or JSON lines; ``--verify`` checks."""
    start: float | None = None
    if since is not None:
        try:
            start = time.time() - parse_duration(since)
        except ValueError:
            print("agent: --since: expected a duration such as 30s, 15m, 2h or 7d", file=sys.stderr)
            return EX_USAGE
    directory = settings.state_dir / LEDGER_DIR
    try:
        scan = read_ledger(directory, since=start)
    except OSError as exc:
        print(f"agent: cannot read the ledger in {directory} ({exc.strerror or 'error'})", file=sys.stderr)
        return EX_USAGE
    for record in scan.records:
        print(json.dumps(record.to_json(), separators=(",", ":")) if as_json else _render(record))
    if not verify_bodies:
        if not as_json:
            damaged = f", {scan.damaged} damaged lines skipped" if scan.damaged else ""
            print(f"{len(scan.records):,} requests{damaged}", file=sys.stderr)
        return EX_OK
    verdict = verify(scan.records, directory)
    for finding in verdict.findings:
        print(f"agent: {finding}", file=sys.stderr)
    notes = [
        f"{count:,} {what}"
        for count, what in (
            (verdict.not_kept, "bodies not kept"),
            (verdict.undecoded, "bodies checked by digest only"),
            (scan.damaged, "damaged lines skipped"),
        )
        if count
    ]
    summary = f"{verdict.requests:,} requests, {verdict.heartbeats:,} heartbeats, {len(verdict.findings):,} findings"
    print(summary + (f" ({', '.join(notes)})" if notes else ""))
    return EX_FAIL if verdict.findings else EX_OK


# -- agent egress -------------------------------------------------------------------------


@dataclass(frozen=True)
class Egress:
    """One place this machine could send to."""

    name: str
    kind: str  # "upload sink", "alert hook" or "plugin sink"
    destination: str
    code: str
    allowed: str


def _telemetry(settings: Settings) -> tuple[bool, str]:
    from agent.wiring import telemetry_enabled

    try:
        on = telemetry_enabled(settings, edition())
    except ConfigError as exc:
        return False, f"no: configuration error: {exc}"
    return on, "yes" if on else "no: telemetry is off"


def egress_entries(settings: Settings) -> Iterator[Egress]:
    """Every upload sink and alert hook, configured or not, as this build and configuration see it."""
    _, telemetry_says = _telemetry(settings)
    for ref in sink_refs(settings.plugins):
        present = ref.available()
        code = "present" if present else "no upload code present"
        if ref.name not in BUILTIN_SINKS:
            yield Egress(ref.name, "plugin sink", f"chosen by the plugin ({ref.origin})", code, telemetry_says)
            continue
        cfg = getattr(settings.sinks, ref.name, None)
        url = getattr(cfg, "url", None)
        if url is None:
            yield Egress(ref.name, "upload sink", "not configured", code, "no: not configured")
            continue
        suffix = _SINK_PATHS.get(ref.name, "").format(job=getattr(cfg, "job", ""), pop=settings.pop_id)
        where = destination(url.rstrip("/") + suffix if suffix else url)
        allowed = telemetry_says if present else "no: the code is not in this artifact"
        yield Egress(ref.name, "upload sink", where, code, allowed)
    hooks = {"ntfy": settings.ntfy_alert_url, "kuma": settings.kuma_push_url}
    for name in HOOKS:
        value = hooks[name]
        if value is None:
            yield Egress(name, "alert hook", "not configured", "present", "no: not configured")
            continue
        where = destination(value.get_secret_value(), mask_last_segment=name == "ntfy")
        yield Egress(name, "alert hook", where, "present", "yes: alert hooks run whenever configured")


def egress(settings: Settings) -> int:
    """``agent egress``: every destination this build and configuration can contact."""
    upload = "present" if upload_installed() else "absent (no upload code present)"
    _, telemetry_says = _telemetry(settings)
    print(f"edition: {edition()}  upload code: {upload}  telemetry allows upload: {telemetry_says}")
    for entry in egress_entries(settings):
        print(f"{entry.name:<12} {entry.kind:<12} {entry.destination}")
        print(f"{'':<12} code: {entry.code}; allowed: {entry.allowed}")
    ledger = "on" if settings.ledger.enabled else "off"
    print(f"sent ledger: {ledger} ({settings.state_dir / LEDGER_DIR}); `agent sent` lists what left")
    return EX_OK
