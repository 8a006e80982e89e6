"""Shared check for collector tests: what a collector emits is what it declared."""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.sample import MetricKind, Sample
from collectors.base import Collector


def assert_declared(collector: Collector, samples: Sequence[Sample]) -> None:
    """Every sample is declared by the collector, with exactly the declared label keys."""
    specs = {spec.name: spec for spec in collector.metrics}
    expected: list[str] = []
    assert expected == [s.name for s in samples if s.name not in specs]
    assert expected == [s.name for s in samples if tuple(k for k, _ in s.labels) != specs[s.name].labels]
    assert expected == [s.name for s in samples if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", s.name)]
    assert expected == [
        spec.name for spec in collector.metrics if (spec.kind is MetricKind.COUNTER) != spec.name.endswith("_total")
    ]
