"""Follow a log file like ``tail -F``, in bounded steps, with an offset that survives restarts.

- Rotation by rename (or delete and re-create): a new inode appears at the path.
  The old file is read to its end first, and kept open for one more read after
  that, because the writer keeps appending to it until it reopens its log.
- Rotation by copytruncate: the file shrinks below the offset; reading starts
  again at 0. (A file truncated and regrown past the offset between two reads
  cannot be told apart from a growing one; ``tail -F`` has the same limit.)
- A missing file is waited for quietly. Only complete lines are handed out; a
  trailing fragment is left in the file and read again once its newline has
  arrived, so no log text (an address, say) is held between reads. A line longer
  than ``max_line`` is dropped and counted.
- The saved position is ``(inode, offset of the last complete line)``: never
  the content of a fragment. On restore, a file replaced meanwhile is looked
  for among its rotated siblings (``access.log.1``) by inode, and finished first.

Blocking: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.sample import JsonObject

CHUNK_BYTES = 1 << 18  # a chunk, its tokens and their set stay within a core's L2 cache
MAX_LINE_BYTES = 1 << 16

StartAt = Callable[[io.FileIO, int], int]
"""Where to start in a file met for the first time: (open file, size) -> offset."""


@dataclass
class _Open:
    fh: io.FileIO
    ino: int
    offset: int  # end of the last complete line handed out
    fragment: bytes = b""
    skipping: bool = False  # inside an over-long line, dropping until its newline
    idle_reads: int = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()


class LogFollower:
    """Hands out complete lines of one log path, in chunks, across rotations."""

    def __init__(
        self,
        path: Path,
        *,
        start_at: StartAt | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self.path = path
        self._start_at = start_at
        self._chunk = chunk_bytes
        self._max_line = max_line
        self._current: _Open | None = None
        self._draining: _Open | None = None  # the rotated-away file, read to its end first
        self._saved: dict[str, int] | None = None  # from load_state, applied at the next open
        self._met = False  # whether any file was opened or restored: only the first uses start_at
        self.oversized_lines = 0
        self.rotations = 0
        self.truncations = 0

    # -- state ------------------------------------------------------------------------------

    def save_state(self) -> dict[str, int]:
        """Inode and offset of the file being read, and of the one after it while draining."""
        if self._saved is not None:
            return dict(self._saved)
        state: dict[str, int] = {}
        if self._current is not None:
            state = {"ino": self._current.ino, "offset": self._current.offset}
        if self._draining is not None:
            state = {"ino": self._draining.ino, "offset": self._draining.offset}
            if self._current is not None:
                state |= {"next_ino": self._current.ino, "next_offset": self._current.offset}
        return state

    def load_state(self, state: JsonObject) -> None:
        """Resume from :meth:`save_state`'s data at the next read."""
        valid = {k: v for k, v in state.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
        if "ino" in valid and "offset" in valid:
            self._saved = valid
            self._met = True

    def close(self) -> None:
        """Close any open file."""
        for held in (self._draining, self._current):
            if held is not None:
                held.close()
        self._draining = self._current = None

    # -- reading ----------------------------------------------------------------------------

    def chunks(self, max_lines: int) -> Iterator[tuple[bytes, int]]:
        """Yield ``(complete lines, their count)`` until EOF or ``max_lines`` lines.

        Every chunk ends with a newline. The position advances as chunks are
        yielded, so a consumer that stops early loses nothing it was not given.
        """
        budget = max_lines
        if self._current is None and self._draining is None:
            self._open()
        if self._draining is not None:
            for chunk, count in self._read(self._draining, budget):
                budget -= count
                yield chunk, count
            if budget > 0:
                self._draining.idle_reads += 1
                if self._draining.idle_reads >= 2:
                    self._draining.close()
                    self._draining = None
        if self._current is None or budget <= 0:
            return
        for chunk, count in self._read(self._current, budget):
            budget -= count
            yield chunk, count
        # The file that took the path may already hold lines.
        if budget > 0 and self._check_path() and self._current is not None:
            for chunk, count in self._read(self._current, budget):
                budget -= count
                yield chunk, count

    def _read(self, held: _Open, budget: int) -> Iterator[tuple[bytes, int]]:
        self._check_truncated(held)
        while budget > 0:
            data = held.fh.read(self._chunk)
            if not data:
                break
            held.idle_reads = 0
            if held.skipping:
                cut = data.find(b"\n")
                if cut < 0:
                    held.offset += len(data)
                    continue
                held.offset += cut + 1
                held.skipping = False
                data = data[cut + 1 :]
            end = data.rfind(b"\n") + 1
            if end == 0:
                held.fragment += data
                if len(held.fragment) > self._max_line:
                    self.oversized_lines += 1
                    held.offset += len(held.fragment)
                    held.fragment = b""
                    held.skipping = True
                continue
            # One copy at most: a copy per read adds up on a long backlog.
            whole = not held.fragment and end == len(data)
            complete = data if whole else b"".join((held.fragment, memoryview(data)[:end]))
            held.fragment = data[end:]
            count = complete.count(b"\n")
            if count > budget:
                # The first ``budget`` lines: what is left after splitting them off is the rest.
                keep = len(complete) - len(complete.split(b"\n", budget)[-1])
                held.fh.seek(held.offset + keep)
                complete, held.fragment, count = complete[:keep], b"", budget
            held.offset += len(complete)
            budget -= count
            yield complete, count
        if held.fragment and not held.skipping:
            held.fh.seek(held.offset)  # the partial line is read again, whole, at a later read
            held.fragment = b""

    def _check_truncated(self, held: _Open) -> None:
        try:
            size = os.fstat(held.fh.fileno()).st_size
        except OSError:
            return
        if size < held.offset + len(held.fragment):
            held.fh.seek(0)
            held.offset = 0
            held.fragment = b""
            held.skipping = False
            self.truncations += 1

    def _check_path(self) -> bool:
        """After EOF: has another file taken the path (rotation by rename)? Switch to it."""
        assert self._current is not None
        try:
            ino = os.stat(self.path).st_ino
        except OSError:
            return False  # gone for now; keep the old file, a new one is picked up when it appears
        if ino == self._current.ino:
            return False
        if self._draining is not None:
            self._draining.close()  # two rotations within a read: the older one is given up
        self._draining = self._current
        self._draining.idle_reads = 0
        self._current = None
        self.rotations += 1
        self._open(fresh=True)
        return True

    def _open(self, *, fresh: bool = False) -> None:
        try:
            fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 -- held across calls
        except (FileNotFoundError, NotADirectoryError):
            return  # not there yet: wait quietly; other errors (permissions) are the caller's
        stat = os.fstat(fh.fileno())
        ino, size = stat.st_ino, stat.st_size
        offset = 0
        if self._saved is not None and not fresh:
            saved, self._saved = self._saved, None
            if saved["ino"] == ino:
                offset = saved["offset"]
            else:
                self._draining = self._find_sibling(saved["ino"], saved["offset"])
                if saved.get("next_ino") == ino:
                    offset = saved.get("next_offset", 0)
            if offset > size:
                offset = 0  # truncated while we were away
        elif not self._met and not fresh and self._start_at is not None:
            offset = self._start_at(fh, size)
        self._met = True
        if offset:
            offset = self._line_start(fh, offset)
        fh.seek(offset)
        self._current = _Open(fh, ino, offset)

    @staticmethod
    def _line_start(fh: io.FileIO, offset: int) -> int:
        """``offset`` if a line starts there, else the start of the next line."""
        fh.seek(offset - 1)
        while True:
            block = fh.read(CHUNK_BYTES)
            if not block:
                return fh.tell()
            cut = block.find(b"\n")
            if cut >= 0:
                return fh.tell() - len(block) + cut + 1

    def _find_sibling(self, ino: int, offset: int) -> _Open | None:
        """The file with inode ``ino`` next to the path (it was rotated while we were down)."""
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return None
        for entry in entries:
            if not entry.name.startswith(self.path.name) or entry.name == self.path.name:
                continue
            try:
                if entry.inode() != ino or not entry.is_file(follow_symlinks=False):
                    continue
                fh = open(entry.path, "rb", buffering=0)  # noqa: SIM115 -- held across calls
            except OSError:
                continue
            stat = os.fstat(fh.fileno())
            if stat.st_ino != ino or stat.st_size < offset:
                fh.close()
                return None
            fh.seek(offset)
            return _Open(fh, ino, offset)
        return None
