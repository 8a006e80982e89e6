"""Health's vocabulary: alarm kinds, the events a transition makes, and the fixed codes they carry.

Plain frozen values, so that hooks and logs can take them without the state
machine (:mod:`alerts.health`) that makes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal

_CODE = re.compile(r"[a-z0-9][a-z0-9_]{0,31}", re.ASCII)  # a code has at least one letter or digit
SINK_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)  # as the spool allows sink names


class AlarmKind(StrEnum):
    """What an outage is about."""

    DELIVERY = "delivery"
    COLLECTORS = "collectors"
    SPOOL = "spool"


class HealthState(StrEnum):
    """Delivery health as ``agent status`` shows it."""

    HEALTHY = "healthy"
    FAILING = "failing"
    OUTAGE = "outage"


@dataclass(frozen=True, slots=True)
class Failing:
    """An alarm turned bad (not yet an outage). ``failure`` is a fixed code; ``sink`` the receiver that failed."""

    kind: AlarmKind
    at: float  # wall clock
    failure: str
    sink: str = ""

    event: ClassVar[str] = "health_failing"


@dataclass(frozen=True, slots=True)
class Restored:
    """An alarm turned good again before it became an outage."""

    kind: AlarmKind
    at: float
    failed_for_s: float

    event: ClassVar[str] = "health_restored"


@dataclass(frozen=True, slots=True)
class OutageStarted:
    """An outage began: the alarm has been bad for its whole ``raise_after``.

    ``since`` is when it turned bad (wall clock); ``backlog`` is the number of
    heartbeats waiting in the spool; ``sink`` names the receiver whose delivery
    failed (empty for the other kinds).
    """

    kind: AlarmKind
    pop: str
    at: float
    since: float
    failure: str
    backlog: int
    sink: str = ""

    event: ClassVar[str] = "outage_started"


@dataclass(frozen=True, slots=True)
class OutageEnded:
    """An outage ended. ``duration_s`` counts from when the alarm turned bad.

    ``drain_per_s`` is how fast the backlog shrank over the last tick (heartbeats
    per second), ``None`` when unknown.
    """

    kind: AlarmKind
    pop: str
    at: float
    duration_s: float
    backlog: int
    drain_per_s: float | None
    sink: str = ""

    event: ClassVar[str] = "outage_ended"


OutageEvent = OutageStarted | OutageEnded
HealthEvent = Failing | Restored | OutageStarted | OutageEnded


def event_fields(event: HealthEvent) -> dict[str, Any]:
    """The event as log fields: fixed codes and numbers only."""
    fields: dict[str, Any] = {"kind": str(event.kind)}
    if not isinstance(event, Restored) and event.sink:
        fields["sink"] = event.sink
    if isinstance(event, Failing):
        fields["failure"] = event.failure
    elif isinstance(event, Restored):
        fields["failed_for_s"] = round(event.failed_for_s, 1)
    elif isinstance(event, OutageStarted):
        fields.update(failure=event.failure, backlog=event.backlog, failing_for_s=round(event.at - event.since, 1))
    else:
        fields.update(duration_s=round(event.duration_s, 1), backlog=event.backlog)
        if event.drain_per_s is not None:
            fields["drain_per_s"] = round(event.drain_per_s, 2)
    return fields


def fixed_code(value: str | None, default: str = "other") -> str:
    """``value`` if it is a short lower-case code, else ``default``: free text never reaches an alert."""
    return value if value is not None and _CODE.fullmatch(value) else default


@dataclass(frozen=True, slots=True)
class PushStatus:
    """What to push to Uptime Kuma this tick: status, a fixed message, ms of the last good delivery."""

    status: Literal["up", "down"]
    msg: str
    ping_ms: float | None
