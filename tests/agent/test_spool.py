"""The disk spool: layout, bounds, quarantine, disk errors, per-sink cursors, restarts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.atomic_file import FileOps
from agent.errors import SpoolError
from agent.settings import SpoolSettings
from agent.spool import REMOVE_AT_ONCE, Spool
from agent.spool_store import RECENT_BYTES

BIG = 1 << 30


def uuid7(ms: int, n: int = 0) -> str:
    """A UUIDv7-shaped id for millisecond ``ms``; ``n`` orders ids within the same millisecond."""
    hex_ = f"{ms:012x}7{n:03x}8{n:015x}"
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:32]}"


def doc(doc_id: str, pad: int = 0) -> bytes:
    return json.dumps({"schema": "pop-heartbeat/1", "id": doc_id, "pad": "x" * pad}).encode()


def ids_of(n: int, start: int = 1_700_000_000_000) -> list[str]:
    return [uuid7(start + i) for i in range(n)]


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.fixture
def make_spool(tmp_path: Path) -> Iterator[Callable[..., Spool]]:
    """Open spools under one root and close them all afterwards."""
    opened: list[Spool] = []

    def make(settings: SpoolSettings | None = None, **kwargs: object) -> Spool:
        spool = Spool(tmp_path / "spool", settings or SpoolSettings(), **kwargs)  # type: ignore[arg-type]
        spool.open()
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        spool.close()


class Faults:
    """A FileOps whose calls fail with a chosen errno while ``fail_*`` is set."""

    def __init__(self) -> None:
        self.fail_open: int | None = None
        self.fail_write: int | None = None
        self.fail_fsync: int | None = None
        self.ops = FileOps(open=self.open, write=self.write, fsync=self.fsync)

    def open(self, path: str, flags: int, mode: int) -> int:
        if self.fail_open is not None:
            raise OSError(self.fail_open, os.strerror(self.fail_open))
        return os.open(path, flags, mode)

    def write(self, fd: int, data: memoryview) -> int:
        if self.fail_write is not None:
            raise OSError(self.fail_write, os.strerror(self.fail_write))
        # Short writes, so the write loop is exercised too.
        return os.write(fd, data[:7])

    def fsync(self, fd: int) -> None:
        if self.fail_fsync is not None:
            raise OSError(self.fail_fsync, os.strerror(self.fail_fsync))
        os.fsync(fd)


# -- layout and atomicity ------------------------------------------------------


def test_put_stores_exact_bytes_as_one_file_and_batch_returns_them_oldest_first(
    make_spool: Callable[..., Spool],
) -> None:
    """Each heartbeat is one pending/<id>.json holding the bytes given, read back in id order."""
    spool = make_spool(sinks=("central",))
    ids = ids_of(5)
    for doc_id in reversed(ids):
        spool.put(doc_id, doc(doc_id))
    batch = spool.batch("central", 10, BIG)
    assert ids == [p.id for p in batch]
    assert [doc(i) for i in ids] == [p.raw for p in batch]
    assert [f"{i}.json" for i in ids] == names(spool.root / "pending")
    assert names(spool.root / "tmp") == []


def test_heartbeats_stored_lately_are_read_back_from_memory_older_ones_from_disk(
    make_spool: Callable[..., Spool],
) -> None:
    """The heartbeats of the ticks since the last flush are offered as written, without reading their files.

    What is older than the memory's bound, or was stored before the spool was opened, is read from disk.
    """
    spool = make_spool(sinks=("central",))
    pad = RECENT_BYTES // 2 - 200  # two fit in memory, not three
    first, second, third = ids_of(3)
    for doc_id in (first, second, third):
        spool.put(doc_id, doc(doc_id, pad=pad))
    pending = spool.root / "pending"
    for doc_id in (first, second, third):  # changed behind the spool's back: only a read of the file would see it
        (pending / f"{doc_id}.json").write_bytes(doc(doc_id, pad=5))
    assert [doc(first, pad=5), doc(second, pad=pad), doc(third, pad=pad)] == [
        p.raw for p in spool.batch("central", 10, 10 * RECENT_BYTES)
    ]
    spool.settle("central", [third], {})
    assert [doc(first, pad=5), doc(second, pad=pad)] == [p.raw for p in spool.batch("central", 10, 10 * RECENT_BYTES)]
    spool.close()
    spool.open()
    assert [doc(first, pad=5), doc(second, pad=5)] == [p.raw for p in spool.batch("central", 10, 10 * RECENT_BYTES)]


def test_a_directory_put_in_place_of_a_heartbeat_sent_from_memory_is_set_aside_when_settled(
    make_spool: Callable[..., Spool],
) -> None:
    """The heartbeat goes as it was written; the directory left in its place leaves pending/ on settle."""
    spool = make_spool(sinks=("central",))
    (doc_id,) = ids_of(1)
    spool.put(doc_id, doc(doc_id))
    path = spool.root / "pending" / f"{doc_id}.json"
    path.unlink()
    path.mkdir()
    assert [doc(doc_id)] == [p.raw for p in spool.batch("central", 10, BIG)]
    spool.settle("central", [doc_id], {})
    assert ([], 0, [f"{doc_id}.json"]) == (
        names(spool.root / "pending"),
        spool.stats().pending,
        names(spool.root / "quarantine"),
    )


def test_batch_respects_count_and_bytes_but_always_offers_one(make_spool: Callable[..., Spool]) -> None:
    """A batch stops at max_count or max_bytes, yet an oversized first heartbeat is still offered."""
    spool = make_spool(sinks=("central",))
    ids = ids_of(6)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id, pad=100))
    size = len(doc(ids[0], pad=100))
    assert ids[:4] == [p.id for p in spool.batch("central", 4, BIG)]
    assert ids[:2] == [p.id for p in spool.batch("central", 10, 2 * size + 1)]
    assert ids[:1] == [p.id for p in spool.batch("central", 10, 1)]


def test_open_removes_leftovers_in_tmp(make_spool: Callable[..., Spool], tmp_path: Path) -> None:
    """Half-written temporary files from a crash are removed when the spool opens."""
    tmp = tmp_path / "spool" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / f"{uuid7(1)}.json").write_bytes(b'{"id": "trunc')
    (tmp / "state.json.tmp").write_bytes(b"")
    (tmp / "foreign.txt").write_bytes(b"hello")
    spool = make_spool()
    assert names(tmp) == []
    assert spool.stats().pending == 0


def test_settled_files_and_trash_left_by_a_crash_are_removed_in_the_background(
    make_spool: Callable[..., Spool], tmp_path: Path
) -> None:
    """Files moved to trash/ (by settle, or left there by a killed process) are removed without further calls."""
    trash = tmp_path / "spool" / "trash"
    trash.mkdir(parents=True)
    (trash / f"{uuid7(1)}.json").write_bytes(doc(uuid7(1)))
    spool = make_spool(sinks=("central",))
    ids = ids_of(REMOVE_AT_ONCE + 1, start=1_700_000_000_100)  # a batch: more than a tick's few
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", ids, {})
    for _ in range(1000):  # up to ~10 s on a very busy machine
        if not any(trash.iterdir()):
            break
        time.sleep(0.01)
    assert (names(trash), names(spool.root / "pending")) == ([], [])


def test_a_tick_s_settled_heartbeat_is_removed_at_once_not_through_the_trash(
    make_spool: Callable[..., Spool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One acked heartbeat is unlinked in the settle itself: the trash's thread is not woken for it."""
    spool = make_spool(sinks=("central",))
    pokes: list[None] = []
    monkeypatch.setattr(spool._files._reclaimer, "poke", lambda: pokes.append(None))
    (doc_id,) = ids_of(1)
    spool.put(doc_id, doc(doc_id))
    spool.settle("central", [doc_id], {})
    assert (names(tmp_path / "spool" / "trash"), names(spool.root / "pending"), pokes) == ([], [], [])


