"""Log formats: the lines of the ``combined`` and ``json`` access-log formats, read a chunk at a time.

``combined`` lines look like ``1.2.3.4 - - [22/Nov/2026:07:00:00 +0000] "GET / HTTP/1.1" 200 …``;
``json`` lines are one object each, with ``time``/``ts``/``@timestamp`` as ISO 8601 or
epoch seconds, ``remote_addr``/``client_ip``/``ip`` and ``status``. A line without a
parseable time and status is malformed. A line whose address field is not an IP
address is a request but no client.

The expressions here read a whole chunk with one ``findall``: every match starts
at the newline before its line (chunks get one prepended), so the engine skips
from line to line by a literal search, and a chunk whose match count differs from
its line count is read again the strict way. The strict definitions, line by line,
are :data:`COMBINED` and :func:`parse_json_line`: the fast expressions must count
what they count (a property test holds them together). Their repeats are
possessive (``*+``, ``++``) wherever giving characters back could never lead to a
match (a run of non-spaces before a space): the same matches, and the engine keeps
no state to backtrack to. The engine runs a repeat of one excluded character
(``[^"]*+``) several times faster than of a class (``[^"\\\x00-\x1f]*+``), so a
JSON chunk without escapes or control characters is read with such repeats first.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal, NamedTuple

_TS = rb"\d\d/[A-Za-z]{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}"
_REQUEST = rb'"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"'
# Matches start at the newline before a line (chunks get one prepended), so that
# the engine can skip ahead to the next line by a literal search.
COMBINED = re.compile(rb"\n([^ \n]++) [^\[\n]*+\[(" + _TS + rb")\] " + _REQUEST + rb" ([1-5])\d\d(?=[ \r\n])")
# The same with single-character exclusions, which the engine scans several times
# faster. Without the newline exclusions a match may run over a garbage line into
# the next: then the chunk has fewer matches than lines and is read again with
# COMBINED. Without escapes in the request an escaped quote can end it early:
# chunks holding one are read with COMBINED too.
COMBINED_FAST = re.compile(rb'\n([^ ]++) [^\[]*+\[([^\]]*+)\] "[^"]*+" ([1-5])\d\d(?=[ \r\n])')
TIME_STAMP = re.compile(_TS)
_MONTHS = {
    m: i
    for i, m in enumerate(
        (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1
    )
}
_JSON_TIME = ("time", "ts", "@timestamp", "timestamp")
_JSON_ADDR = ("remote_addr", "client_ip", "ip", "client", "remote_ip")
_JSON_WS = rb"[ \t\r]*+"
_JSON_CHARS = rb'[^"\\\x00-\x1f]*+'
_JSON_STRING = rb'"' + _JSON_CHARS + rb'(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})' + _JSON_CHARS + rb')*+"'
_JSON_NUMBER = rb"-?(?:0|[1-9]\d*+)(?:\.\d++)?(?:[eE][+-]?\d++)?"
_JSON_SCALAR = rb"(?:" + _JSON_STRING + rb"|" + _JSON_NUMBER + rb"|true|false|null)"

Format = Literal["combined", "json"]


def combined_time(text: bytes) -> float | None:
    """Epoch seconds of a combined-format time such as ``22/Nov/2026:07:00:00 +0000``."""
    try:
        month = _MONTHS[text[3:6].title()]
        sign = -1 if text[21:22] == b"-" else 1
        tz = timezone(sign * timedelta(hours=int(text[22:24]), minutes=int(text[24:26])))
        moment = datetime(
            int(text[7:11]), month, int(text[0:2]), int(text[12:14]), int(text[15:17]), int(text[18:20]), tzinfo=tz
        )
    except (KeyError, ValueError):
        return None
    return moment.timestamp()


def bulk_expression(stamp: bytes) -> re.Pattern[bytes]:
    """The addresses of the lines stamped in the 10-minute span of ``stamp`` (matches start at the newline before).

    The bulk path's definition of a line: the date, hour and tens of minutes are
    literal, so a match is a valid line of that span and nothing else.
    """
    literal = re.escape(stamp[:16]) + rb"\d:[0-5]\d" + re.escape(stamp[20:])
    return re.compile(rb"\n([^ ]++) [^\[]*+\[" + literal + rb'\] "[^"]*+" [1-5]\d\d(?=[ \r\n])')


def json_time(value: object) -> float | None:
    """Epoch seconds of a JSON log time: ISO 8601 text, or epoch seconds (milliseconds if huge)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value
        try:
            value = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                return None
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return value / 1000 if value > 1e11 else float(value)
    return None


def parse_json_line(line: bytes) -> tuple[bytes, float, int] | None:
    """(address token, epoch, status class) of one JSON log line, or ``None`` if malformed."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    when = next((json_time(doc[k]) for k in _JSON_TIME if k in doc), None)
    status = doc.get("status")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    addr = next((doc[k] for k in _JSON_ADDR if isinstance(doc.get(k), str)), None)
    if when is None or not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return None
    if addr is None:
        return None
    return addr.encode("utf-8", "replace"), when, status // 100


def line_time(line: bytes, fmt: Format) -> float | None:
    """The time stamp of one line, or ``None`` (used to seek back on first start)."""
    if fmt == "json":
        parsed = parse_json_line(line)
        return None if parsed is None else parsed[1]
    match = COMBINED.match(b"\n" + line.rstrip(b"\r\n") + b"\n")
    return None if match is None else combined_time(match.group(2))


class JsonShape(NamedTuple):
    """Expressions for JSON lines of one flat shape, and where their groups put (address, time, class)."""

    pattern: re.Pattern[bytes]
    """Any spelling of the shape's lines."""
    plain: re.Pattern[bytes]
    """The same lines in a chunk that is :func:`plain_json_text`, each value of the sample line's type."""
    order: tuple[int, int, int]


