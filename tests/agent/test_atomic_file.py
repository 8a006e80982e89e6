"""The one atomic-write helper, on the real file system: real fsyncs, injected failures, real kills."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import atomic_file
from agent.atomic_file import FileOps

REPO = Path(__file__).resolve().parents[2]


class CountingOps:
    """Real system calls, counted by name, failing with EIO at the n-th call overall when asked."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at
        self.ops = FileOps(open=self.open, write=self.write, fsync=self.fsync, rename=self.rename)

    def _count(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise OSError(errno.EIO, "injected")

    def open(self, path: str, flags: int, mode: int) -> int:
        self._count("open")
        return os.open(path, flags, mode)

    def write(self, fd: int, data: memoryview) -> int:
        self._count("write")
        return os.write(fd, data[:4096])  # short writes, so large data takes several calls

    def fsync(self, fd: int) -> None:
        self._count("fsync")
        os.fsync(fd)

    def rename(self, src: str, dst: str) -> None:
        self._count("rename")
        os.rename(src, dst)


def test_replace_writes_the_new_bytes_private_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A replaced file holds exactly the new bytes, is readable by its owner only, and nothing else is left."""
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    atomic_file.replace(target, b'{"new": true}')
    assert (b'{"new": true}', 0o600, ["state.json"]) == (
        target.read_bytes(),
        stat.S_IMODE(target.stat().st_mode),
        os.listdir(tmp_path),
    )


def test_a_durable_replace_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path: Path) -> None:
    """Durable means: open, write, fsync of the file, rename, fsync of the directory, in that order."""
    counting = CountingOps()
    atomic_file.replace(tmp_path / "doc.json", b"x" * 10, ops=counting.ops)
    assert ["open", "write", "fsync", "rename", "fsync"] == counting.calls


def test_a_replace_that_is_not_durable_makes_no_fsync(tmp_path: Path) -> None:
    """``durable=False`` (advisory files rewritten every tick) is atomic without a single fsync."""
    counting = CountingOps()
    atomic_file.replace(tmp_path / "status.json", b"{}", durable=False, ops=counting.ops)
    assert ["open", "write", "rename"] == counting.calls


def test_a_caller_may_sync_the_directory_itself(tmp_path: Path) -> None:
    """``sync_dir=False`` leaves the directory fsync to a caller that renames several files into it."""
    counting = CountingOps()
    atomic_file.replace(tmp_path / "a.json", b"{}", tmp=tmp_path / "a.tmp", sync_dir=False, ops=counting.ops)
    assert (["open", "write", "fsync", "rename"], ["a.json"]) == (counting.calls, os.listdir(tmp_path))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=0, max_value=20_000), fail_at=st.integers(min_value=1, max_value=12))
def test_a_failure_at_any_system_call_leaves_the_old_file_or_the_new_one(
    tmp_path: Path, size: int, fail_at: int
) -> None:
    """Whichever call fails, the target holds the old bytes, or the new ones once renamed, and no temporary is left."""
    target = tmp_path / "doc.json"
    old, new = b"o" * 100, bytes(range(256)) * (size // 256) + b"n" * (size % 256)
    target.write_bytes(old)
    counting = CountingOps(fail_at=fail_at)
    try:
        atomic_file.replace(target, new, ops=counting.ops)
    except OSError:
        failed = True
    else:
        failed = False
    succeeded = counting.calls[:-1] if failed else counting.calls
    expected = new if "rename" in succeeded else old
    assert (expected, ["doc.json"]) == (target.read_bytes(), os.listdir(tmp_path))


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent import atomic_file

    target = Path(sys.argv[1])
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        atomic_file.replace(target, str(n % 10).encode() * (64 * 1024 + n % 977))
    """
)


@pytest.mark.slow
def test_a_process_killed_while_replacing_leaves_a_whole_version(tmp_path: Path) -> None:
    """After SIGKILL at arbitrary moments the target is always one complete version, never a mix or a prefix."""
    target = tmp_path / "doc"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    seen = []
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], env=env, stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None
            assert b"ready\n" == child.stdout.readline()
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        data = target.read_bytes()
        digit = data[:1]
        seen.append(data == digit * len(data) and 64 * 1024 <= len(data) < 64 * 1024 + 977)
    assert [True] * 5 == seen


def test_create_puts_a_file_in_place_only_once(tmp_path: Path) -> None:
    """The first create wins; a second sees ``False`` and the first one's bytes stay."""
    key = tmp_path / "sketch.key"
    first = atomic_file.create(key, b"a" * 32)
    second = atomic_file.create(key, b"b" * 32)
    assert (True, False, b"a" * 32, ["sketch.key"]) == (first, second, key.read_bytes(), os.listdir(tmp_path))


def test_a_failed_write_removes_the_partial_file(tmp_path: Path) -> None:
    """A write that runs out of space leaves nothing behind."""

    def full(fd: int, data: memoryview) -> int:
        os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, "injected")

    with pytest.raises(OSError) as raised:
        atomic_file.write_new(tmp_path / "half", b"x" * 100, ops=FileOps(write=full))
    assert (errno.ENOSPC, []) == (raised.value.errno, os.listdir(tmp_path))


def test_importing_it_loads_nothing_but_the_standard_library() -> None:
    """A collector may import the helper: it pulls in no third-party module and no other part of the agent."""
    probe = (
        "import sys; before = set(sys.modules); import agent.atomic_file; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, check=True
    )
    assert "['agent', 'agent.atomic_file']" == out.stdout.decode().strip()