def test_ack_deletes_the_file_and_it_does_not_come_back_after_restart(make_spool: Callable[..., Spool]) -> None:
    """A settled heartbeat is deleted and a reopened spool neither holds nor offers it."""
    spool = make_spool(sinks=("central",))
    ids = ids_of(4)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", ids[:2], {})
    assert [f"{i}.json" for i in ids[2:]] == names(spool.root / "pending")
    spool.close()
    again = make_spool(sinks=("central",))
    assert ids[2:] == [p.id for p in again.batch("central", 10, BIG)]


def test_iter_pending_streams_every_heartbeat_in_order(make_spool: Callable[..., Spool]) -> None:
    """Export sees every pending heartbeat, oldest first, whatever the sinks have done."""
    spool = make_spool(sinks=("central", "loki"))
    ids = ids_of(5)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", ids, {})
    assert [(i, doc(i)) for i in ids] == [(p.id, p.raw) for p in spool.iter_pending()]


def test_put_refuses_an_id_that_is_not_a_plain_file_name(make_spool: Callable[..., Spool]) -> None:
    """An id with a path separator or dots can never escape pending/."""
    spool = make_spool()
    for bad in ("../x", "a/b", "", ".json", "a.b"):
        with pytest.raises(ValueError):
            spool.put(bad, b"{}")
    assert spool.stats().pending == 0


