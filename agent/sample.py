"""Frozen value types shared by collectors, the scrubber, the spool and the sinks.

Standard library only, so that any plugin can import them cheaply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, TypeAlias

# A POP id: the one pattern the settings, the heartbeat schema and the alert texts all check.
POP_ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
# A mount point as a label: plain path segments only; the heartbeat schema and the disk collector both check it.
MOUNT_PATTERN = r"/([A-Za-z0-9._-]{1,64}(/[A-Za-z0-9._-]{1,64}){0,15})?"

# What JSON holds: a collector's saved state (offsets, sketch registers) is one of these objects.
JsonValue: TypeAlias = "str | int | float | bool | Sequence[JsonValue] | Mapping[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"


class MetricKind(StrEnum):
    """How a metric behaves over time; sinks use it to type Prometheus series."""

    GAUGE = "gauge"
    COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric a collector declares it may emit.

    The declaration is the scrubber's allowlist: a metric that no collector
    declared never leaves the POP. ``labels`` names the label keys the metric may
    carry; each key must have a pattern in the scrubber's label table.
    """

    name: str
    kind: MetricKind
    help: str
    unit: str = ""
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Sample:
    """One number measured by a collector in one tick."""

    name: str
    value: float | int
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, name: str, value: float | int, **labels: str) -> Sample:
        """Build a sample with labels given as keyword arguments."""
        return cls(name, value, tuple(sorted(labels.items())))


@dataclass(frozen=True)
class Pending:
    """A spooled heartbeat as a sink sees it: its id and the exact bytes on disk."""

    id: str
    raw: bytes = field(repr=False)

    @cached_property
    def doc(self) -> dict[str, Any]:
        """The parsed heartbeat (parsed once, on first use)."""
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed


@dataclass(frozen=True)
class Delivery:
    """What a sink made of one batch.

    Ids in ``acked`` were accepted by the receiver; ids in ``rejected`` were refused
    for good (id -> fixed reason code); every other id of the batch is kept for a
    later try, and ``failure`` holds the fixed code of why (``None`` if all went).
    Ids in ``skipped`` (id -> reason code) were settled for this sink without
    being sent, say too old for its receiver; they are in ``acked`` as well, so
    the spool treats them as done.
    """

    acked: frozenset[str] = frozenset()
    rejected: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failure: str | None = None
    retry_after: float | None = None
