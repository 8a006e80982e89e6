"""The bad-input matrix: every command against bad settings, bad state directories and bad input.

Each case gives a defined exit code and at most one line on stderr, never a
traceback. Cases that fail before anything runs are driven through the CLI's
own entry point in this process (fast); the rest run the real program, and the
cases that need an unprivileged user run it as ``nobody`` (root reads any directory).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent import logs
from agent.cli import main
from tests.conftest import agent_env
from tests.heartbeats import make_heartbeat

# Each command as a user types it; DOC stands for a valid heartbeat document.
COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("run",),
    "once": ("--once",),
    "push": ("--once", "--push"),
    "scrub": ("scrub", "DOC"),
    "status": ("status",),
    "check": ("check",),
    "export": ("export",),
    "enqueue": ("enqueue", "DOC"),
    "upload": ("upload",),
    "config": ("config",),
    "collectors": ("collectors",),
}
BAD_SETTINGS = {
    "bad_toml": "interval = = 1\n",
    "unknown_key": "colour = 'blue'\n",
    "wrong_type": "interval = 'fast'\n",
}
# A state directory that is absent is normal; the rest are the operator's to fix.
ABSENT = {"run": None, "once": 0, "push": 1, "scrub": 0, "status": 3, "check": 0, "export": 0, "enqueue": 0,
          "upload": 1, "config": 0, "collectors": 0}  # fmt: skip
UNWRITABLE = {"run": 78, "once": 0, "push": 1, "scrub": 0, "status": 3, "check": 78, "export": 0, "enqueue": 78,
              "upload": 1, "config": 0, "collectors": 0}  # fmt: skip


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment `run_agent` gives the program, applied to this process; SIGTERM's handler restored."""
    for key, value in agent_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    for key in list(os.environ):
        if key.startswith(("NTFY_", "KUMA_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    # structlog is configured once per process, caching its loggers on first use: configured here, every
    # later test in this process would log to this test's captured (closed) stderr. These cases print
    # their one line; they log nothing.
    monkeypatch.setattr(logs, "configure", lambda **kwargs: None)
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def document(tmp_path: Path) -> Path:
    """A heartbeat document the scrubber accepts."""
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(make_heartbeat()))
    return path


def argv(name: str, doc: Path) -> list[str]:
    return [str(doc) if arg == "DOC" else arg for arg in COMMANDS[name]]


def assert_one_line(code: int, expected: int, out: str, err: str) -> None:
    """The exit code is the defined one; a failure says so in one line; nothing is a traceback.

    Exit 3 is `agent status`'s answer "not running", not a failure: its report is on stdout.
    """
    assert expected == code, err
    assert "Traceback" not in out + err
    if code not in (0, 3):
        said = err if err.strip() else out
        assert 1 == len(said.strip().splitlines()), said


@pytest.mark.usefixtures("in_process")
@pytest.mark.parametrize("setting", sorted(BAD_SETTINGS))
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_settings_file(
    name: str, setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A settings file with bad TOML, an unknown key or a wrong type stops every command with 78."""
    config = tmp_path / "bad.toml"
    config.write_text(BAD_SETTINGS[setting])
    monkeypatch.setenv("POP_AGENT_CONFIG", str(config))
    code = main(argv(name, document(tmp_path)))
    captured = capsys.readouterr()
    assert_one_line(code, 78, captured.out, captured.err)


@pytest.mark.usefixtures("in_process")
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_state_dir_is_a_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state directory that is a file stops every command with 78."""
    (tmp_path / "state").write_text("not a directory")
    code = main(argv(name, document(tmp_path)))
    captured = capsys.readouterr()
    assert_one_line(code, 78, captured.out, captured.err)


def run_program(args: list[str], env: dict[str, str], cwd: Path, *, as_nobody: bool = False) -> tuple[int, str, str]:
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode, result.stdout, result.stderr


def run_all(cases: dict[str, int | None], tmp_path: Path, state_dir: Path, *, as_nobody: bool = False) -> None:
    """Every command with a defined outcome, four at a time: the real program, each in a fresh directory."""
    doc = document(tmp_path)
    doc.chmod(0o644)

    def one(name: str) -> tuple[str, int, str, str]:
        cwd = tmp_path / f"cwd-{name}"
        cwd.mkdir(mode=0o777)
        cwd.chmod(0o777)
        env = agent_env(cwd, POP_AGENT_STATE_DIR=str(state_dir))
        (cwd / "empty.toml").chmod(0o644)
        return (name, *run_program(argv(name, doc), env, cwd, as_nobody=as_nobody))

    names = [name for name, expected in cases.items() if expected is not None]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, names))
    for name, code, out, err in results:
        assert_one_line(code, cases[name] or 0, out, err)
        if code == 78:
            assert "state_dir (env POP_AGENT_STATE_DIR)" in out + err, (name, out + err)


