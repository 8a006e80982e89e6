"""The spool's file primitives: atomic writes, directory fsyncs, errno codes, the trash.

Kept apart from :mod:`agent.spool` so that the one place bytes reach the disk is
small enough to read at a glance, and so that tests can inject failures through
:class:`FileOps` instead of patching :mod:`os`.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import SpoolError

_ERRNO_CODES = {
    errno.ENOSPC: "enospc",
    errno.EDQUOT: "enospc",
    errno.EACCES: "eacces",
    errno.EPERM: "eacces",
    errno.EROFS: "erofs",
}


@dataclass(frozen=True, slots=True)
class FileOps:
    """The system calls through which heartbeat bytes reach the disk.

    Tests pass replacements that fail with ``ENOSPC``, ``EACCES`` or ``EIO`` at a
    chosen moment; the agent always uses the defaults.
    """

    open: Callable[[str, int, int], int] = os.open
    write: Callable[[int, memoryview], int] = os.write
    fsync: Callable[[int], None] = os.fsync


def error_code(exc: OSError) -> str:
    """The fixed short code for a failed file operation (never the exception text)."""
    return _ERRNO_CODES.get(exc.errno or 0, "io")


def spool_error(exc: OSError) -> SpoolError:
    """Translate an ``OSError`` into a :class:`SpoolError` carrying only its code."""
    code = error_code(exc)
    return SpoolError(f"spool {code}", code=code)


def open_dir(path: str) -> int:
    """A descriptor of ``path`` for fsyncing the directory itself."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def write_file(ops: FileOps, path: str, data: bytes, *, fsync: bool) -> None:
    """Create ``path`` holding ``data`` and, with ``fsync``, force it to disk.

    On any failure the partial file is removed and the ``OSError`` propagates: a
    failed fsync means the kernel may have dropped the data, so it counts as a
    failed write.
    """
    fd = ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = ops.write(fd, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, "short write")
            view = view[written:]
        if fsync:
            ops.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)


def replace_atomically(ops: FileOps, tmp_path: str, final_path: str, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to ``tmp_path``, fsync it, then rename it over ``final_path``.

    The caller fsyncs the directory of ``final_path`` afterwards, possibly once
    for several renames.
    """
    write_file(ops, tmp_path, data, fsync=fsync)
    try:
        os.rename(tmp_path, final_path)
    except BaseException:
        unlink_quietly(tmp_path)
        raise


def unlink_quietly(path: str) -> bool:
    """Remove ``path``; ``False`` if it could not be removed (already gone counts as removed)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


class Reclaimer:
    """Empties a trash directory in a background thread.

    Removing a file is slow on filesystems mounted with ``discard`` (every freed
    block is trimmed: 0.2-0.6 ms per heartbeat here), while a rename is not. So
    the spool renames settled files into ``trash/`` (durable once the pending
    directory is fsynced) and this thread frees the space behind it, without
    holding up delivery.
    """

    quiet_s = 0.5

    def __init__(self, path: str) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; it first removes whatever an earlier process left in the trash."""
        self._stop.clear()
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name="spool-reclaim", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Tell the thread there is something to remove."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread soon; what is left is removed after the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait()
            # Wait for a quiet moment: removals compete with a drain for the
            # filesystem journal and would slow it down by a third.
            while self._wake.is_set():
                self._wake.clear()
                self._stop.wait(self.quiet_s)
            if self._stop.is_set():
                return
            try:
                with os.scandir(self._path) as entries:
                    for n, entry in enumerate(entries):
                        if self._stop.is_set():
                            return
                        if n % 64 == 0 and self._wake.is_set():
                            break  # a drain is under way again; finish after it
                        unlink_quietly(entry.path)
            except OSError:
                continue
