"""Properties of the spool with central and a newest-only Pushgateway, across restarts and crashes (hypothesis)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.settings import SpoolSettings
from agent.spool import Spool

BIG = 1 << 30
SINKS = ("central", "pushgateway")


def uuid7(ms: int) -> str:
    hex_ = f"{ms:012x}7000{ms:016x}"
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:32]}"


def open_spool(root: Path) -> Spool:
    spool = Spool(root, SpoolSettings(), sinks=SINKS, newest_only=("pushgateway",), fsync=False)
    spool.open()
    return spool


def on_disk(root: Path) -> set[str]:
    return {p.name.removesuffix(".json") for p in (root / "pending").iterdir()}


def crash_copy(root: Path, target: Path) -> None:
    """What a process killed now leaves on disk (the trash, emptied in the background, does not matter)."""
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("trash", "lock"))
    (target / "trash").mkdir()


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(min_value=0, max_value=3)),  # how many ms back a late one is dated
        st.tuples(st.just("central"), st.integers(min_value=1, max_value=4)),  # central acks this many
        st.tuples(st.just("central_down"), st.just(0)),
        st.tuples(st.just("push"), st.just(0)),
        st.tuples(st.just("push_down"), st.just(0)),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("crash"), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=60)
@given(steps=STEPS)
def test_central_loses_nothing_the_gateway_gets_only_the_newest_and_holds_nothing(
    steps: list[tuple[str, int]],
) -> None:
    """Whatever the order of puts, acks, failures, restarts and kills, the spool keeps its promises to both sinks.

    Every heartbeat central has not acked is on disk and none it acked is offered
    again; the Pushgateway is offered the newest heartbeat or nothing; and no
    file central acked stays, except the newest one the Pushgateway has not pushed.
    """
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        root = base / "spool0"
        spool = open_spool(root)
        spooled: set[str] = set()
        acked: set[str] = set()
        pushed: set[str] = set()
        clock = 1_700_000_000_000
        try:
            for n, (step, arg) in enumerate(steps):
                if step == "put":
                    clock += 10
                    doc_id = uuid7(clock - 15 * arg)  # with arg > 0, older than the one before: a late one
                    if doc_id not in spooled:
                        spool.put(doc_id, json.dumps({"id": doc_id}).encode())
                        spooled.add(doc_id)
                elif step in ("central", "central_down"):
                    offered = [p.id for p in spool.batch("central", arg or 4, BIG)]
                    assert set() == set(offered) & acked
                    if step == "central":
                        spool.settle("central", offered, {})
                        acked.update(offered)
                elif step in ("push", "push_down"):
                    offered = [p.id for p in spool.batch("pushgateway", 1000, BIG)]
                    newest = max(on_disk(root), default=None)
                    assert offered in ([], [newest])
                    if step == "push":
                        spool.settle("pushgateway", offered, {})
                        pushed.update(offered)
                elif step == "restart":
                    spool.close()
                    spool = open_spool(root)
                    pushed.clear()  # the Pushgateway's progress is not kept: it may push the newest again
                else:
                    copy = base / f"spool{n + 1}"
                    crash_copy(root, copy)
                    spool.close()
                    root, spool = copy, open_spool(copy)
                    pushed.clear()
                files = on_disk(root)
                assert spooled - acked <= files
                assert files - (spooled - acked) <= {max(files, default="")} - pushed
        finally:
            spool.close()
