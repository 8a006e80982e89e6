"""A heartbeat in the Prometheus text exposition format (version 0.0.4), for the Pushgateway.

Metric names stay as the heartbeat carries them (``cpu_percent``, ``requests_total``),
since central dashboards query those names; the Pushgateway adds the ``job`` and
``pop`` grouping labels. The agent adds a few series of its own, all prefixed
``pop_agent_``: the heartbeat's time (so a POP that stopped shows up as an old
value, the Pushgateway keeping a silent pusher's values forever), one info series
and each collector's up/down state.
"""

from __future__ import annotations

import base64
import calendar
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAST_HEARTBEAT = "pop_agent_last_heartbeat_timestamp_seconds"
INFO = "pop_agent_info"
COLLECTOR_UP = "pop_agent_collector_up"

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TIMESTAMP = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:Z|[+-]00:00)$")
# The Pushgateway refuses pushed series carrying its grouping labels; these never
# come from a scrubbed heartbeat, but a series with one is dropped rather than
# letting it turn the whole push into a 400.
_RESERVED_LABELS = frozenset({"job", "pop", "instance"})

Labels = tuple[tuple[str, str], ...]


def timestamp_ns(ts: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC time such as ``2026-11-22T07:00:00.123Z``.

    Exact to the nanosecond (no float on the way); raises ``ValueError`` for
    anything else.
    """
    match = _TIMESTAMP.match(ts)
    if match is None:
        raise ValueError("not an RFC 3339 UTC timestamp")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError("timestamp out of range")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    fraction = (match.group(7) or "").ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction or 0)


def grouping_path(labels: Iterable[tuple[str, str]]) -> str:
    """The Pushgateway URL path of a group, e.g. ``/metrics/job/pop_agent/pop/ams1``.

    A value holding ``/`` (or an empty one) uses the ``@base64`` form, as the
    Pushgateway's API asks; anything else is percent-encoded.
    """
    parts = ["/metrics"]
    for key, value in labels:
        if value == "":
            parts.append(f"{key}@base64/=")
        elif "/" in value:
            parts.append(f"{key}@base64/{base64.urlsafe_b64encode(value.encode()).decode()}")
        else:
            parts.append(f"{key}/{quote(value, safe='')}")
    return "/".join(parts)


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text escaped for the text format: backslash and line feed."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int) -> str:
    """A sample value as the text format spells it (``NaN``, ``+Inf``, shortest round-trip floats)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def metric_type(name: str) -> str:
    """``counter`` for names ending in ``_total`` (the heartbeat's rule), else ``gauge``."""
    return "counter" if name.endswith("_total") else "gauge"


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _labels(raw: Any) -> Labels | None:
    if not isinstance(raw, Mapping):
        return None
    pairs = []
    for key, value in raw.items():
        if value is None:
            continue
        if not isinstance(key, str) or not isinstance(value, str):
            return None
        if not _LABEL_NAME.match(key) or key.startswith("__") or key in _RESERVED_LABELS:
            return None
        pairs.append((key, value))
    return tuple(sorted(pairs))


def families(doc: Mapping[str, Any]) -> dict[str, dict[Labels, float | int]]:
    """The heartbeat's samples grouped by metric name, then by label set.

    Samples a Prometheus server could not take (a bad name or label, a value that
    is not a number) are left out, so that one odd series cannot cost the rest.
    Raises ``ValueError`` if the heartbeat has no usable ``ts``.
    """
    ts = doc.get("ts")
    if not isinstance(ts, str):
        raise ValueError("heartbeat without ts")
    out: dict[str, dict[Labels, float | int]] = {}

    def add(name: Any, labels: Labels | None, value: Any) -> None:
        number = _number(value)
        if not isinstance(name, str) or not _METRIC_NAME.match(name) or labels is None or number is None:
            return
        out.setdefault(name, {})[labels] = number

    metrics = doc.get("metrics")
    if isinstance(metrics, Mapping):
        for name, value in metrics.items():
            add(name, (), value)
    series = doc.get("series")
    if isinstance(series, list):
        for item in series:
            if isinstance(item, Mapping):
                add(item.get("name"), _labels(item.get("labels", {})), item.get("value"))

    # The agent's own series go last so that a heartbeat cannot overwrite them.
    seconds, nanos = divmod(timestamp_ns(ts), 1_000_000_000)
    out[LAST_HEARTBEAT] = {(): seconds + nanos / 1e9}  # not ns / 1e9, which gives ...800.1230001
    info = tuple(sorted((key, value) for key in ("edition", "agent_version") if isinstance(value := doc.get(key), str)))
    out[INFO] = {info: 1}
    collectors = doc.get("collectors")
    if isinstance(collectors, Mapping):
        out[COLLECTOR_UP] = {
            (("collector", name),): int(status == "ok")
            for name, status in collectors.items()
            if isinstance(name, str) and isinstance(status, str)
        }
        if not out[COLLECTOR_UP]:
            del out[COLLECTOR_UP]
    return out


_HELP = {
    LAST_HEARTBEAT: "When the POP's last heartbeat was taken (Unix seconds); an old value means the POP went silent.",
    INFO: "The POP agent's edition and version (always 1).",
    COLLECTOR_UP: "Whether each collector succeeded in the POP's last heartbeat (1) or not (0).",
}


def render(doc: Mapping[str, Any]) -> bytes:
    """One heartbeat as a text-format body: HELP and TYPE per family, LF after every line, no timestamps."""
    lines: list[str] = []
    for name, samples in sorted(families(doc).items()):
        help_text = _HELP.get(name, f"{name} as reported by the POP agent's heartbeat.")
        lines.append(f"# HELP {name} {escape_help(help_text)}")
        lines.append(f"# TYPE {name} {metric_type(name)}")
        for labels, value in sorted(samples.items()):
            if labels:
                inner = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels)
                lines.append(f"{name}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{name} {format_value(value)}")
    return "".join(line + "\n" for line in lines).encode()