def test_second_writer_is_refused_while_a_reader_may_look(make_spool: Callable[..., Spool], tmp_path: Path) -> None:
    """Only one process writes a spool; status and export open it read-only beside it."""
    spool = make_spool(sinks=("central",))
    doc_id = uuid7(1)
    spool.put(doc_id, doc(doc_id))
    with pytest.raises(SpoolError) as caught:
        Spool(tmp_path / "spool", SpoolSettings()).open()
    assert caught.value.code == "locked"
    reader = Spool(tmp_path / "spool", SpoolSettings())
    reader.open(readonly=True)
    assert [doc_id] == [p.id for p in reader.iter_pending()]
    with pytest.raises(SpoolError) as caught:
        reader.put(uuid7(2), doc(uuid7(2)))
    assert caught.value.code == "readonly"
    reader.close()


def test_oldest_age_comes_from_the_uuid7_time(make_spool: Callable[..., Spool]) -> None:
    """The age of the backlog is read from the oldest id's embedded milliseconds."""
    spool = make_spool()
    spool.put(uuid7(1_700_000_000_000), doc(uuid7(1_700_000_000_000)))
    spool.put(uuid7(1_700_000_050_000), doc(uuid7(1_700_000_050_000)))
    assert spool.stats(now=1_700_000_100.0).oldest_age_s == 100.0


# -- bounds --------------------------------------------------------------------


def test_long_outage_keeps_files_under_the_bound_and_counts_drops(make_spool: Callable[..., Spool]) -> None:
    """With the receiver down, the newest max_files heartbeats stay and the rest are counted as dropped."""
    spool = make_spool(SpoolSettings(max_files=10), sinks=("central",), fsync=False)
    ids = ids_of(250)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
        assert spool.stats().pending <= 10
    assert (spool.stats().pending, spool.stats().dropped_total) == (10, 240)
    assert ids[-10:] == [p.id for p in spool.batch("central", 100, BIG)]
    assert [f"{i}.json" for i in ids[-10:]] == names(spool.root / "pending")


def test_long_outage_keeps_bytes_under_the_bound(make_spool: Callable[..., Spool]) -> None:
    """Bytes on disk never exceed max_bytes; dropping counts files, oldest first."""
    spool = make_spool(SpoolSettings(max_bytes=65_536), sinks=("central",), fsync=False)
    ids = ids_of(100)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id, pad=4000))
        on_disk = sum(p.stat().st_size for p in (spool.root / "pending").iterdir())
        assert on_disk == spool.stats().bytes <= 65_536
    kept = spool.stats().pending
    assert 100 - kept == spool.stats().dropped_total
    assert ids[-kept:] == [p.id for p in spool.iter_pending()]


def test_dropped_total_survives_a_restart(make_spool: Callable[..., Spool]) -> None:
    """The drop counter is persisted, and a smaller bound on restart drops more."""
    spool = make_spool(SpoolSettings(max_files=20), fsync=False)
    for doc_id in ids_of(25):
        spool.put(doc_id, doc(doc_id))
    spool.close()
    again = make_spool(SpoolSettings(max_files=10), fsync=False)
    assert (again.stats().pending, again.stats().dropped_total) == (10, 15)


def test_a_heartbeat_larger_than_the_byte_bound_is_dropped_not_stored(make_spool: Callable[..., Spool]) -> None:
    """One heartbeat bigger than max_bytes is counted as dropped and evicts nothing."""
    spool = make_spool(SpoolSettings(max_bytes=65_536))
    small, huge = uuid7(1), uuid7(2)
    spool.put(small, doc(small))
    spool.put(huge, doc(huge, pad=70_000))
    assert ([small], 1) == ([p.id for p in spool.iter_pending()], spool.stats().dropped_total)


# -- quarantine ----------------------------------------------------------------


