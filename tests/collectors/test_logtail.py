"""The tail -F follower: rotation both ways, missing files, fragments, budgets and restarts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from collectors.logtail import LogFollower


def append(path: Path, text: str) -> None:
    with path.open("a") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def lines_of(follower: LogFollower, max_lines: int = 1000) -> list[str]:
    return [line for chunk, _ in follower.chunks(max_lines) for line in chunk.decode().splitlines()]


def test_missing_file_is_waited_for(tmp_path: Path) -> None:
    """A log that does not exist yet gives nothing, then its lines once it appears."""
    path = tmp_path / "access.log"
    follower = LogFollower(path)
    assert [] == lines_of(follower)
    append(path, "a\nb\n")
    assert ["a", "b"] == lines_of(follower)


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    """A trailing fragment is held back until its newline is written."""
    path = tmp_path / "access.log"
    append(path, "one\ntw")
    follower = LogFollower(path)
    assert ["one"] == lines_of(follower)
    assert [] == lines_of(follower)
    append(path, "o\nthree\n")
    assert ["two", "three"] == lines_of(follower)


def test_budget_bounds_lines_per_call(tmp_path: Path) -> None:
    """No more than max_lines lines come out of one call; the rest come next time."""
    path = tmp_path / "access.log"
    append(path, "".join(f"{i}\n" for i in range(25)))
    follower = LogFollower(path, chunk_bytes=16)
    first = [chunk for chunk in follower.chunks(10)]
    assert 10 == sum(count for _, count in first)
    assert [str(i) for i in range(10, 20)] == lines_of(follower, 10)
    assert [str(i) for i in range(20, 25)] == lines_of(follower, 10)


def test_rotation_by_rename_finishes_the_old_file(tmp_path: Path) -> None:
    """After a rename, lines still written to the old file and the new file's lines all arrive, once."""
    path = tmp_path / "access.log"
    append(path, "a\nb\n")
    follower = LogFollower(path)
    assert ["a", "b"] == lines_of(follower)
    append(path, "c\n")
    path.rename(tmp_path / "access.log.1")
    append(path, "d\n")
    append(tmp_path / "access.log.1", "late\n")  # the server writes on until it reopens its log
    got = lines_of(follower)
    append(path, "e\n")
    got += lines_of(follower) + lines_of(follower)
    assert ["c", "late", "d", "e"] == got
    assert 1 == follower.rotations


def test_copytruncate_starts_again_at_zero(tmp_path: Path) -> None:
    """A file truncated below the offset is read again from its start."""
    path = tmp_path / "access.log"
    append(path, "first line\nsecond line\n")
    follower = LogFollower(path)
    assert 2 == len(lines_of(follower))
    shutil.copy(path, tmp_path / "access.log.1")
    os.truncate(path, 0)
    append(path, "x\n")
    assert ["x"] == lines_of(follower)
    assert 1 == follower.truncations


def test_overlong_line_is_dropped_and_counted(tmp_path: Path) -> None:
    """A line longer than max_line is skipped whole and counted; the next line still arrives."""
    path = tmp_path / "access.log"
    append(path, "x" * 5000)
    follower = LogFollower(path, chunk_bytes=1024, max_line=2048)
    assert [] == lines_of(follower)
    append(path, "y" * 100 + "\nok\n")
    assert ["ok"] == lines_of(follower)
    assert 1 == follower.oversized_lines


def test_offset_survives_a_restart(tmp_path: Path) -> None:
    """A new follower given the saved state goes on where the old one stopped, fragment excluded."""
    path = tmp_path / "access.log"
    append(path, "a\nb\npart")
    follower = LogFollower(path)
    assert ["a", "b"] == lines_of(follower)
    state = follower.save_state()
    follower.close()
    append(path, "ial\nc\n")
    again = LogFollower(path)
    again.load_state(dict(state))
    assert ["partial", "c"] == lines_of(again)


def test_file_rotated_while_down_is_finished_first(tmp_path: Path) -> None:
    """If the file was renamed while the agent was down, its rest is read, then the new file."""
    path = tmp_path / "access.log"
    append(path, "a\n")
    follower = LogFollower(path)
    assert ["a"] == lines_of(follower)
    state = follower.save_state()
    follower.close()
    append(path, "b\n")
    path.rename(tmp_path / "access.log.1")
    append(path, "c\n")
    again = LogFollower(path)
    again.load_state(dict(state))
    assert ["b", "c"] == lines_of(again) + lines_of(again)


def test_start_at_is_used_only_for_a_file_never_seen(tmp_path: Path) -> None:
    """The start position callback places a first read; a restored follower ignores it."""
    path = tmp_path / "access.log"
    append(path, "old\nnew\n")
    follower = LogFollower(path, start_at=lambda fh, size: 2)  # mid-line: moves to the next line
    assert ["new"] == lines_of(follower)
    restored = LogFollower(path, start_at=lambda fh, size: size)
    restored.load_state({"ino": os.stat(path).st_ino, "offset": 0})
    assert ["old", "new"] == lines_of(restored)