def json_shape(line: bytes) -> JsonShape | None:
    """Fast expressions for JSON lines with the same flat shape as ``line``, or ``None``.

    Same keys in the same order, scalar values, the address a string without
    escapes, the status of the same type: on such lines the expressions read what
    :func:`parse_json_line` reads. Both are anchored at the newline before a line.
    The plain one knows there is no escape, no control character and so no
    whitespace but spaces, and expects each value of the type it has in ``line``:
    single-character exclusions and no alternatives, which the engine runs several
    times faster. A line it does not match is left to the other.
    """
    try:
        doc = json.loads(line, object_pairs_hook=lambda pairs: ("object", pairs))
    except ValueError:
        return None
    if not isinstance(doc, tuple):
        return None
    pairs: list[tuple[str, object]] = doc[1]
    keys = [k for k, _ in pairs]
    values = dict(pairs)
    time_key = next((k for k in _JSON_TIME if k in values), None)
    addr_key = next((k for k in _JSON_ADDR if isinstance(values.get(k), str)), None)
    status = values.get("status")
    if (
        len(set(keys)) != len(keys)
        or time_key is None
        or addr_key is None
        or any(isinstance(v, tuple | list) for v in values.values())
        or not isinstance(status, int | str)
        or isinstance(status, bool)
        or any(k in values and k != addr_key for k in _JSON_ADDR[: _JSON_ADDR.index(addr_key)])
    ):
        return None
    status_value = rb"([1-5])\d\d" if isinstance(status, int) else rb'"([1-5])\d\d"'
    captures = {
        time_key: ("time", rb"(" + _JSON_STRING + rb"|" + _JSON_NUMBER + rb")"),
        addr_key: ("addr", rb'"([^"\\\x00-\x1f]*+)"'),
        "status": ("class", status_value),
    }
    plain_captures = {
        time_key: ("time", rb"(" + _plain_json_value(values[time_key]) + rb")"),
        addr_key: ("addr", rb'"([^"]*+)"'),
        "status": ("class", status_value),
    }
    groups = [captures[key][0] for key in keys if key in captures]
    sample = b"\n" + line.rstrip(b"\n") + b"\n"
    pattern = _json_line(keys, captures, lambda key: _JSON_SCALAR, _JSON_WS + b":" + _JSON_WS, _JSON_WS)
    if pattern.match(sample) is None:
        return None  # spelt otherwise (escaped keys, say): leave such lines to json.loads

    def plain_value(key: str) -> bytes:
        return _plain_json_value(values[key])

    # A log writes every line with the same spacing: the sample's, as literals, when it is one of the usual two.
    for colon, edge in ((b": ", b""), (b":", b""), (rb" *+: *+", rb" *+")):
        plain = _json_line(keys, plain_captures, plain_value, colon, edge)
        if plain.match(sample) is not None:
            break
    return JsonShape(pattern, plain, (groups.index("addr"), groups.index("time"), groups.index("class")))


def _plain_json_value(sample: object) -> bytes:
    """An expression for a JSON value of the same type as ``sample``, in plain text."""
    if isinstance(sample, str):
        return rb'"[^"]*+"'
    if isinstance(sample, bool) or sample is None:
        return rb"(?:true|false|null)"
    return _JSON_NUMBER


def _json_line(
    keys: list[str],
    captures: dict[str, tuple[str, bytes]],
    value_of: Callable[[str], bytes],
    colon: bytes,
    ws: bytes,
) -> re.Pattern[bytes]:
    """One line of ``keys`` in order, the captured ones as ``captures`` says, anchored at the newline before it.

    ``colon`` is the expression between a key and its value; ``ws`` the whitespace
    around braces, and around commas (a comma takes the space after the colon's).
    """
    parts = []
    for key in keys:
        value = captures[key][1] if key in captures else value_of(key)
        parts.append(re.escape(json.dumps(key).encode("ascii")) + colon + value)
    comma = ws + b"," + (b" " if colon == b": " else ws)
    body = comma.join(parts)
    return re.compile(rb"\n" + ws + rb"\{" + ws + body + ws + rb"\}" + ws + rb"(?=\n)")


_CONTROLS = bytes(c for c in range(0x20) if c != ord("\n"))


def plain_json_text(chunk: bytes) -> bool:
    """Whether ``chunk`` holds no backslash and no control character but newlines: no escape, no tab, no CR."""
    return b"\\" not in chunk and len(chunk.translate(None, _CONTROLS)) == len(chunk)


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` decodes as UTF-8 (what ``json.loads`` accepts)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class StampTimes:
    """Time stamps met lately and their epoch seconds, so that each distinct stamp is parsed once.

    Only text that parsed as a time is remembered: what sits where a time belongs
    on a malformed line may be anything, an address included.
    """

    CAP = 4096

    def __init__(self) -> None:
        self._times: dict[bytes, float] = {}

    def combined(self, text: bytes) -> float | None:
        """Epoch seconds of a combined-format stamp, or ``None``."""
        when = self._times.get(text)
        if when is None and TIME_STAMP.fullmatch(text):
            when = combined_time(text)
            if when is not None:
                self._remember(text, when)
        return when

    def json(self, raw: bytes) -> float | None:
        """Epoch seconds of a JSON time value as it is spelt in the line (a string or a number), or ``None``."""
        when = self._times.get(raw)
        if when is None:
            try:
                when = json_time(json.loads(raw))
            except ValueError:  # a number past int's digit limit: a malformed line, not a broken chunk
                return None
            if when is not None:
                self._remember(raw, when)
        return when

    def _remember(self, text: bytes, when: float) -> None:
        if len(self._times) >= self.CAP:
            self._times.clear()
        self._times[text] = when
