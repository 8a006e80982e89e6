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

_NUMBER_TYPES = frozenset({int, float})
AGENT_SERIES = frozenset({LAST_HEARTBEAT, INFO, COLLECTOR_UP})

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]  # metric name, the heartbeat's own labels
Samples = dict[SeriesKey, float | int]
Families = dict[str, dict[Labels, float | int]]


def timestamp_ns(ts: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC time such as ``2026-11-22T07:00:00.123Z``.

    Exact to the nanosecond (no float on the way); raises ``ValueError`` for
    anything else.
    """
    match = _TIMESTAMP.match(ts)
    if match is None:
        raise ValueError("not an RFC 3339 UTC timestamp")
    seconds = int(ts[17:19])  # the pattern fixes where each field is
    if seconds >= 61:
        raise ValueError("timestamp out of range")
    fraction = match.group(7)
    seconds += _minute_start(ts[:16])
    return seconds * 1_000_000_000 + (int(fraction.ljust(9, "0")) if fraction else 0)


@functools.lru_cache(maxsize=1024)
def _minute_start(prefix: str) -> int:
    # Heartbeats share their minute with a few others: each minute's start is worked out once.
    month, day, hour, minute = int(prefix[5:7]), int(prefix[8:10]), int(prefix[11:13]), int(prefix[14:16])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60):
        raise ValueError("timestamp out of range")
    return calendar.timegm((int(prefix[:4]), month, day, hour, minute, 0, 0, 0, 0))


def timestamp_ms(doc: Mapping[str, Any]) -> int:
    """The heartbeat's ``ts`` in whole milliseconds, as remote write stamps its samples; ``ValueError`` if unusable."""
    ts = doc.get("ts")
    if not isinstance(ts, str):
        raise ValueError("heartbeat without ts")
    return timestamp_ns(ts) // 1_000_000


def heartbeat_seconds(ts_ns: int) -> float:
    """The value of the heartbeat-time series for a heartbeat at ``ts_ns``: Unix seconds."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return seconds + nanos / 1e9  # not ns / 1e9, which gives ...800.1230001


@functools.lru_cache(maxsize=4096)
def _valid_name(name: str) -> bool:
    # A POP reports the same few dozen names every tick: each is matched once. The
    # agent's own names are not the heartbeat's to set.
    return _METRIC_NAME.match(name) is not None and name not in AGENT_SERIES


@functools.lru_cache(maxsize=256)
def _plain_keys(names: tuple[Any, ...]) -> tuple[SeriesKey, ...] | None:
    """The series keys of a ``metrics`` map with these names, or ``None`` if any name is unusable."""
    if not all(isinstance(name, str) and _valid_name(name) for name in names):
        return None
    return tuple((name, ()) for name in names)


@functools.lru_cache(maxsize=1024)
def _labels_of(pairs: tuple[tuple[Any, Any], ...]) -> Labels | None:
    kept = []
    for key, value in pairs:
        if value is None:
            continue
        if not isinstance(key, str) or not isinstance(value, str):
            return None
        if not _LABEL_NAME.match(key) or key.startswith("__") or key in RESERVED_LABELS:
            return None
        kept.append((key, value))
    return tuple(sorted(kept))


def _labels(raw: Any) -> Labels | None:
    if not isinstance(raw, dict):
        return None
    try:
        return _labels_of(tuple(raw.items()))
    except TypeError:  # an unhashable value: not a label anyway
        return None


def samples(doc: Mapping[str, Any], ts_ns: int | None = None) -> Samples:
    """Every series of the heartbeat, ``(name, labels) -> value``, in the heartbeat's order, then the agent's own.

    Labels exclude ``job`` and ``pop``, which the delivering path adds. Samples a
    Prometheus server could not take (a bad name or label, a value that is not a
    number) are left out, so that one odd series cannot cost the rest. Raises
    ``ValueError`` if the heartbeat has no usable ``ts``; ``ts_ns`` is that time,
    when the caller has it already. A parsed heartbeat is made of plain dicts and
    lists, which is what is checked for (a ``Mapping`` check costs far more).
    """
    if ts_ns is None:
        ts = doc.get("ts")
        if not isinstance(ts, str):
            raise ValueError("heartbeat without ts")
        ts_ns = timestamp_ns(ts)
    out: Samples = {}
    metrics = doc.get("metrics")
    if isinstance(metrics, dict):
        values = list(metrics.values())
        keys = _plain_keys(tuple(metrics))
        # The usual heartbeat, checked by C loops: known names, numbers only (a bool is
        # an int to isinstance(), hence type()).
        if keys is not None and set(map(type, values)) <= _NUMBER_TYPES:
            out.update(zip(keys, values, strict=True))
        else:
            for name, value in metrics.items():
                if type(value) in _NUMBER_TYPES and isinstance(name, str) and _valid_name(name):
                    out[(name, ())] = value
    series = doc.get("series")
    if isinstance(series, list):
        for item in series:
            if not isinstance(item, dict):
                continue
            number: Any = item.get("value")
            named = item.get("name")
            if type(number) not in _NUMBER_TYPES or not isinstance(named, str) or not _valid_name(named):
                continue
            labels = _labels(item.get("labels", {}))
            if labels is not None:
                out[(named, labels)] = number

    out[(LAST_HEARTBEAT, ())] = heartbeat_seconds(ts_ns)
    info = tuple(sorted((key, value) for key in ("edition", "agent_version") if isinstance(value := doc.get(key), str)))
    out[(INFO, info)] = 1
    collectors = doc.get("collectors")
    if isinstance(collectors, dict):
        for name, status in collectors.items():
            if isinstance(name, str) and isinstance(status, str):
                out[(COLLECTOR_UP, (("collector", name),))] = int(status == "ok")
    return out


def families(doc: Mapping[str, Any]) -> Families:
    """:func:`samples` grouped by metric name, then by label set, as the text format lists them."""
    out: Families = {}
    for (name, labels), value in samples(doc).items():
        out.setdefault(name, {})[labels] = value
    return out


def full_labels(name: str, labels: Labels, pop: str, job: str = DEFAULT_JOB) -> Labels:
    """One series' complete label set as remote write sends it: ``__name__``, ``job``, ``pop`` and its own labels.

    Sorted by label name, as the remote-write spec asks.
    """
    return tuple(sorted((("__name__", name), ("job", job), ("pop", pop), *labels)))
