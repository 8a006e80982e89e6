"""Disk: space and inodes per real mount, with hung mounts timed out and skipped.

A ``statvfs`` on a mount whose NFS server died blocks in the kernel and cannot be
cancelled. Each call therefore runs in its own daemon thread that the collector
waits on for at most ``mount_timeout`` seconds; a mount whose thread is still
running is reported as skipped, and gets no second thread until the first one
returns. Daemon threads, not the loop's default executor: a stuck call must
neither starve the other collectors' ``to_thread`` workers nor keep the process
from exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import psutil

from agent.errors import CollectorError
from agent.sample import MetricKind, MetricSpec, Sample

if TYPE_CHECKING:
    from agent.settings import Settings

DEFAULT_MOUNT_TIMEOUT = 1.0

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
# The label pattern the heartbeat allows for a mount point: plain path segments only.
MOUNT_PATH = re.compile(r"/([A-Za-z0-9._-]{1,64}(/[A-Za-z0-9._-]{1,64}){0,15})?")
# The scrubber rejects a whole heartbeat over one string that looks like an address
# or a secret, so a mount named after its NFS server or a volume id would silence
# the POP for good. Such paths are skipped instead, by a net deliberately wider
# than the scrubber's (the tests hold one against the other).
_SUSPECT = re.compile(
    r"[0-9]+(?:[.-][0-9]+){3}"  # IPv4, dotted or dashed
    r"|0[xX]|[0-9A-Fa-f]{32}"  # hex octets, digests
    r"|eyJ|-----BEGIN|(?i:ipv6-literal)"  # JWT, PEM, Windows' spelling of IPv6
    r"|gh[pousr]_|github_pat_|xox[baprs]-|AKIA|ASIA|[rs]k_live_"  # vendor token prefixes
)
_WORD_RUN = re.compile(r"[A-Za-z0-9/_-]{32,}")
_MIXED = (re.compile(r"[A-Z]"), re.compile(r"[a-z]"), re.compile(r"[0-9]"))


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
    """Whether a mount point may appear as a label: plain segments, nothing like an address or a token."""
    if MOUNT_PATH.fullmatch(path) is None or _SUSPECT.search(path) is not None:
        return False
    for match in _WORD_RUN.finditer(path):
        run = match.group()
        words = run.split("/") if run.startswith("/") else [run]
        if any(len(word) >= 32 and all(kind.search(word) for kind in _MIXED) for word in words):
            return False  # looks like base64
    return True


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


class DiskCollector:
    """Space and inodes of every real mount, labelled by mount point.

    ``disk_mounts_skipped`` counts the real mounts left out this tick: timed out,
    still hung from an earlier tick, unreadable, or not representable as a label.
    """

    name: ClassVar[str] = "disk"
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
    ) -> None:
        self._source = source
        self._statvfs = statvfs
        self._mount_timeout = mount_timeout
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}  # mount point -> its statvfs thread

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Always configured; a mount gets at most half the runner's collector timeout."""
        return cls(mount_timeout=min(DEFAULT_MOUNT_TIMEOUT, settings.collectors.timeout / 2))

    @property
    def mount_timeout(self) -> float:
        """Seconds a tick waits for the ``statvfs`` of its mounts."""
        return self._mount_timeout

    @property
    def hung(self) -> frozenset[str]:
        """Mount points whose ``statvfs`` thread has not returned yet."""
        with self._lock:
            return frozenset(self._running)

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the ``statvfs`` threads; True if none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.hung

    async def collect(self) -> Sequence[Sample]:
        """Stat every real mount within the bound, or raise ``CollectorError``."""
        try:
            partitions = await asyncio.to_thread(self._source.disk_partitions, all=True)
        except (OSError, psutil.Error) as exc:
            raise CollectorError("mount table unreadable", code="mounts_unreadable") from exc
        mounts, skipped = select_mounts(partitions)
        waiting: dict[asyncio.Future[StatVfs], str] = {}
        for mount in mounts:
            future = self._start(mount)
            if future is None:
                skipped += 1
            else:
                waiting[future] = mount
        done: set[asyncio.Future[StatVfs]] = set()
        if waiting:
            done, late = await asyncio.wait(waiting, timeout=self._mount_timeout)
            for future in late:
                future.cancel()  # the thread runs on; the mount stays hung until it returns
            skipped += len(late)
        samples: list[Sample] = []
        for future in sorted(done, key=waiting.__getitem__):
            error = future.exception()
            if isinstance(error, OSError):
                skipped += 1  # stale handle, permission denied, unmounted meanwhile
            elif error is not None:
                raise error
            else:
                samples.extend(usage_samples(waiting[future], future.result()))
        samples.append(Sample("disk_mounts_skipped", skipped))
        return samples

    def _start(self, mount: str) -> asyncio.Future[StatVfs] | None:
        """Run ``statvfs(mount)`` in a fresh daemon thread, unless one is still running."""
        result: concurrent.futures.Future[StatVfs] = concurrent.futures.Future()
        with self._lock:
            if mount in self._running:
                return None
            thread = threading.Thread(target=self._stat, args=(mount, result), name="pop-agent-statvfs", daemon=True)
            self._running[mount] = thread
        try:
            thread.start()
        except RuntimeError:  # the system is out of threads
            with self._lock:
                del self._running[mount]
            return None
        return asyncio.wrap_future(result)

    def _stat(self, mount: str, result: concurrent.futures.Future[StatVfs]) -> None:
        # Once running, the collector's cancel can no longer turn the result into an error.
        running = result.set_running_or_notify_cancel()
        value: StatVfs | None = None
        error: Exception | None = None
        try:
            if running:
                value = self._statvfs(mount)
        except Exception as exc:
            error = exc
        finally:
            # Before the result is published, so that the tick it wakes finds the mount free.
            with self._lock:
                del self._running[mount]
        if error is not None:
            result.set_exception(error)
        elif running:
            result.set_result(value)  # type: ignore[arg-type]