def test_state_dir_absent(tmp_path: Path) -> None:
    """An absent state directory: each command's normal first-run outcome, nothing more."""
    run_all(ABSENT, tmp_path, tmp_path / "absent")


def nobody_can_run() -> str | None:
    """Why the unprivileged cases cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        return "setpriv is not installed"
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", "import agent.cli"],
        capture_output=True,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    return None if probe.returncode == 0 else "this Python cannot be run as nobody"


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user can traverse (pytest's own are private to root), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pop-agent-matrix-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for directory in (path / "state",):
            if directory.exists():
                directory.chmod(0o700)
        shutil.rmtree(path, ignore_errors=True)


def test_state_dir_unreadable(shared_tmp: Path) -> None:
    """A state directory this user cannot read stops every command with 78."""
    if (reason := nobody_can_run()) is not None:
        pytest.skip(reason)
    state_dir = shared_tmp / "state"
    state_dir.mkdir(mode=0o000)
    run_all(dict.fromkeys(COMMANDS, 78), shared_tmp, state_dir, as_nobody=os.geteuid() == 0)


def test_state_dir_unwritable(shared_tmp: Path) -> None:
    """A state directory this user can read but not write: the commands that write stop with 78."""
    if (reason := nobody_can_run()) is not None:
        pytest.skip(reason)
    state_dir = shared_tmp / "state"
    state_dir.mkdir(mode=0o555)
    run_all(UNWRITABLE, shared_tmp, state_dir, as_nobody=os.geteuid() == 0)


@pytest.mark.usefixtures("in_process")
@pytest.mark.parametrize("name", ["scrub", "enqueue"])
@pytest.mark.parametrize(
    ("kind", "expected"),
    [("fifo", "not a regular file"), ("empty", "not JSON"), ("huge", "larger than 1048576 bytes")],
)
def test_bad_document_file(
    name: str, kind: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO (which would block a reader), an empty file or one over the cap: exit 2, one line, at once."""
    path = tmp_path / f"{kind}.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(b"" if kind == "empty" else b" " * (2 * 1_048_576))
    code = main([name, str(path)])
    captured = capsys.readouterr()
    assert_one_line(code, 2, captured.out, captured.err)
    assert expected in captured.err
    assert not (tmp_path / "state" / "spool" / "pending").exists() or not any(
        (tmp_path / "state" / "spool" / "pending").iterdir()
    )


@pytest.mark.usefixtures("in_process")
@pytest.mark.parametrize("name", ["scrub", "enqueue"])
@pytest.mark.parametrize(("data", "expected"), [(b"", "not JSON"), (b"[" * 2_000_000, "larger than 1048576 bytes")])
def test_bad_document_on_stdin(
    name: str, data: bytes, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Empty or oversized standard input: exit 2 and one line naming the problem."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code = main([name, "-"])
    captured = capsys.readouterr()
    assert_one_line(code, 2, captured.out, captured.err)
    assert expected in captured.err
