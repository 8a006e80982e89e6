"""The sent ledger on disk: its line format, crash safety, bounds and destination masking."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.file_thread import FileThread
from agent.ledger import BODIES_DIR, Ledger, body_path, read_ledger, segments
from agent.ledger_hook import LedgerWriter
from agent.ledger_record import RequestIds, SentRecord, destination, encode_line, sha256_hex
from agent.sample import Pending
from tests.conftest import REPO


def record(index: int, when: float = 1_800_000_000.0, sink: str = "central") -> SentRecord:
    """A record whose seq range is ``index`` itself, so order and gaps show."""
    body = f"body {index}".encode()
    return SentRecord(
        time=when,
        sink=sink,
        method="POST",
        destination="https://central.example:443/ingest/v1/heartbeats",
        bytes=len(body),
        sha256=sha256_hex(body),
        status=200,
        ids=(f"id-{index}",),
        seq=(index, index),
    )


def test_a_record_reads_back_as_written(tmp_path: Path) -> None:
    """Every field survives the trip through a ledger line."""
    ledger = Ledger(tmp_path, max_age=86_400, max_bytes=1 << 20)
    written = [record(1), SentRecord(1_800_000_001.5, "kuma", "GET", "http://k:80/", 0, sha256_hex(b""), "timeout")]
    ledger.append([(item, None) for item in written])
    ledger.close()

    assert written == [
        SentRecord(**{**vars(item), "time": round(item.time, 3)}) for item in read_ledger(tmp_path).records
    ]


def test_a_torn_or_corrupt_line_is_skipped_and_spoils_nothing(tmp_path: Path) -> None:
    """A line cut short or with a flipped byte is counted as damaged; the records around it read."""
    ledger = Ledger(tmp_path, max_age=86_400, max_bytes=1 << 20)
    ledger.append([(record(1), None), (record(2), None)])
    ledger.close()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[data.index(b"id-2") + 3] ^= 0x01  # the second record no longer matches its CRC
    segment.write_bytes(bytes(data) + encode_line(record(3))[:-20])  # and a third, torn mid-write

    ledger = Ledger(tmp_path, max_age=86_400, max_bytes=1 << 20)
    ledger.append([(record(4), None)])
    ledger.close()
    scan = read_ledger(tmp_path)

    assert ([(1, 1), (4, 4)], 2) == ([item.seq for item in scan.records], scan.damaged)


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from agent.ledger import Ledger
    from agent.ledger_record import SentRecord
    ledger = Ledger(__import__("pathlib").Path(sys.argv[1]), max_age=86400, max_bytes=1 << 30, fsync=False)
    index = 0
    while True:
        ledger.append([(SentRecord(1.8e9 + index, "central", "POST", "https://c:443/", 10, "0" * 64, 200,
                                    ids=("x" * 4000,), seq=(index, index)), None)])
        index += 1
        if index == 200:
            print("ready", flush=True)
    """
)


