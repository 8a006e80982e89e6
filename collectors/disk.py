"""Disk: space and inodes per real mount, with hung mounts timed out and skipped.

A ``statvfs`` on a mount whose NFS server died blocks in the kernel and cannot be
cancelled. The calls run in the collector's own pool of long-lived daemon threads
(:class:`agent.threads.DaemonThreadExecutor`), one of which takes a tick's mounts
one after another; the collector waits for them at most ``mount_timeout`` seconds.
When the work stalls (a thread stuck on one mount) for a fraction of that bound,
the mounts still waiting are handed to another thread of the pool, so one hung
mount delays no other. A mount whose call is still running is reported as skipped
and is not asked again until that call returns; the stuck thread is not waited for
and goes back to the pool once it returns. A pool of its own, not the loop's
default executor: a stuck call must neither hold a thread the other collectors
need nor keep the process from exiting.

The mount table changes rarely: it is read again when the kernel signals a change
on ``/proc/self/mounts`` (poll's ``POLLPRI``), and at least every ``table_ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import re
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import psutil

from agent.errors import CollectorError
from agent.plugin_api import NoSettings
from agent.privacy import find_sensitive
from agent.sample import MOUNT_PATTERN, MetricKind, MetricSpec, Sample
from agent.threads import DaemonThreadExecutor

if TYPE_CHECKING:
    from agent.plugin_api import PluginContext

DEFAULT_MOUNT_TIMEOUT = 1.0
DEFAULT_TABLE_TTL = 60.0
PROC_MOUNTS = "/proc/self/mounts"
# Share of the mount bound after which stalled work gets another thread: a healthy
# statvfs takes microseconds, so a stall this long means a call is stuck or slow.
_STALL_SHARE = 0.125

# Kernel and virtual file systems, and read-only images that are always full.
PSEUDO_FSTYPES = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devfs", "devpts",
        "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "iso9660", "mqueue", "nfsd", "nsfs", "proc",
        "pstore", "ramfs", "rootfs", "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs",
        "tmpfs", "tracefs", "overlay", "aufs", "fuse-overlayfs", "fuse.fuse-overlayfs", "fuse.lxcfs",
        "fuse.gvfsd-fuse", "fuse.portal", "fuse.snapfuse", "fuse.xdg-document-portal",
    }
)  # fmt: skip
# Files a container runtime bind-mounts from the host's disk, which "/" already stands for.
_CONTAINER_FILES = frozenset({"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log"})
# Devices that name no block device or export, so they say nothing about sharing one.
_ANONYMOUS_DEVICES = frozenset({"", "none"})
MOUNT_PATH = re.compile(MOUNT_PATTERN)  # the heartbeat's own pattern for a mount label


class Partition(Protocol):
    """The fields of a ``psutil.disk_partitions()`` entry this collector reads."""

    @property
    def device(self) -> str: ...

    @property
    def mountpoint(self) -> str: ...

    @property
    def fstype(self) -> str: ...


class PartitionSource(Protocol):
    """The part of psutil this collector reads; the ``psutil`` module itself is one."""

    def disk_partitions(self, all: bool) -> Sequence[Partition]: ...


class StatVfs(Protocol):
    """The fields of ``os.statvfs()`` this collector reads."""

    @property
    def f_frsize(self) -> int: ...

    @property
    def f_blocks(self) -> int: ...

    @property
    def f_bfree(self) -> int: ...

    @property
    def f_bavail(self) -> int: ...

    @property
    def f_files(self) -> int: ...

    @property
    def f_ffree(self) -> int: ...


def representable(path: str) -> bool:
    """Whether a mount point may appear as a label: plain segments, nothing like an address or a token.

    The scrubber rejects a whole heartbeat over one string that looks like an
    address or a secret, so a mount named after its NFS server or a volume id would
    silence the POP for good. Such paths are skipped instead, judged by the
    scrubber's own tripwire (:func:`agent.privacy.find_sensitive`: standard library
    only, no side effects at import), so that the two can never disagree.
    """
    return MOUNT_PATH.fullmatch(path) is not None and find_sensitive(path) is None


def select_mounts(partitions: Iterable[Partition]) -> tuple[list[str], int]:
    """The mount points worth reporting, and how many real ones cannot be labelled.

    Where several mounts share a mount point the last one, the one visible, wins.
    Pseudo file systems are dropped, except that ``/`` is always kept (in a
    container an overlay root is the disk that matters), and so are the files a
    container runtime bind-mounts. Mounts of one device (bind mounts) are reported
    once: as ``/`` if it is one of them, else under the first path that can be labelled.
    """
    visible = {part.mountpoint: part for part in partitions}
    by_device: dict[str, list[str]] = {}
    for path, part in visible.items():
        pseudo = part.fstype in PSEUDO_FSTYPES or part.fstype.startswith("cgroup")
        if path != "/" and (pseudo or path in _CONTAINER_FILES):
            continue
        key = path if part.device in _ANONYMOUS_DEVICES else part.device
        by_device.setdefault(key, []).append(path)
    chosen: list[str] = []
    skipped = 0
    for paths in by_device.values():
        best = min(paths, key=lambda path: (path != "/", not representable(path)))
        if representable(best):
            chosen.append(best)
        else:
            skipped += 1
    return sorted(chosen), skipped


def usage_samples(mount: str, st: StatVfs) -> list[Sample]:
    """The samples of one mount, computed as ``df`` does (reserved blocks count as used)."""
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    visible = used + free  # what an unprivileged user can ever use
    samples = [
        Sample.of("disk_used_percent", round(used / visible * 100.0, 2) if visible > 0 else 0.0, mount=mount),
        Sample.of("disk_total_bytes", total, mount=mount),
        Sample.of("disk_free_bytes", free, mount=mount),
    ]
    if st.f_files > 0:  # btrfs and some network file systems report no inode figures
        inodes_used = st.f_files - st.f_ffree
        samples.append(Sample.of("disk_inodes_used_percent", round(inodes_used / st.f_files * 100.0, 2), mount=mount))
    return samples


class TableWatch:
    """Tells whether the kernel's mount table changed since the last question.

    ``/proc/self/mounts`` polls with ``POLLPRI`` once after each change to the
    mount namespace; the poll itself clears it. A file that cannot be opened, or one
    that does not signal (a regular file), never reports a change.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._fd: int | None = None
        self._poll: select.poll | None = None

    def arm(self) -> None:
        """Start watching (once); changes before this call are not reported."""
        if self._path is None or self._fd is not None:
            return
        try:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._path = None  # nothing to watch: the table's age alone decides
            return
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLPRI)
        self._poll.poll(0)  # a fresh open carries no pending change; this keeps it so

    def changed(self) -> bool:
        """Whether the table changed since the previous call (or since ``arm``)."""
        if self._poll is None:
            return False
        return any(events & (select.POLLPRI | select.POLLERR) for _, events in self._poll.poll(0))

    def close(self) -> None:
        """Stop watching and release the file."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._poll, self._path = None, None, None


class _Round:
    """One tick's mounts as the statvfs threads see them; guarded by the collector's lock."""

    def __init__(self, mounts: Iterable[str], loop: asyncio.AbstractEventLoop) -> None:
        self.todo = deque(mounts)
        self.left = len(self.todo)  # mounts not yet answered
        self.results: dict[str, StatVfs | Exception] = {}
        self.open = True  # False once the tick stopped waiting: no thread starts another mount of it
        self.loop = loop
        self.done: asyncio.Future[None] = loop.create_future()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _finish(round_: _Round, served: concurrent.futures.Future[bool]) -> None:
    """Wake the tick once a thread answered its round's last mount (in that thread, after it went idle)."""
    if not served.cancelled() and served.exception() is None and served.result():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            round_.loop.call_soon_threadsafe(_resolve, round_.done)


