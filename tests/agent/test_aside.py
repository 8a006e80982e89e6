"""quarantine/ and rejected/: what a refusal keeps, and the count, size and age bounds of both."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import aside
from agent.settings import SpoolSettings
from agent.spool import Spool
from tests.agent.test_spool import doc, ids_of, names


@pytest.fixture
def make_spool(tmp_path: Path) -> Iterator[Callable[[], Spool]]:
    """Open a spool with one sink (``central``) under ``tmp_path/spool``; closed afterwards."""
    opened: list[Spool] = []

    def make() -> Spool:
        spool = Spool(tmp_path / "spool", SpoolSettings(), sinks=("central",), fsync=False)
        spool.open()
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        spool.close()


def age(path: Path, days: float) -> None:
    """Date ``path`` back by ``days``."""
    when = time.time() - days * 86_400
    os.utime(path, (when, when))


def test_a_heartbeat_the_scrubber_refused_keeps_only_its_reason(make_spool: Callable[[], Spool]) -> None:
    """Refused for holding an address, a spooled heartbeat leaves no copy in rejected/, only the reason sidecar."""
    spool = make_spool()
    (leaky,) = ids_of(1)
    spool.put(leaky, doc(leaky, pad=10))
    spool.settle("central", (), {leaky: "scrub_ip_address"})
    rejected = spool.root / "rejected"
    assert [f"{leaky}.reason.json"] == names(rejected)
    assert {"sink": "central", "reason": "scrub_ip_address"} == json.loads(
        (rejected / f"{leaky}.reason.json").read_bytes()
    )
    assert ([], 1) == (names(spool.root / "pending"), spool.stats().rejected_total)


def test_a_heartbeat_a_receiver_refused_is_kept_whole(make_spool: Callable[[], Spool]) -> None:
    """A heartbeat central refused as malformed passed the scrubber: it is kept whole for a human to read."""
    spool = make_spool()
    (refused,) = ids_of(1)
    spool.put(refused, doc(refused))
    spool.settle("central", (), {refused: "malformed"})
    assert doc(refused) == (spool.root / "rejected" / f"{refused}.json").read_bytes()


def test_rejected_entries_older_than_a_week_go_at_open(tmp_path: Path, make_spool: Callable[[], Spool]) -> None:
    """An entry of rejected/ older than the age bound is removed with its sidecar; a recent one stays."""
    rejected = tmp_path / "spool" / "rejected"
    rejected.mkdir(parents=True)
    old, recent = ids_of(2)
    for doc_id in (old, recent):
        (rejected / f"{doc_id}.json").write_bytes(doc(doc_id))
        (rejected / f"{doc_id}.reason.json").write_text('{"sink": "central", "reason": "malformed"}')
    age(rejected / f"{old}.reason.json", aside.KEEP_SECONDS / 86_400 + 1)
    make_spool()
    assert [f"{recent}.json", f"{recent}.reason.json"] == names(rejected)


def test_quarantine_and_rejected_are_pruned_by_age_while_running(make_spool: Callable[[], Spool]) -> None:
    """The age bound holds for a spool that stays open: prune_aside removes what aged past it since open."""
    spool = make_spool()
    quarantine, rejected = spool.root / "quarantine", spool.root / "rejected"
    (quarantine / "garbage.json").write_text("{")
    (rejected / "x.reason.json").write_text("{}")
    age(quarantine / "garbage.json", 8)
    age(rejected / "x.reason.json", 8)
    spool.prune_aside()
    assert ([], []) == (names(quarantine), names(rejected))


def test_rejected_is_bounded_in_bytes_oldest_first(tmp_path: Path) -> None:
    """Over the byte bound the oldest heartbeats (with their sidecars) go until the rest fits."""
    rejected = tmp_path / "rejected"
    rejected.mkdir()
    size = aside.KEEP_BYTES // 4
    stems = [f"h{i}" for i in range(6)]
    for i, stem in enumerate(stems):
        (rejected / f"{stem}.json").write_bytes(b"x" * size)
        (rejected / f"{stem}.reason.json").write_text("{}")
        age(rejected / f"{stem}.reason.json", 1 - i / 10)  # h0 oldest
    left = aside.prune(str(rejected), grouped=True)
    kept = sorted({name.split(".")[0] for name in names(rejected)})
    assert (3, stems[3:]) == (left, kept)


def test_quarantine_is_bounded_in_count(tmp_path: Path) -> None:
    """Over the count bound the oldest entries of quarantine/ go first."""
    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    for i in range(aside.KEEP_FILES + 5):
        path = quarantine / f"q{i:05d}"
        path.write_text("x")
        age(path, 1 - i / 1e5)
    assert aside.KEEP_FILES == aside.prune(str(quarantine), grouped=False)
    assert "q00005" == names(quarantine)[0]