def test_files_that_are_not_heartbeats_are_quarantined_and_counted(
    make_spool: Callable[..., Spool], tmp_path: Path
) -> None:
    """Garbage, truncated, empty, mismatched, non-object and foreign entries in pending/ go to quarantine/."""
    pending = tmp_path / "spool" / "pending"
    pending.mkdir(parents=True)
    good = ids_of(2)
    for doc_id in good:
        (pending / f"{doc_id}.json").write_bytes(doc(doc_id))
    bad = {
        f"{uuid7(5)}.json": b"\x00\xffgarbage",
        f"{uuid7(6)}.json": doc(uuid7(6))[:20],
        f"{uuid7(7)}.json": b"",
        f"{uuid7(8)}.json": doc(uuid7(9)),
        f"{uuid7(10)}.json": b'["a list"]',
        f"{uuid7(11)}.json": b'{"id": 11}',
        "notes.txt": b"operator was here",
        "x.json.tmp": b"{}",
    }
    for name, raw in bad.items():
        (pending / name).write_bytes(raw)
    (pending / "subdir").mkdir()
    (pending / f"{uuid7(12)}.json").symlink_to("/etc/hostname")
    spool = make_spool(sinks=("central",))
    assert good == [p.id for p in spool.batch("central", 100, BIG)]
    assert [f"{i}.json" for i in good] == names(pending)
    assert spool.stats().quarantined_total == 10
    assert sorted([*bad, "subdir", f"{uuid7(12)}.json"]) == names(tmp_path / "spool" / "quarantine")
    spool.close()
    assert make_spool(sinks=("central",)).stats().quarantined_total == 10


def test_a_damaged_state_file_is_quarantined_and_delivery_starts_over(make_spool: Callable[..., Spool]) -> None:
    """A state.json that does not parse never stops the spool; every sink is offered everything again."""
    spool = make_spool(sinks=("central", "loki"))
    ids = ids_of(3)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", ids, {})
    spool.close()
    (spool.root / "state.json").write_bytes(b'{"version": 1, "cursors": [')
    again = make_spool(sinks=("central", "loki"))
    assert ids == [p.id for p in again.batch("central", 10, BIG)]
    assert again.stats().quarantined_total == 1
    assert names(again.root / "quarantine") == ["state.json"]


# -- disk errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "err", "code"),
    [
        ("fail_write", errno.ENOSPC, "enospc"),
        ("fail_write", errno.EDQUOT, "enospc"),
        ("fail_open", errno.EACCES, "eacces"),
        ("fail_open", errno.ENOSPC, "enospc"),
        ("fail_fsync", errno.EIO, "io"),
        ("fail_fsync", errno.ENOSPC, "enospc"),
    ],
)
def test_failed_put_raises_a_coded_error_leaves_nothing_and_recovers(
    make_spool: Callable[..., Spool], where: str, err: int, code: str
) -> None:
    """A failed open, write or fsync raises SpoolError with a fixed code, stores nothing, and the next put works."""
    faults = Faults()
    spool = make_spool(sinks=("central",), ops=faults.ops)
    first, second, third = ids_of(3)
    spool.put(first, doc(first))
    setattr(faults, where, err)
    with pytest.raises(SpoolError) as caught:
        spool.put(second, doc(second))
    assert code == caught.value.code
    assert str(err) not in str(caught.value) and os.strerror(err) not in str(caught.value)
    assert [f"{first}.json"] == names(spool.root / "pending")
    assert names(spool.root / "tmp") == []
    setattr(faults, where, None)
    spool.put(third, doc(third))
    assert [first, third] == [p.id for p in spool.batch("central", 10, BIG)]


def test_a_failed_directory_fsync_fails_the_put(make_spool: Callable[..., Spool]) -> None:
    """When the rename cannot be made durable the heartbeat is withdrawn and the put fails."""
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the first fsync is the file's, the second the directory's
            raise OSError(errno.EIO, "io")
        os.fsync(fd)

    spool = make_spool(ops=FileOps(fsync=fsync))
    calls.clear()
    with pytest.raises(SpoolError) as caught:
        spool.put(uuid7(1), doc(uuid7(1)))
    assert (caught.value.code, names(spool.root / "pending")) == ("io", [])
    assert spool.stats().pending == 0