def test_kill_9_in_the_middle_of_appending_leaves_every_earlier_record_readable(tmp_path: Path) -> None:
    """A writer killed while appending in a loop leaves a ledger whose records are a gapless prefix."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        assert b"ready\n" == proc.stdout.readline()
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    scan = read_ledger(tmp_path)
    seqs = [item.seq[0] for item in scan.records if item.seq]

    assert list(range(len(seqs))) == seqs
    assert len(seqs) >= 200
    assert scan.damaged <= 1

    ledger = Ledger(tmp_path, max_age=86_400, max_bytes=1 << 30)
    ledger.append([(record(10**6), None)])
    ledger.close()
    assert (10**6, 10**6) == read_ledger(tmp_path).records[-1].seq


def test_the_size_bound_holds_after_every_append(tmp_path: Path) -> None:
    """Segments together never exceed max_bytes; the newest records are the ones kept."""
    ledger = Ledger(tmp_path, max_age=86_400 * 30, max_bytes=65_536, fsync=False)
    sizes = []
    for index in range(3000):
        ledger.append([(record(index), None)])
        sizes.append(sum(path.stat().st_size for path in segments(tmp_path)))
    ledger.close()
    kept = [item.seq[0] for item in read_ledger(tmp_path).records if item.seq]

    assert max(sizes) <= 65_536
    assert list(range(3000 - len(kept), 3000)) == kept


def test_the_age_bound_holds(tmp_path: Path) -> None:
    """No record older than max_age and an eighth survives a later append; the recent ones all do."""
    now = [1_800_000_000.0]
    max_age = 800.0
    ledger = Ledger(tmp_path, max_age=max_age, max_bytes=1 << 30, fsync=False, clock=lambda: now[0])
    for index in range(1000):
        now[0] = 1_800_000_000.0 + 10 * index
        ledger.append([(record(index, when=now[0]), None)])
    ledger.close()
    times = [item.time for item in read_ledger(tmp_path).records]

    assert now[0] - min(times) <= max_age * (1 + 1 / 8)
    assert [t for t in times if now[0] - t <= max_age] == [1_800_000_000.0 + 10 * i for i in range(1000 - 81, 1000)]


def test_kept_bodies_stay_within_their_bound(tmp_path: Path) -> None:
    """Bodies are stored by digest, the oldest deleted past bodies_max_bytes, and records say which were kept."""
    ledger = Ledger(tmp_path, max_age=86_400, max_bytes=1 << 20, keep_bodies=True, bodies_max_bytes=65_536)
    bodies = [os.urandom(2000) for _ in range(100)]
    for body in bodies:
        item = SentRecord(time.time(), "central", "POST", "https://c:443/", len(body), sha256_hex(body), 200)
        ledger.append([(item, body)])
    ledger.close()
    stored = list((tmp_path / BODIES_DIR).iterdir())

    assert sum(path.stat().st_size for path in stored) <= 65_536
    assert bodies[-1] == body_path(tmp_path, sha256_hex(bodies[-1])).read_bytes()
    assert all(item.kept for item in read_ledger(tmp_path).records)


def test_the_writer_thread_appends_what_was_submitted(tmp_path: Path) -> None:
    """Records submitted from any thread are on disk, in order, once the writer is closed."""
    writer = LedgerWriter(Ledger(tmp_path, max_age=86_400, max_bytes=1 << 20))
    for index in range(50):
        writer.submit(record(index), None)
    writer.close()

    assert list(range(50)) == [item.seq[0] for item in read_ledger(tmp_path).records if item.seq]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://user:pa55word@central.example/ingest/v1/heartbeats?token=abc#x",
            "https://central.example:443/ingest/v1/heartbeats",
        ),
        ("http://kuma.internal:3001/api/push/S3CRET?status=up&msg=OK", "http://kuma.internal:3001/api/push/********"),
        (
            "http://[fd00::1]:9091/metrics/job/pop_agent/pop/ams1",
            "http://[fd00::1]:9091/metrics/job/pop_agent/pop/ams1",
        ),
        ("HTTP://Loki.Internal/loki/api/v1/push", "http://loki.internal:80/loki/api/v1/push"),
    ],
)
def test_destination_keeps_where_and_drops_credentials(url: str, expected: str) -> None:
    """Scheme, host, port and path remain; userinfo, query, fragment and the Kuma token do not."""
    assert expected == destination(url)


def test_destination_masks_the_ntfy_topic() -> None:
    """An ntfy topic is all a reader needs to subscribe, so its name is masked."""
    assert "https://ntfy.sh:443/********" == destination("https://ntfy.sh/pop-alerts-x7", mask_last_segment=True)


def test_request_ids_come_from_the_spooled_bytes() -> None:
    """Ids in order and the seq range, read without parsing each document."""
    items = [Pending(f"id-{seq}", b'{"schema":"pop-heartbeat/1","seq":%d,"x":1}' % seq) for seq in (7, 5, 9)]

    assert RequestIds(("id-7", "id-5", "id-9"), (5, 9)) == RequestIds.of(items)


def test_a_record_is_on_disk_before_the_writer_syncs_or_closes(tmp_path: Path) -> None:
    """The writer writes at once and only defers the sync, so a killed process loses nothing it was handed."""
    writer = LedgerWriter(Ledger(tmp_path, max_age=86_400, max_bytes=1 << 20), sync_interval=60)
    try:
        writer.submit(record(1), None)
        deadline = time.monotonic() + 10
        while not read_ledger(tmp_path).records and time.monotonic() < deadline:
            time.sleep(0.01)
        found = [item.seq for item in read_ledger(tmp_path).records]
    finally:
        writer.close()

    assert [(1, 1)] == found


async def test_on_the_loop_a_record_rides_the_next_file_trip_or_gets_one_within_sync_interval(tmp_path: Path) -> None:
    """The daemon's file thread writes the records: in the trip after a send, else in one of their own, soon.

    No thread of the writer's own wakes for a record: on an idle POP that wake-up cost more than the write.
    """
    threads_before = {thread.ident for thread in threading.enumerate()}
    files = FileThread()
    writer = LedgerWriter(Ledger(tmp_path, max_age=86_400, max_bytes=1 << 20), sync_interval=0.3, files=files)
    try:
        writer.submit(record(1), None)
        assert [] == read_ledger(tmp_path).records  # taken, not yet written
        await files.call(writer.write_pending)  # the trip a send's settlement makes
        writer.written()
        assert [(1, 1)] == [item.seq for item in read_ledger(tmp_path).records]

        writer.submit(record(2), None)  # an alert hook's request: no trip follows
        deadline = time.monotonic() + 30
        while len(read_ledger(tmp_path).records) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [(1, 1), (2, 2)] == [item.seq for item in read_ledger(tmp_path).records]
        started = {thread.name for thread in threading.enumerate() if thread.ident not in threads_before}
        assert all(name.startswith("spool") for name in started), started
    finally:
        await writer.aclose()
        files.shutdown()


async def test_closing_with_the_file_thread_busy_past_the_grace_still_writes_the_records(tmp_path: Path) -> None:
    """The shutdown waits ``grace`` s for the ledger; the write queued behind a slow disk still happens after."""
    files = FileThread()
    writer = LedgerWriter(Ledger(tmp_path, max_age=86_400, max_bytes=1 << 20), files=files)
    gate = threading.Event()
    writer.submit(record(1), None)
    files.submit(gate.wait)  # a slow fsync ahead of the ledger's write
    try:
        await writer.aclose(grace=0.05)
    finally:
        gate.set()
        files.shutdown()  # what the runner does next: the queue is worked off
    assert ([(1, 1)], 0) == ([item.seq for item in read_ledger(tmp_path).records], writer.lost_total)


def test_a_ledger_that_cannot_be_written_counts_its_losses_and_raises_nothing(tmp_path: Path) -> None:
    """A ledger path taken by a file: records are counted as lost, the writer's caller never sees an error."""
    blocked = tmp_path / "ledger"
    blocked.write_text("not a directory")
    writer = LedgerWriter(Ledger(blocked, max_age=86_400, max_bytes=1 << 20))
    writer.submit(record(1), None)
    writer.submit(record(2), None)
    writer.close()

    assert 2 == writer.lost_total


@settings(max_examples=60)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_a_segment_cut_anywhere_reads_as_a_prefix_of_its_records(cut: int) -> None:
    """Truncating a segment at any byte leaves exactly the records wholly before the cut, and at most one damaged."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ledger = Ledger(directory, max_age=86_400, max_bytes=1 << 20)
        ledger.append([(record(index), None) for index in range(40)])
        ledger.close()
        (segment,) = segments(directory)
        whole = segment.read_bytes()
        segment.write_bytes(whole[:cut])
        scan = read_ledger(directory)
        # A line is whole once its last byte before the newline is in: the CRC then matches.
        ends = [index for index, byte in enumerate(whole) if byte == ord("\n")]
        kept = sum(1 for end in ends if end <= cut)
        torn = 0 if cut in (0, *ends, *(end + 1 for end in ends)) or cut >= len(whole) else 1

        assert list(range(kept)) == [item.seq[0] for item in scan.records if item.seq]
        assert torn == scan.damaged
