"""The sent ledger's records: what one request was, one CRC-checked line each, and where it went.

Standard library only. :mod:`agent.ledger` keeps the lines on disk; sinks import
:class:`RequestIds` from here to say which heartbeats a request carries.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MASK = "********"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Uptime Kuma's push URL holds the monitor's token as its last path segment.
_KUMA_TOKEN = re.compile(r"(/api/push/)[^/]+")
# The seq of a spooled heartbeat, without parsing the whole document: the
# canonical encoding is compact, and no other key of the document is "seq".
_SEQ = re.compile(rb'"seq":([0-9]{1,19})[,}]')
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RequestIds:
    """What one request carries, passed by a sink as aiohttp's ``trace_request_ctx``."""

    ids: tuple[str, ...] = ()
    seq: tuple[int, int] | None = None

    @classmethod
    def of(cls, items: Iterable[Any]) -> RequestIds:
        """The ids and seq range of spooled heartbeats (anything with ``id`` and ``raw``)."""
        pairs = []
        for item in items:
            match = _SEQ.search(item.raw)
            pairs.append((item.id, int(match.group(1)) if match else None))
        return cls.carrying(pairs)

    @classmethod
    def carrying(cls, pairs: Iterable[tuple[str, int | None]]) -> RequestIds:
        """The ids and seq range of ``(id, seq)`` pairs; a ``None`` (or negative) seq is left out of the range."""
        ids: list[str] = []
        seqs: list[int] = []
        for heartbeat_id, seq in pairs:
            ids.append(heartbeat_id)
            if seq is not None and seq >= 0:
                seqs.append(seq)
        return cls(tuple(ids), (min(seqs), max(seqs)) if seqs else None)


@dataclass(frozen=True)
class SentRecord:
    """One request as the ledger keeps it."""

    time: float
    sink: str
    method: str
    destination: str
    bytes: int
    sha256: str
    status: int | str  # the HTTP status, or a fixed code when no answer came (timeout, connect, ...)
    ids: tuple[str, ...] = ()
    seq: tuple[int, int] | None = None
    ms: float | None = None
    kept: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object a ledger line and ``agent sent --json`` hold."""
        return {
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "sink": self.sink,
            "method": self.method,
            "destination": self.destination,
            "ids": list(self.ids),
            "seq": list(self.seq) if self.seq is not None else None,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "status": self.status,
            "ms": self.ms,
            "kept": self.kept,
        }

    @classmethod
    def from_json(cls, data: Any) -> SentRecord:
        """The record of a parsed ledger line; ``ValueError`` (or ``KeyError``/``TypeError``) if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        seq = data.get("seq")
        status = data["status"]
        if not isinstance(status, int | str) or not _SHA256.fullmatch(data["sha256"]):
            raise ValueError("bad record")
        return cls(
            time=datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp(),
            sink=str(data["sink"]),
            method=str(data["method"]),
            destination=str(data["destination"]),
            bytes=int(data["bytes"]),
            sha256=data["sha256"],
            status=status,
            ids=tuple(str(item) for item in data.get("ids") or ()),
            seq=(int(seq[0]), int(seq[1])) if seq else None,
            ms=float(data["ms"]) if data.get("ms") is not None else None,
            kept=bool(data.get("kept", False)),
        )


def destination(url: str, *, mask_last_segment: bool = False) -> str:
    """``url`` as ``scheme://host:port/path``: no credentials, query or fragment, tokens in the path masked.

    The Kuma push token (``/api/push/<token>``) is always masked; with
    ``mask_last_segment`` the last path segment is too (an ntfy topic, which is
    all a reader needs to subscribe).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "unparseable-url"
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    path = _KUMA_TOKEN.sub(rf"\g<1>{MASK}", parts.path or "/")
    if mask_last_segment:
        head, _, last = path.rstrip("/").rpartition("/")
        if last:
            path = f"{head}/{MASK}"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS.get(scheme, 0)}{path}"


def encode_line(record: SentRecord) -> bytes:
    """One ledger line: the CRC-32 of the JSON, a space, the JSON, a newline."""
    payload = json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=True).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode_line(line: bytes) -> SentRecord | None:
    """The record of one line (without its newline), or ``None`` if it is torn or damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    payload = line[9:]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return SentRecord.from_json(json.loads(payload))
    except (ValueError, KeyError, TypeError, IndexError, OverflowError):
        return None


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` in lower-case hex."""
    return hashlib.sha256(data).hexdigest()
