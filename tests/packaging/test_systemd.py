"""The systemd unit: it verifies, scores low on exposure, and its sandbox lets the agent work."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "pop-agent.service"
SANDBOX = Path(__file__).resolve().parent / "sandbox_exec.py"
ANALYZE = shutil.which("systemd-analyze")
ANALYZE_CMD = ANALYZE or "systemd-analyze"
SYSTEM_PYTHON = "/usr/bin/python3"
MAX_EXPOSURE = 1.5
SERVICE_UID = 64_999  # stands in for the DynamicUser= id
# Tools in the project venv the agent never imports; left out of the sandbox's copy.
DEV_ONLY = ("mypy*", "*mypyc*", "pip", "pip-*", "setuptools*", "pygments*", "hypothesis*", "_pytest", "pytest*",
            "ruff*", "jsonschema*", "rpds*", "build", "build-*", "hatchling*", "__pycache__")  # fmt: skip
ADM_GID = 4
WAIT = 60.0  # generous bound on the agent's first ticks on a loaded machine; not a timing assertion

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")


def unit_directives(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_unit_directives_match_the_agent() -> None:
    """The unit's restart, watchdog and stop settings agree with the agent's contract."""
    sys.path.insert(0, str(REPO))
    try:
        from agent.settings import Settings
    finally:
        sys.path.remove(str(REPO))
    directives = unit_directives(UNIT.read_text())
    shutdown_deadline = Settings.model_fields["shutdown_deadline"].default
    interval = Settings.model_fields["interval"].default
    assert directives["Type"] == ["notify"]
    assert directives["NotifyAccess"] == ["main"]
    assert directives["RestartPreventExitStatus"] == ["78"]
    assert directives["Restart"] == ["on-failure"]
    assert float(directives["TimeoutStopSec"][0]) > shutdown_deadline
    assert float(directives["WatchdogSec"][0]) > 2 * interval
    assert directives["LoadCredential"] == ["central-token:/etc/pop-agent/central-token"]
    assert directives["StateDirectory"] == ["pop-agent"]
    assert directives["ExecStart"] == ["/opt/pop-agent/bin/agent run"]
    assert directives["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "PREFIX ?= /opt/pop-agent" in (REPO / "mk" / "packaging.mk").read_text()


@needs_analyze
def test_unit_exposure_is_at_most_one_and_a_half() -> None:
    """``systemd-analyze security --offline`` rates the unit 1.5 or lower."""
    done = subprocess.run(
        [ANALYZE_CMD, "security", "--offline=true", "--threshold=15", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
    )
    score = re.search(r"Overall exposure level for pop-agent\.service: (\d+\.\d+)", done.stdout)
    assert score is not None, done.stdout + done.stderr
    assert (done.returncode, float(score.group(1)) <= MAX_EXPOSURE) == (0, True)


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit once its ExecStart binary exists."""
    installed = tmp_path / "pop-agent.service"
    text = UNIT.read_text()
    # The binary only exists after `make install`; point at one that exists, same arguments.
    installed.write_text(text.replace("ExecStart=/opt/pop-agent/bin/agent", f"ExecStart={sys.executable} -m agent"))
    done = subprocess.run([ANALYZE_CMD, "verify", "--man=no", str(installed)], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@needs_analyze
def test_unit_verify_complains_of_nothing_but_the_missing_binary() -> None:
    """The unit as shipped draws no diagnostic except, before install, the absent ExecStart binary."""
    done = subprocess.run([ANALYZE_CMD, "verify", "--man=no", str(UNIT)], capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    allowed = "pop-agent.service: Command /opt/pop-agent/bin/agent is not executable: No such file or directory"
    assert [line for line in lines if line != allowed] == []


# --- the agent under the unit's restrictions -------------------------------------------------


def _expand(group: str) -> set[str]:
    out = subprocess.run(
        [ANALYZE_CMD, "syscall-filter", "--no-pager", group],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        names |= _expand(line) if line.startswith("@") else {line}
    return names


def _unit_syscalls() -> list[str]:
    """The system calls the unit's SystemCallFilter= lines leave, in systemd's own grouping."""
    allowed: set[str] = set()
    for value in unit_directives(UNIT.read_text())["SystemCallFilter"]:
        deny = value.startswith("~")
        groups = value.removeprefix("~").split()
        names = set().union(*(_expand(g) if g.startswith("@") else {g} for g in groups))
        allowed = allowed - names if deny else allowed | names
    return sorted(allowed)


def _sandbox_ready() -> str | None:
    if ANALYZE is None:
        return "systemd-analyze is not installed (Debian: systemd)"
    if os.geteuid() != 0:
        return "the sandbox switches users: needs root"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    if probe.returncode != 0:
        return "python3-seccomp is not installed (Debian: python3-seccomp)"
    return None


needs_sandbox = pytest.mark.skipif(_sandbox_ready() is not None, reason=str(_sandbox_ready()))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[Path, list[str]]]:
    """A world-readable work directory and the command prefix that runs a program as the unit would."""
    work = Path(tempfile.mkdtemp(prefix="pop-agent-sandbox-"))
    work.chmod(0o755)
    policy = work / "policy.json"
    policy.write_text(
        json.dumps({"uid": SERVICE_UID, "gid": SERVICE_UID, "groups": [ADM_GID], "allow": _unit_syscalls()})
    )
    # The installed layout: a venv on the system interpreter (ProtectHome= hides any under /root or /home).
    venv = work / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The source (community with the upload code) and the project venv's runtime dependencies,
    # copied: the unit's user cannot read a checkout under a private directory (mktemp -d, /root).
    source, deps = work / "src", work / "deps"
    for package in ("agent", "alerts", "collectors", "sinks"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(sysconfig.get_paths()["purelib"], deps, ignore=shutil.ignore_patterns(*DEV_ONLY), symlinks=True)
    Path(purelib, "pop_agent_source.pth").write_text(f"{source}\n{deps}\n")
    try:
        yield venv / "bin" / "python", [SYSTEM_PYTHON, str(SANDBOX), str(policy), "--"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


@needs_sandbox
def test_sandbox_enforces_the_unit_restrictions(sandbox: tuple[Path, list[str]]) -> None:
    """Under the sandbox, W+X memory, netlink sockets and privileged calls fail, while logs of group adm read."""
    python, prefix = sandbox
    probe = (
        "import mmap, os, socket\n"
        "def attempt(f):\n"
        "    try:\n        f()\n        return 'allowed'\n"
        "    except OSError as e:\n        return e.errno\n"
        "print([os.getuid() != 0,\n"
        "  attempt(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)),\n"
        "  attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),\n"
        "  attempt(lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))),\n"
        "  attempt(lambda: os.chroot('/')),\n"
        "  attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())])\n"
    )
    done = subprocess.run([*prefix, str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "[True, 1, 97, 1, 1, 'allowed']"), done.stderr


class _Central(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).received.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"accepted": true}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def central() -> Iterator[tuple[str, list[bytes]]]:
    """A central ingest on 127.0.0.1 that accepts every batch and records its bodies."""
    handler: type[_Central] = type("Central", (_Central,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/ingest/v1/heartbeats", handler.received
    finally:
        server.shutdown()
        server.server_close()


@needs_sandbox
@pytest.mark.slow
def test_agent_runs_under_the_unit_restrictions(
    sandbox: tuple[Path, list[str]], central: tuple[str, list[bytes]]
) -> None:
    """Sandboxed like the unit, the agent collects from /proc, notifies systemd, delivers, and stops cleanly."""
    python, prefix = sandbox
    url, received = central
    run = Path(tempfile.mkdtemp(prefix="pop-agent-run-", dir=python.parents[2]))
    state, credentials = run / "state", run / "credentials"
    state.mkdir(mode=0o700)
    credentials.mkdir(mode=0o700)
    (credentials / "central-token").write_text("t0ken-for-tests\n")
    for path in (run, state, credentials, credentials / "central-token"):
        os.chown(path, SERVICE_UID, SERVICE_UID)
    (run / "agent.toml").write_text(f'telemetry = "on"\ninterval = 0.2\n[sinks.central]\nurl = "{url}"\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(run / "notify"))
    os.chown(run / "notify", SERVICE_UID, SERVICE_UID)
    notify.settimeout(0.2)
    env = {
        "PATH": "/usr/bin:/bin",
        "STATE_DIRECTORY": str(state),
        "CREDENTIALS_DIRECTORY": str(credentials),
        "NOTIFY_SOCKET": str(run / "notify"),
        "POP_AGENT_CONFIG": str(run / "agent.toml"),
    }
    process = subprocess.Popen(
        [*prefix, str(python), "-m", "agent", "run"],
        cwd=run,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    messages: list[str] = []
    try:
        give_up = time.monotonic() + WAIT
        while process.poll() is None and time.monotonic() < give_up:
            if any("WATCHDOG=1" in m for m in messages) and received:
                break
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode())
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT)
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(notify.recv(4096).decode())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()
    assert process.returncode == 0, stderr.decode(errors="replace")
    assert {"READY=1", "WATCHDOG=1", "STOPPING=1"} <= {line for m in messages for line in m.splitlines()}
    assert len(received) >= 1
