"""Tests for the disk collector: mount selection, exact figures, hung mounts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import CollectorError
from agent.heartbeat import MOUNT
from agent.plugin_api import NoSettings, PluginContext
from agent.privacy import find_sensitive
from agent.sample import Sample
from collectors.base import Collector
from collectors.disk import DiskCollector, representable, select_mounts
from tests.collectors.declared import assert_declared

FIXTURES = Path(__file__).parent.parent / "fixtures" / "proc"
REPO = Path(__file__).parents[2]
# Long enough that a thread which is not stuck always beats it; nothing asserts a duration.
BOUND = 0.5


class Part(NamedTuple):
    device: str
    mountpoint: str
    fstype: str
    opts: str = "rw"


@dataclass(frozen=True)
class Vfs:
    f_frsize: int
    f_blocks: int
    f_bfree: int
    f_bavail: int
    f_files: int
    f_ffree: int


def read_mounts(path: Path) -> list[Part]:
    """Parse a /proc/self/mounts file as psutil does, octal escapes included."""

    def unescape(field: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

    return [
        Part(unescape(device), unescape(mountpoint), fstype, opts)
        for device, mountpoint, fstype, opts, *_ in (line.split() for line in path.read_text().splitlines())
    ]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakePartitions:
    """A mount table with psutil's ``disk_partitions`` signature."""

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = list(parts)
        self.asked_all: list[bool] = []

    def disk_partitions(self, all: bool) -> list[Part]:
        self.asked_all.append(all)
        return self.parts


class FakeStatvfs:
    """``os.statvfs`` over a table; some paths block until released, some fail."""

    def __init__(self, table: dict[str, Vfs | OSError], hang: Sequence[str] = ()) -> None:
        self.table = table
        self.release = {path: threading.Event() for path in hang}
        self.calls: Counter[str] = Counter()
        self.threads: dict[str, list[threading.Thread]] = {}  # path -> the thread of each call

    def __call__(self, path: str) -> Vfs:
        self.calls[path] += 1
        self.threads.setdefault(path, []).append(threading.current_thread())
        if path in self.release:
            self.release[path].wait()
        result = self.table[path]
        if isinstance(result, OSError):
            raise result
        return result

    def release_all(self) -> None:
        for event in self.release.values():
            event.set()


@pytest.fixture
def statvfs_factory() -> Iterator[type[FakeStatvfs]]:
    """Build fake statvfs functions whose blocked threads are all released at teardown."""
    made: list[FakeStatvfs] = []

    class Tracked(FakeStatvfs):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    yield Tracked
    for fake in made:
        fake.release_all()


def simple() -> Vfs:
    return Vfs(f_frsize=4096, f_blocks=100, f_bfree=50, f_bavail=50, f_files=10, f_ffree=5)


