"""The one mapping from a heartbeat to Prometheus series, shared by every Prometheus path.

The Pushgateway sink renders these series as text (:mod:`sinks.exposition`) and
the remote-write sink encodes them as protobuf (:mod:`sinks.remote_write`), so a
dashboard reads the same names whichever path fed it:

- metric names exactly as the heartbeat carries them (``cpu_percent``,
  ``requests_total``), with the heartbeat's own labels (``mount``, ``class``, ``log``);
- ``job`` and ``pop`` on every series: the Pushgateway's grouping labels, which
  Prometheus keeps with ``honor_labels: true``; remote write sets them itself;
- the agent's own series, prefixed ``pop_agent_``: the heartbeat's time (so a POP
  that went silent shows up as an old value), one info series, and each
  collector's up/down state.
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Mapping
from typing import Any

LAST_HEARTBEAT = "pop_agent_last_heartbeat_timestamp_seconds"
INFO = "pop_agent_info"
COLLECTOR_UP = "pop_agent_collector_up"
DEFAULT_JOB = "pop_agent"

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TIMESTAMP = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:Z|[+-]00:00)$", re.ASCII)
# The series' identity labels, set by the path that delivers them: a heartbeat's
# own label with one of these names is dropped (the Pushgateway would refuse the
# whole push with a 400, and remote write would carry two of the same name).
RESERVED_LABELS = frozenset({"job", "pop", "instance"})

_NUMBERS = (int, float)

Labels = tuple[tuple[str, str], ...]
Families = dict[str, dict[Labels, float | int]]


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


def timestamp_ms(doc: Mapping[str, Any]) -> int:
    """The heartbeat's ``ts`` in whole milliseconds, as remote write stamps its samples; ``ValueError`` if unusable."""
    ts = doc.get("ts")
    if not isinstance(ts, str):
        raise ValueError("heartbeat without ts")
    return timestamp_ns(ts) // 1_000_000


@functools.lru_cache(maxsize=4096)
def _valid_name(name: str) -> bool:
    # A POP reports the same few dozen names every tick: each is matched once.
    return _METRIC_NAME.match(name) is not None


def _labels(raw: Any) -> Labels | None:
    if not isinstance(raw, Mapping):
        return None
    pairs = []
    for key, value in raw.items():
        if value is None:
            continue
        if not isinstance(key, str) or not isinstance(value, str):
            return None
        if not _LABEL_NAME.match(key) or key.startswith("__") or key in RESERVED_LABELS:
            return None
        pairs.append((key, value))
    return tuple(sorted(pairs))


def families(doc: Mapping[str, Any]) -> Families:
    """The heartbeat's samples grouped by metric name, then by label set (without ``job`` and ``pop``).

    Samples a Prometheus server could not take (a bad name or label, a value that
    is not a number) are left out, so that one odd series cannot cost the rest.
    Raises ``ValueError`` if the heartbeat has no usable ``ts``.
    """
    ts = doc.get("ts")
    if not isinstance(ts, str):
        raise ValueError("heartbeat without ts")
    out: Families = {}
    metrics = doc.get("metrics")
    if isinstance(metrics, Mapping):
        for name, value in metrics.items():
            # type() rather than isinstance(): a bool is an int, and never a sample.
            if type(value) in _NUMBERS and isinstance(name, str) and _valid_name(name):
                out.setdefault(name, {})[()] = value
    series = doc.get("series")
    if isinstance(series, list):
        for item in series:
            if not isinstance(item, Mapping):
                continue
            labels = _labels(item.get("labels", {}))
            number = item.get("value")
            named = item.get("name")
            if not isinstance(number, int | float) or isinstance(number, bool) or labels is None:
                continue
            if isinstance(named, str) and _valid_name(named):
                out.setdefault(named, {})[labels] = number

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


def full_labels(name: str, labels: Labels, pop: str, job: str = DEFAULT_JOB) -> Labels:
    """One series' complete label set as remote write sends it: ``__name__``, ``job``, ``pop`` and its own labels.

    Sorted by label name, as the remote-write spec asks.
    """
    return tuple(sorted((("__name__", name), ("job", job), ("pop", pop), *labels)))
