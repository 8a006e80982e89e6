"""A valid heartbeat for tests: the agent's own builder, with the test POP's fixed fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent import heartbeat
from agent.sample import Sample


def make_heartbeat(
    seq: int = 1,
    samples: Iterable[Sample] = (),
    *,
    collectors: Mapping[str, str] | None = None,
    interval: float = 10.0,
) -> dict[str, Any]:
    """A heartbeat of ``test-pop`` (community, 0.1.0) as ``heartbeat.build`` makes it."""
    return heartbeat.build(
        pop="test-pop",
        seq=seq,
        edition="community",
        version="0.1.0",
        interval=interval,
        samples=list(samples),
        collectors=dict(collectors if collectors is not None else {"cpu": "ok"}),
    )