def by_mount(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for sample in samples:
        labels = dict(sample.labels)
        table.setdefault(labels.get("mount", ""), {})[sample.name] = sample.value
    return table


def test_host_mount_table_keeps_real_mounts_once() -> None:
    """A host table with snaps, docker, NFS and pseudo file systems yields each real disk once."""
    expected = (["/", "/boot/efi", "/mnt/backup", "/var/lib/vaults"], 2)  # "/srv/<ip>" and "USB Stick"
    assert expected == select_mounts(read_mounts(FIXTURES / "mounts"))


def test_container_mount_table_keeps_overlay_root_and_volumes() -> None:
    """In a container the overlay root is kept and the runtime's bind-mounted files are not."""
    expected = (["/", "/var/lib/vaults"], 0)
    assert expected == select_mounts(read_mounts(FIXTURES / "mounts-container"))


def test_this_machine_mount_table_is_read_by_psutil() -> None:
    """The real mount table, read through psutil, always yields the root mount."""
    mounts, _ = select_mounts(psutil.disk_partitions(all=True))
    assert "/" in mounts


def test_the_last_mount_on_a_mount_point_decides() -> None:
    """A tmpfs mounted over a real disk hides it; a disk mounted over a tmpfs shows."""
    parts = [
        Part("/dev/sda1", "/", "ext4"),
        Part("/dev/sdb1", "/var/cache", "ext4"),
        Part("tmpfs", "/var/cache", "tmpfs"),
        Part("tmpfs", "/srv/data", "tmpfs"),
        Part("/dev/sdc1", "/srv/data", "xfs"),
    ]
    expected = (["/", "/srv/data"], 0)
    assert expected == select_mounts(parts)


def test_bind_mounts_report_the_first_path_of_a_device() -> None:
    """Several mounts of one device are reported once, under the first labelable path."""
    parts = [
        Part("/dev/sdb1", "/media/Data Disk", "ext4"),
        Part("/dev/sdb1", "/srv/data", "ext4"),
        Part("/dev/sdb1", "/home/data", "ext4"),
        Part("none", "/a", "zfs"),
        Part("none", "/b", "zfs"),
    ]
    expected = (["/a", "/b", "/srv/data"], 0)
    assert expected == select_mounts(parts)


@pytest.mark.parametrize(
    "path",
    [
        "/srv/10.0.0.7",
        "/mnt/ip-10-0-0-7",
        "/mnt/0x7f.1.1.1",
        "/var/lib/0123456789abcdef0123456789abcdef",
        "/srv/AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        "/media/USB Stick",
        "/mnt/nfs:share",
        "/mnt/" + "a" * 65,
        "/mnt/10_0_0_7",
        "/srv/nfs_10_0_0_7_export",
        "/exports/10/0/0/7",
        "/mnt/10.0-0_7",
        "/mnt/fe80_0_0_0_0_0_0_1",
        "/mnt/2001-db8--7",
        "/srv/2001_db8__7/data",
        "/mnt/2001-db8-0-0-0-0-0-1.ipv6-literal.net",
        "/mnt/glpat-abcdefghij0123456789",
        "/mnt/hf_abcdefghijklmnopqrstuvwxyzABCDEF",
        "/mnt/",
        "relative",
    ],
)
def test_paths_unfit_for_a_label_are_not_representable(path: str) -> None:
    """Paths with other characters, address-like or token-like parts are not representable."""
    assert representable(path) is False


def test_ordinary_paths_are_representable() -> None:
    """Ordinary mount points, dates and version numbers included, are representable."""
    paths = ["/", "/boot/efi", "/var/lib/vaults", "/mnt/backup-2024-01-02", "/media/Backup-Drive2/Archive2024"]
    assert paths == [path for path in paths if representable(path)]


_PATH_CHARS = st.sampled_from([*"abcXYZ0189._-/ :@%x", "\\", "é", "\n"])
_SEGMENTS = st.one_of(
    st.text(st.sampled_from(list("abcdefABCDEF0123456789.-xX_")), min_size=1, max_size=40),
    st.from_regex(r"[A-Za-z0-9_-]{28,40}", fullmatch=True),
    st.text(_PATH_CHARS, min_size=1, max_size=12),
)


@given(st.lists(_SEGMENTS, max_size=6).map(lambda segments: "/" + "/".join(segments)))
def test_representable_paths_pass_the_heartbeat_pattern_and_the_tripwire(path: str) -> None:
    """Every path accepted as a label matches the heartbeat's pattern and trips no privacy detector."""
    label_ok = re.fullmatch(MOUNT, path) is not None and find_sensitive(path) is None
    assert label_ok or not representable(path)


@given(
    st.lists(
        st.tuples(st.text(_PATH_CHARS, max_size=12), st.sampled_from(["ext4", "xfs", "nfs4", "tmpfs", "proc"])),
        max_size=12,
    )
)
def test_every_real_mount_is_reported_or_counted(table: list[tuple[str, str]]) -> None:
    """Each distinct real mount point is either reported, once and labelable, or counted as skipped."""
    parts = [Part(f"/dev/sd{index}", "/" + name, fstype) for index, (name, fstype) in enumerate(table)]
    visible = {part.mountpoint: part.fstype for part in parts}
    real = [path for path, fstype in visible.items() if fstype not in ("tmpfs", "proc") or path == "/"]
    mounts, skipped = select_mounts(parts)
    assert len(real) == len(mounts) + skipped
    assert sorted(set(mounts)) == mounts
    assert mounts == [path for path in mounts if representable(path)]


async def test_figures_are_computed_like_df(statvfs_factory: type[FakeStatvfs]) -> None:
    """Used share counts reserved blocks as used; free is what unprivileged users may use."""
    statvfs = statvfs_factory(
        {
            "/": Vfs(f_frsize=4096, f_blocks=1000, f_bfree=300, f_bavail=250, f_files=100, f_ffree=40),
            "/srv/btrfs": Vfs(f_frsize=512, f_blocks=0, f_bfree=0, f_bavail=0, f_files=0, f_ffree=0),
        }
    )
    source = FakePartitions([Part("/dev/sda1", "/", "ext4"), Part("/dev/sdb1", "/srv/btrfs", "btrfs")])
    collector = DiskCollector(source=source, statvfs=statvfs, mount_timeout=BOUND)
    samples = await collector.collect()
    expected = [
        Sample.of("disk_used_percent", 73.68, mount="/"),  # 700 / 950
        Sample.of("disk_total_bytes", 4_096_000, mount="/"),
        Sample.of("disk_free_bytes", 1_024_000, mount="/"),
        Sample.of("disk_inodes_used_percent", 60.0, mount="/"),
        Sample.of("disk_used_percent", 0.0, mount="/srv/btrfs"),
        Sample.of("disk_total_bytes", 0, mount="/srv/btrfs"),
        Sample.of("disk_free_bytes", 0, mount="/srv/btrfs"),
        Sample("disk_mounts_skipped", 0),
    ]
    assert (expected, [True]) == (list(samples), source.asked_all)
    assert_declared(collector, samples)


async def test_unreadable_and_unlabelable_mounts_are_counted(statvfs_factory: type[FakeStatvfs]) -> None:
    """A mount whose statvfs fails and one whose path cannot be a label are skipped and counted."""
    statvfs = statvfs_factory({"/": simple(), "/mnt/stale": OSError(116, "Stale file handle")})
    source = FakePartitions(
        [Part("/dev/sda1", "/", "ext4"), Part("srv:/x", "/mnt/stale", "nfs4"), Part("/dev/sdb1", "/mnt/a b", "ext4")]
    )
    samples = await DiskCollector(source=source, statvfs=statvfs, mount_timeout=BOUND).collect()
    expected = (["", "/"], 2, 0)
    table = by_mount(samples)
    assert expected == (sorted(table), table[""]["disk_mounts_skipped"], statvfs.calls["/mnt/a b"])


async def test_an_unreadable_mount_table_is_a_collector_error() -> None:
    """When the mount table cannot be read the collector fails with a fixed code."""

    class Broken:
        def disk_partitions(self, all: bool) -> list[Part]:
            raise PermissionError(13, "Permission denied")

    with pytest.raises(CollectorError) as caught:
        await DiskCollector(source=Broken()).collect()
    expected = "mounts_unreadable"
    assert expected == caught.value.code


async def test_a_hung_mount_is_skipped_and_the_others_reported(statvfs_factory: type[FakeStatvfs]) -> None:
    """A statvfs that never returns costs one bound; the other mounts are reported and it is counted."""
    statvfs = statvfs_factory({"/": simple(), "/mnt/dead": simple(), "/srv/data": simple()}, hang=["/mnt/dead"])
    source = FakePartitions(
        [Part("/dev/sda1", "/", "ext4"), Part("nfs:/x", "/mnt/dead", "nfs4"), Part("/dev/sdb1", "/srv/data", "xfs")]
    )
    collector = DiskCollector(source=source, statvfs=statvfs, mount_timeout=BOUND)
    table = by_mount(await collector.collect())
    expected = (["", "/", "/srv/data"], 1, frozenset({"/mnt/dead"}))
    assert expected == (sorted(table), table[""]["disk_mounts_skipped"], collector.hung)


async def test_a_hung_mount_gets_no_new_thread_until_its_old_one_returns(
    statvfs_factory: type[FakeStatvfs],
) -> None:
    """Ticks while a mount is hung start no statvfs on it; once it returns it is measured again."""
    statvfs = statvfs_factory({"/": simple(), "/mnt/dead": simple()}, hang=["/mnt/dead"])
    source = FakePartitions([Part("/dev/sda1", "/", "ext4"), Part("nfs:/x", "/mnt/dead", "nfs4")])
    collector = DiskCollector(source=source, statvfs=statvfs, mount_timeout=BOUND)
    skipped = []
    for _ in range(3):
        skipped.append(by_mount(await collector.collect())[""]["disk_mounts_skipped"])
    expected = ([1, 1, 1], 1, 3, frozenset({"/mnt/dead"}))
    assert expected == (skipped, statvfs.calls["/mnt/dead"], statvfs.calls["/"], collector.hung)

    statvfs.release_all()
    assert collector.join() is True
    table = by_mount(await collector.collect())
    after = (["", "/", "/mnt/dead"], 0, 2, frozenset[str]())
    assert after == (sorted(table), table[""]["disk_mounts_skipped"], statvfs.calls["/mnt/dead"], collector.hung)


async def test_a_stuck_thread_is_replaced_not_waited_for(statvfs_factory: type[FakeStatvfs]) -> None:
    """After a call hangs, the other mounts of every tick are served by one other thread, reused."""
    statvfs = statvfs_factory({"/": simple(), "/mnt/dead": simple(), "/srv/data": simple()}, hang=["/mnt/dead"])
    source = FakePartitions(
        [Part("/dev/sda1", "/", "ext4"), Part("nfs:/x", "/mnt/dead", "nfs4"), Part("/dev/sdb1", "/srv/data", "xfs")]
    )
    collector = DiskCollector(source=source, statvfs=statvfs, mount_timeout=1.0)
    reported = [sorted(by_mount(await collector.collect())) for _ in range(4)]
    stuck = statvfs.threads["/mnt/dead"]
    later = set(statvfs.threads["/"][1:] + statvfs.threads["/srv/data"][1:])
    expected = ([["", "/", "/srv/data"]] * 4, 1, 1, False)
    assert expected == (reported, len(stuck), len(later), stuck[0] in later)


async def test_healthy_mounts_reuse_one_thread_that_leaves_at_close(statvfs_factory: type[FakeStatvfs]) -> None:
    """Ticks without a hang stat every mount in one long-lived thread, which ends when the collector closes."""
    statvfs = statvfs_factory({"/": simple(), "/srv/data": simple()})
    source = FakePartitions([Part("/dev/sda1", "/", "ext4"), Part("/dev/sdb1", "/srv/data", "xfs")])
    # A generous bound: a healthy call never stalls long enough to bring in a second thread.
    collector = DiskCollector(source=source, statvfs=statvfs, mount_timeout=5.0)
    for _ in range(5):
        await collector.collect()
    threads = set(statvfs.threads["/"] + statvfs.threads["/srv/data"])
    await collector.aclose()
    (thread,) = threads
    thread.join(timeout=30)
    expected = (10, False)
    assert expected == (statvfs.calls.total(), thread.is_alive())


async def test_the_mount_table_is_read_again_once_its_age_reaches_the_ttl(
    statvfs_factory: type[FakeStatvfs],
) -> None:
    """Within the table's TTL a new mount goes unseen and the table is read once; after it, the mount shows."""
    statvfs = statvfs_factory({"/": simple(), "/srv/data": simple()})
    source = FakePartitions([Part("/dev/sda1", "/", "ext4")])
    clock = FakeClock()
    collector = DiskCollector(
        source=source, statvfs=statvfs, mount_timeout=BOUND, table_ttl=60.0, mounts_file=None, clock=clock
    )
    first = sorted(by_mount(await collector.collect()))
    source.parts.append(Part("/dev/sdb1", "/srv/data", "xfs"))
    clock.now += 59.0
    within = sorted(by_mount(await collector.collect()))
    clock.now += 1.0
    after = sorted(by_mount(await collector.collect()))
    expected = (["", "/"], ["", "/"], ["", "/", "/srv/data"], 2)
    assert expected == (first, within, after, len(source.asked_all))


_REMOUNT_SCRIPT = textwrap.dedent(
    """
    import asyncio, subprocess, sys, tempfile
    import psutil
    from collectors.disk import DiskCollector

    class Counting:
        reads = 0

        def disk_partitions(self, all):
            Counting.reads += 1
            return psutil.disk_partitions(all=all)

    async def main():
        collector = DiskCollector(source=Counting())
        reads = []
        for _ in range(2):
            await collector.collect()
            reads.append(Counting.reads)
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tempfile.mkdtemp()]).returncode != 0:
            sys.exit(77)
        for _ in range(2):
            await collector.collect()
            reads.append(Counting.reads)
        await collector.aclose()
        print(reads)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a private mount namespace")
def test_a_change_to_the_kernel_mount_table_is_read_at_the_next_tick() -> None:
    """A mount made between ticks has the next tick read the table again, well within its TTL."""
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", _REMOUNT_SCRIPT],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode == 77 or result.stderr.startswith("unshare:"):
        pytest.skip("cannot mount in a private mount namespace here")
    expected = (0, "[1, 1, 2, 2]\n")
    assert expected == (result.returncode, result.stdout)


def test_a_hung_mount_does_not_keep_the_process_from_exiting() -> None:
    """A one-shot run on a host with a dead NFS mount still exits, with the mount counted."""
    script = textwrap.dedent(
        """
        import asyncio, threading
        from collections import namedtuple
        from collectors.disk import DiskCollector

        Part = namedtuple("Part", "device mountpoint fstype opts")

        class Table:
            def disk_partitions(self, all):
                return [Part("nfs:/x", "/mnt/dead", "nfs4", "rw")]

        def statvfs(path):
            threading.Event().wait()

        samples = asyncio.run(DiskCollector(source=Table(), statvfs=statvfs, mount_timeout=0.2).collect())
        print([(s.name, s.value) for s in samples])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    expected = (0, "[('disk_mounts_skipped', 1)]\n")
    assert expected == (done.returncode, done.stdout)


async def test_from_settings_bounds_a_mount_by_half_the_collector_timeout() -> None:
    """A collector timeout shorter than two mount bounds shortens the mount bound."""
    collector = DiskCollector.from_settings(
        NoSettings(), PluginContext(interval=10.0, state_dir=Path("."), collector_timeout=1.0)
    )
    expected = (True, 0.5)
    assert expected == (isinstance(collector, Collector), collector.mount_timeout)


async def test_this_machine_root_is_reported_in_sane_ranges() -> None:
    """On the real machine "/" is reported with a used share in [0, 100] and a positive size."""
    collector = DiskCollector()
    samples = await collector.collect()
    root = by_mount(samples)["/"]
    expected = (True, True, True)
    assert expected == (
        0.0 <= root["disk_used_percent"] <= 100.0,
        root["disk_total_bytes"] > 0,
        0 <= root["disk_free_bytes"] <= root["disk_total_bytes"],
    )
    assert_declared(collector, samples)


def test_labels_are_judged_by_the_heartbeats_pattern_and_the_scrubbers_tripwire() -> None:
    """The collector holds no copy of either: it uses agent.sample's mount pattern and agent.privacy's tripwire."""
    import agent.privacy
    import collectors.disk
    from agent.sample import MOUNT_PATTERN

    expected = (MOUNT_PATTERN, agent.privacy.find_sensitive)
    assert expected == (collectors.disk.MOUNT_PATH.pattern, collectors.disk.find_sensitive)
