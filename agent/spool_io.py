"""The spool's file primitives: errno codes, directory descriptors, the trash.

Atomic writes are :mod:`agent.atomic_file`'s, shared with the rest of the agent.
"""

from __future__ import annotations

import errno
import os
import threading

from agent.atomic_file import remove_quietly
from agent.errors import SpoolError

_ERRNO_CODES = {
    errno.ENOSPC: "enospc",
    errno.EDQUOT: "enospc",
    errno.EACCES: "eacces",
    errno.EPERM: "eacces",
    errno.EROFS: "erofs",
}


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
                        remove_quietly(entry.path)
            except OSError:
                continue