class DiskCollector:
    """Space and inodes of every real mount, labelled by mount point.

    ``disk_mounts_skipped`` counts the real mounts left out this tick: timed out,
    still hung from an earlier tick, unreadable, or not representable as a label.
    """

    name: ClassVar[str] = "disk"
    settings_model: ClassVar[type[NoSettings]] = NoSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("disk_used_percent", MetricKind.GAUGE, "Share of usable space in use.", "percent", ("mount",)),
        MetricSpec("disk_total_bytes", MetricKind.GAUGE, "Size of the file system.", "bytes", ("mount",)),
        MetricSpec("disk_free_bytes", MetricKind.GAUGE, "Space free for unprivileged users.", "bytes", ("mount",)),
        MetricSpec("disk_inodes_used_percent", MetricKind.GAUGE, "Share of inodes in use.", "percent", ("mount",)),
        MetricSpec("disk_mounts_skipped", MetricKind.GAUGE, "Real mounts left out this tick (hung, unreadable)."),
    )

    def __init__(
        self,
        *,
        source: PartitionSource = psutil,
        statvfs: Callable[[str], StatVfs] = os.statvfs,
        mount_timeout: float = DEFAULT_MOUNT_TIMEOUT,
        table_ttl: float = DEFAULT_TABLE_TTL,
        mounts_file: str | None = PROC_MOUNTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._statvfs = statvfs
        self._mount_timeout = mount_timeout
        self._table_ttl = table_ttl
        self._watch = TableWatch(mounts_file)
        self._clock = clock
        self._table: tuple[list[str], int] | None = None  # chosen mounts, unlabelable ones
        self._table_read = 0.0
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._running: set[str] = set()  # mount points whose statvfs call has not returned
        self._pool = DaemonThreadExecutor(name="pop-agent-statvfs")

    @classmethod
    def from_settings(cls, cfg: NoSettings, context: PluginContext) -> Self:
        """Always configured; a mount gets at most half the runner's collector timeout."""
        return cls(mount_timeout=min(DEFAULT_MOUNT_TIMEOUT, context.collector_timeout / 2))

    @property
    def mount_timeout(self) -> float:
        """Seconds a tick waits for the ``statvfs`` of its mounts."""
        return self._mount_timeout

    @property
    def hung(self) -> frozenset[str]:
        """Mount points whose ``statvfs`` call has not returned yet."""
        with self._lock:
            return frozenset(self._running)

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the running ``statvfs`` calls; True if none is left."""
        with self._returned:
            return self._returned.wait_for(lambda: not self._running, timeout)

    async def aclose(self) -> None:
        """Stop watching the mount table and let the idle threads go; a stuck one leaves when it returns."""
        self._watch.close()
        self._pool.shutdown(wait=False)

    async def collect(self) -> Sequence[Sample]:
        """Stat every real mount within the bound, or raise ``CollectorError``."""
        mounts, skipped = await self._mounts()
        results, unanswered = await self._stat_all(mounts)
        samples: list[Sample] = []
        for mount in sorted(results):
            result = results[mount]
            if isinstance(result, OSError):
                skipped += 1  # stale handle, permission denied, unmounted meanwhile
            elif isinstance(result, Exception):
                raise result
            else:
                samples.extend(usage_samples(mount, result))
        samples.append(Sample("disk_mounts_skipped", skipped + unanswered))
        return samples

    async def _mounts(self) -> tuple[list[str], int]:
        """The mounts to stat and the unlabelable count, from the cached table while it is current."""
        changed = self._watch.changed()  # asked first, so that a change during the read is seen next time
        now = self._clock()
        if self._table is None or changed or now - self._table_read >= self._table_ttl:
            try:
                partitions = await asyncio.to_thread(self._read_table)
            except (OSError, psutil.Error) as exc:
                self._table = None  # read again next tick: the change that brought us here is consumed
                raise CollectorError("mount table unreadable", code="mounts_unreadable") from exc
            self._table, self._table_read = select_mounts(partitions), now
        mounts, skipped = self._table
        return list(mounts), skipped

    def _read_table(self) -> Sequence[Partition]:
        self._watch.arm()  # before the read: a change after it must not go unnoticed
        return self._source.disk_partitions(all=True)

    async def _stat_all(self, mounts: Sequence[str]) -> tuple[dict[str, StatVfs | Exception], int]:
        """Each mount's ``statvfs`` result or error, and how many mounts got none in time."""
        loop = asyncio.get_running_loop()
        with self._lock:
            todo = [mount for mount in mounts if mount not in self._running]
        unanswered = len(mounts) - len(todo)  # still hung from an earlier tick
        if not todo:
            return {}, unanswered
        round_ = _Round(todo, loop)
        deadline = loop.time() + self._mount_timeout
        stall = self._mount_timeout * _STALL_SHARE
        try:
            if self._hand(round_):
                while (left := deadline - loop.time()) > 0:
                    await asyncio.wait((round_.done,), timeout=min(left, stall))
                    if round_.done.done():
                        break
                    with self._lock:
                        waiting = bool(round_.todo)
                    if waiting:
                        self._hand(round_)  # the threads on it are stuck or slow: one more for the rest
        finally:
            # Also when cancelled: a mount of this round must not start beside the next tick's call on it.
            with self._lock:
                round_.open = False
                results = dict(round_.results)
        return results, unanswered + len(todo) - len(results)

    def _hand(self, round_: _Round) -> bool:
        """Give the round to a thread of the pool (an idle one, or a new one); False if none could be started."""
        try:
            served = self._pool.submit(self._serve, round_)
        except RuntimeError:  # the system is out of threads, or the collector is closed
            return False
        served.add_done_callback(functools.partial(_finish, round_))
        return True

    def _serve(self, round_: _Round) -> bool:
        """Stat the round's mounts one after another until none is left; True if this call answered the last."""
        finished = False
        while True:
            with self._lock:
                if not round_.open or not round_.todo:
                    return finished
                mount = round_.todo.popleft()
                self._running.add(mount)
            result: StatVfs | Exception
            try:
                result = self._statvfs(mount)
            except Exception as exc:
                result = exc
            with self._lock:
                # Before the result is published, so that the tick it wakes finds the mount free.
                self._running.discard(mount)
                self._returned.notify_all()
                if round_.open:
                    round_.results[mount] = result
                    round_.left -= 1
                    finished = round_.left == 0