def test_a_heartbeat_stored_again_and_withdrawn_is_not_offered_from_memory(make_spool: Callable[..., Spool]) -> None:
    """An id stored a second time whose rename cannot be made durable is gone: no sink gets its first copy."""
    failing: list[bool] = []

    def fsync(fd: int) -> None:
        if failing and stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "io")
        os.fsync(fd)

    spool = make_spool(sinks=("central",), ops=FileOps(fsync=fsync))
    doc_id = uuid7(1)
    spool.put(doc_id, doc(doc_id))
    failing.append(True)
    with pytest.raises(SpoolError):
        spool.put(doc_id, doc(doc_id, pad=5))
    assert ([], []) == ([p.raw for p in spool.batch("central", 10, BIG)], names(spool.root / "pending"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; covered by injection")
def test_read_only_spool_directory_raises_eacces(make_spool: Callable[..., Spool]) -> None:
    """A spool whose tmp/ became read-only raises SpoolError('eacces') and works again once writable."""
    spool = make_spool()
    tmp = spool.root / "tmp"
    tmp.chmod(0o500)
    try:
        with pytest.raises(SpoolError) as caught:
            spool.put(uuid7(1), doc(uuid7(1)))
        assert caught.value.code == "eacces"
    finally:
        tmp.chmod(0o700)
    spool.put(uuid7(2), doc(uuid7(2)))
    assert spool.stats().pending == 1


def test_settle_on_a_full_disk_still_frees_space_and_saves_later(make_spool: Callable[..., Spool]) -> None:
    """When state.json cannot be written the acked files are still deleted, and the cursor is saved on the next call."""
    faults = Faults()
    spool = make_spool(sinks=("central", "loki"), ops=faults.ops)
    ids = ids_of(4)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("loki", ids[:2], {})
    faults.fail_open = errno.ENOSPC
    spool.settle("central", ids, {})
    assert [f"{i}.json" for i in ids[2:]] == names(spool.root / "pending")
    assert [p.id for p in spool.batch("central", 10, BIG)] == []
    faults.fail_open = None
    spool.settle("loki", [ids[2]], {})
    spool.close()
    again = make_spool(sinks=("central", "loki"))
    assert ([], [ids[3]]) == (
        [p.id for p in again.batch("central", 10, BIG)],
        [p.id for p in again.batch("loki", 10, BIG)],
    )


# -- sinks and cursors ---------------------------------------------------------


def test_two_sinks_keep_independent_cursors(make_spool: Callable[..., Spool]) -> None:
    """One sink being down neither blocks the other nor makes it send twice; files go when both are done."""
    spool = make_spool(sinks=("central", "loki"))
    ids = ids_of(6)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", [p.id for p in spool.batch("central", 3, BIG)], {})
    spool.settle("central", [p.id for p in spool.batch("central", 3, BIG)], {})
    assert spool.batch("central", 10, BIG) == []
    assert ids == [p.id for p in spool.batch("loki", 10, BIG)]
    assert spool.stats().pending == 6
    spool.settle("loki", ids[:4], {})
    assert [f"{i}.json" for i in ids[4:]] == names(spool.root / "pending")
    more = uuid7(1_800_000_000_000)
    spool.put(more, doc(more))
    assert [more] == [p.id for p in spool.batch("central", 10, BIG)]
    assert [*ids[4:], more] == [p.id for p in spool.batch("loki", 10, BIG)]


def test_an_earlier_heartbeat_kept_after_a_later_ack_is_offered_again(make_spool: Callable[..., Spool]) -> None:
    """A heartbeat kept while later ones were acked (half a split failed) is offered again, not skipped."""
    spool = make_spool(sinks=("central",))
    ids = ids_of(6)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", [ids[0], ids[3], ids[4]], {})
    assert [ids[1], ids[2], ids[5]] == [p.id for p in spool.batch("central", 10, BIG)]
    spool.close()
    again = make_spool(sinks=("central",))
    assert [ids[1], ids[2], ids[5]] == [p.id for p in again.batch("central", 10, BIG)]


def test_restart_keeps_cursors_and_counters(make_spool: Callable[..., Spool]) -> None:
    """Cursors of both sinks and all three counters are the same after a reopen."""
    spool = make_spool(SpoolSettings(max_files=10), sinks=("central", "loki"))
    ids = ids_of(12)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.close()
    spool = make_spool(SpoolSettings(max_files=10), sinks=("central", "loki"))  # nothing in memory: files are read
    (spool.root / "pending" / f"{ids[5]}.json").write_bytes(b"garbage")
    spool.settle("central", [ids[2], ids[4]], {ids[3]: "schema"})
    spool.settle("loki", [ids[6]], {})
    before = (
        [p.id for p in spool.batch("central", 20, BIG)],
        [p.id for p in spool.batch("loki", 20, BIG)],
        spool.stats(now=0),
    )
    spool.close()
    again = make_spool(SpoolSettings(max_files=10), sinks=("central", "loki"))
    after = (
        [p.id for p in again.batch("central", 20, BIG)],
        [p.id for p in again.batch("loki", 20, BIG)],
        again.stats(now=0),
    )
    assert before == after
    assert (after[2].dropped_total, after[2].quarantined_total, after[2].rejected_total) == (2, 1, 1)


def test_rejected_heartbeats_are_set_aside_with_a_fixed_reason(make_spool: Callable[..., Spool]) -> None:
    """A rejection copies the heartbeat to rejected/ with a sidecar naming the sink and a code, never free text."""
    spool = make_spool(sinks=("central",))
    ids = ids_of(3)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", [ids[0]], {ids[1]: "http_422", ids[2]: "Traceback: KeyError 'x' at 10.0.0.1"})
    rejected = spool.root / "rejected"
    assert names(spool.root / "pending") == []
    assert doc(ids[1]) == (rejected / f"{ids[1]}.json").read_bytes()
    assert json.loads((rejected / f"{ids[1]}.reason.json").read_bytes()) == {"sink": "central", "reason": "http_422"}
    assert json.loads((rejected / f"{ids[2]}.reason.json").read_bytes()) == {"sink": "central", "reason": "invalid"}
    assert spool.stats().rejected_total == 2


def test_without_sinks_nothing_is_deleted_but_by_the_bounds(make_spool: Callable[..., Spool]) -> None:
    """With telemetry off there is no cursor to settle, and the spool only ever drops by its bounds."""
    spool = make_spool(SpoolSettings(max_files=10))
    for doc_id in ids_of(12):
        spool.put(doc_id, doc(doc_id))
    with pytest.raises(ValueError):
        spool.settle("central", ids_of(12), {})
    with pytest.raises(ValueError):
        spool.batch("central", 10, BIG)
    assert (spool.stats().pending, spool.stats().dropped_total) == (10, 2)


def test_a_sink_switched_on_later_gets_the_whole_backlog(make_spool: Callable[..., Spool]) -> None:
    """A sink added after heartbeats were spooled (and acked by another) is offered every file still there."""
    spool = make_spool(sinks=("central",))
    ids = ids_of(4)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", ids[:2], {})
    spool.close()
    again = make_spool(sinks=("central", "loki"))
    assert (ids[2:], ids[2:]) == (
        [p.id for p in again.batch("central", 10, BIG)],
        [p.id for p in again.batch("loki", 10, BIG)],
    )


def test_a_process_without_sinks_keeps_the_daemons_cursors_and_moves_them_for_old_ids(
    make_spool: Callable[..., Spool],
) -> None:
    """``agent enqueue`` (no active sink) neither loses the sinks' cursors nor lets an older id pass for done."""
    spool = make_spool(SpoolSettings(max_files=10), sinks=("central", "loki"))
    ids = ids_of(4, start=1_700_000_000_010)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", ids, {})
    spool.settle("loki", ids[:3], {})
    spool.close()
    enqueue = make_spool(SpoolSettings(max_files=10))
    late = ids_of(10, start=1_700_000_000_000)
    for doc_id in late:  # the last put drops the oldest, which rewrites state.json
        enqueue.put(doc_id, doc(doc_id))
    enqueue.close()
    daemon = make_spool(SpoolSettings(max_files=10), sinks=("central", "loki"))
    assert (late[1:10], [*late[1:10], ids[3]]) == (
        [p.id for p in daemon.batch("central", 20, BIG)],
        [p.id for p in daemon.batch("loki", 20, BIG)],
    )


def test_a_late_heartbeat_older_than_the_cursor_is_still_delivered(make_spool: Callable[..., Spool]) -> None:
    """A heartbeat enqueued with an id below what a sink has passed is offered to it, also after a restart."""
    spool = make_spool(sinks=("central", "loki"))
    ids = ids_of(5, start=1_700_000_000_010)
    for doc_id in ids:
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", ids, {})
    late = uuid7(1_700_000_000_000)
    spool.put(late, doc(late))
    spool.close()
    again = make_spool(sinks=("central", "loki"))
    assert [late] == [p.id for p in again.batch("central", 10, BIG)]
    assert [late, *ids] == [p.id for p in again.batch("loki", 10, BIG)]


def test_a_heartbeat_spooled_again_after_delivery_is_delivered_again_after_restart(
    make_spool: Callable[..., Spool],
) -> None:
    """An id that was acked by both sinks, deleted and then spooled again is not taken for done after a restart."""
    spool = make_spool(sinks=("central", "loki"))
    first, again_id = ids_of(2)
    for doc_id in (first, again_id):
        spool.put(doc_id, doc(doc_id))
    spool.settle("central", [again_id], {})
    spool.settle("loki", [again_id], {})
    spool.put(again_id, doc(again_id))
    spool.close()
    again = make_spool(sinks=("central", "loki"))
    assert [first, again_id] == [p.id for p in again.batch("central", 10, BIG)]


# -- a model of the whole interface ----------------------------------------------

POOL = [f"hb{i:03d}" for i in range(40)]
SINKS = ("a", "b")


class SpoolMachine(RuleBasedStateMachine):
    """Random puts, batches, settlements and restarts agree with a dictionary model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="spool-model-")
        # Small bounds, below what the settings model allows, so that drops happen often.
        self.settings = SpoolSettings.model_construct(max_files=6, max_bytes=700)
        self.spool = self._open()
        self.live: dict[str, bytes] = {}
        self.done: dict[str, set[str]] = {s: set() for s in SINKS}
        self.dropped = 0
        self.rejected = 0

    def _open(self) -> Spool:
        spool = Spool(Path(self.dir) / "spool", self.settings, sinks=SINKS, fsync=False)
        spool.open()
        return spool

    def _forget(self, doc_id: str) -> None:
        del self.live[doc_id]
        for done in self.done.values():
            done.discard(doc_id)

    @initialize()
    def start(self) -> None:
        pass

    @rule(doc_id=st.sampled_from(POOL), pad=st.integers(0, 200))
    def put(self, doc_id: str, pad: int) -> None:
        raw = doc(doc_id, pad)
        self.spool.put(doc_id, raw)
        if len(raw) > self.settings.max_bytes:
            self.dropped += 1
            return
        self.live[doc_id] = raw
        while len(self.live) > self.settings.max_files or sum(map(len, self.live.values())) > self.settings.max_bytes:
            self._forget(min(self.live))
            self.dropped += 1

    @rule(sink=st.sampled_from(SINKS), count=st.integers(1, 8))
    def batch(self, sink: str, count: int) -> None:
        expected = [(i, self.live[i]) for i in sorted(self.live) if i not in self.done[sink]][:count]
        assert expected == [(p.id, p.raw) for p in self.spool.batch(sink, count, BIG)]

    @rule(sink=st.sampled_from(SINKS), data=st.data())
    def settle(self, sink: str, data: st.DataObject) -> None:
        candidates = [*sorted(self.live), "hb999"]
        acked = data.draw(st.lists(st.sampled_from(candidates), unique=True, max_size=6))
        refused = data.draw(st.lists(st.sampled_from(candidates), unique=True, max_size=2))
        self.spool.settle(sink, acked, dict.fromkeys(refused, "schema"))
        for doc_id in {*acked, *refused} & set(self.live):
            self.done[sink].add(doc_id)
        self.rejected += len(set(refused) & set(self.live))
        for doc_id in [i for i in self.live if all(i in d for d in self.done.values())]:
            self._forget(doc_id)

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = self._open()

    @precondition(lambda self: bool(self.live))
    @rule()
    def export(self) -> None:
        assert sorted(self.live.items()) == [(p.id, p.raw) for p in self.spool.iter_pending()]

    @invariant()
    def agrees(self) -> None:
        stats = self.spool.stats()
        expected = (len(self.live), sum(map(len, self.live.values())), self.dropped, self.rejected, 0)
        actual = (stats.pending, stats.bytes, stats.dropped_total, stats.rejected_total, stats.quarantined_total)
        assert expected == actual
        assert sorted(f"{i}.json" for i in self.live) == names(Path(self.dir) / "spool" / "pending")

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)


SpoolMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, suppress_health_check=[HealthCheck.too_slow]
)
TestSpoolModel = SpoolMachine.TestCase
