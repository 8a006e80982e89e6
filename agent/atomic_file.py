"""Replacing a file atomically and durably: the one way the agent and its plugins do it.

Write the bytes to a temporary file in the target's directory, fsync it, rename
it over the target, fsync the directory. A reader sees the old file or the new
one, never a mix; a process killed at any moment leaves the old file (and at
worst a temporary one); with the fsyncs, the new file also survives a power loss
once :func:`replace` has returned.

Standard library only and without side effects at import, so that a collector
may use it as it uses :mod:`agent.sample`. Blocking: call it from a thread, not
from the event loop.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass

StrPath = str | os.PathLike[str]


# The defaults look :mod:`os` up at each call, so a test that watches os.fsync sees these too.
def _open(path: str, flags: int, mode: int) -> int:
    return os.open(path, flags, mode)


def _write(fd: int, data: memoryview) -> int:
    return os.write(fd, data)


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _rename(src: str, dst: str) -> None:
    os.rename(src, dst)


@dataclass(frozen=True, slots=True)
class FileOps:
    """The system calls through which the bytes reach the disk.

    Tests pass replacements that fail with ``ENOSPC``, ``EACCES`` or ``EIO`` at a
    chosen moment instead of patching :mod:`os`; the agent always uses the defaults.
    """

    open: Callable[[str, int, int], int] = _open
    write: Callable[[int, memoryview], int] = _write
    fsync: Callable[[int], None] = _fsync
    rename: Callable[[str, str], None] = _rename


SYSTEM = FileOps()


def temporary_path(path: StrPath) -> str:
    """A temporary name beside ``path``, unique to this process and thread.

    In the same directory so that the rename never crosses a filesystem; a dot
    name so that directory scans that look for ``*.json`` pass it by.
    """
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_new(path: StrPath, data: bytes, *, durable: bool = True, ops: FileOps = SYSTEM) -> None:
    """Create (or truncate) ``path``, write all of ``data`` and, when ``durable``, fsync it.

    On any failure the partial file is removed and the ``OSError`` propagates: a
    failed fsync means the kernel may have dropped the data, so it counts as a
    failed write.
    """
    target = os.fspath(path)
    fd = ops.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = ops.write(fd, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, "short write")
            view = view[written:]
        if durable:
            ops.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(target)
        raise
    os.close(fd)


def replace(
    path: StrPath,
    data: bytes,
    *,
    durable: bool = True,
    tmp: StrPath | None = None,
    sync_dir: bool = True,
    ops: FileOps = SYSTEM,
) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the new one, never a mix.

    With ``durable`` the data is fsynced before the rename and, with ``sync_dir``,
    the directory after it, so the new file survives a power loss. A caller that
    renames several files into one directory may pass ``sync_dir=False`` and fsync
    the directory once for all of them. ``tmp`` is the temporary file to use; it
    must be on the same filesystem (by default, a dot name beside ``path``). On
    failure the temporary file is removed, ``path`` is left as it was, and the
    ``OSError`` propagates.
    """
    target = os.fspath(path)
    temporary = temporary_path(target) if tmp is None else os.fspath(tmp)
    write_new(temporary, data, durable=durable, ops=ops)
    try:
        ops.rename(temporary, target)
    except BaseException:
        remove_quietly(temporary)
        raise
    if durable and sync_dir:
        fsync_dir(os.path.dirname(target) or ".", ops=ops)


def create(path: StrPath, data: bytes, *, durable: bool = True) -> bool:
    """Put a complete ``path`` holding ``data`` in place only if there is none yet; ``False`` if there was.

    For a file that must be made once and never replaced (a key): of two
    processes creating it at once, exactly one wins, and the other sees the
    winner's complete file, never a partial one.
    """
    target = os.fspath(path)
    temporary = temporary_path(target)
    write_new(temporary, data, durable=durable)
    try:
        os.link(temporary, target)  # unlike rename, link(2) refuses to replace
    except FileExistsError:
        return False
    finally:
        remove_quietly(temporary)
    if durable:
        fsync_dir(os.path.dirname(target) or ".")
    return True


def fsync_dir(directory: StrPath, *, ops: FileOps = SYSTEM) -> None:
    """Make the renames and removals in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ops.fsync(fd)
    finally:
        os.close(fd)


def remove_any(path: StrPath) -> None:
    """Remove a file, a link or a whole directory tree at ``path``; whatever cannot be removed stays, silently."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        remove_quietly(path)


def remove_quietly(path: StrPath) -> bool:
    """Remove ``path``; ``False`` if it could not be removed (already gone counts as removed)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
