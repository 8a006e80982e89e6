"""The machine as the Debian package tests see it: builds, dpkg, the installed agent, the file system."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pop-agent", "pop-agent-upload", "pop-agent-commercial")
# Every place the packages, their maintainer scripts or the agent may write.
TOUCHED = ("/opt", "/usr/lib/pop-agent", "/usr/bin", "/etc", "/lib/systemd/system", "/usr/share/doc", "/usr/share/man",
           "/var/lib")  # fmt: skip
PREFIX = Path("/usr/lib/pop-agent")
COMMAND = Path("/usr/bin/pop-agent")
STATE = Path("/var/lib/pop-agent")
CONF = Path("/etc/pop-agent")
UNIT = Path("/lib/systemd/system/pop-agent.service")
BUILD_TIMEOUT = 900
DPKG_TIMEOUT = 300
LOCK_WAIT = 120  # seconds to wait for another package manager run to finish


def tree_version() -> str:
    """The version in agent/version.py."""
    match = re.search(r'__version__ = "([^"]+)"', (REPO / "agent" / "version.py").read_text())
    assert match is not None
    return match.group(1)


class Build:
    """``make deb DEB_VERSION=version`` into ``work``, in the background: started, waited for, or stopped.

    The upgrade tests need a second build of the tree; run beside the tests that
    need only the first, it costs a second core instead of the wall time of a build.
    """

    def __init__(self, version: str, work: Path) -> None:
        self.version = version
        self.dist = work / "dist"
        self.log = work / "make-deb.log"
        self._argv = ["make", "-s", "-f", "mk/deb.mk", "deb", f"DEB_VERSION={version}"]
        self._argv += [f"DEB_DIST={self.dist}", f"DEB_BUILD={work}"]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the build (once)."""
        if self._proc is None:
            with self.log.open("wb") as log:
                # Its own process group, so that stop() reaches dpkg-buildpackage and its children too.
                self._proc = subprocess.Popen(
                    self._argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )

    def wait(self) -> dict[str, Path]:
        """The three packages by name, once the build is done (started now if it was not); raises if it failed."""
        self.start()
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        if code != 0:
            raise subprocess.CalledProcessError(code, self._argv, output=self.log.read_text(errors="replace"))
        return {package: next(self.dist.glob(f"{package}_{self.version}_*.deb")) for package in PACKAGES}

    def stop(self) -> None:
        """End the build if it still runs (a session that never waited for it)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()


def build_debs(version: str, work: Path) -> dict[str, Path]:
    """``make deb DEB_VERSION=version`` into ``work``, to the end; the three packages by name."""
    return Build(version, work).wait()


def run(*command: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command to completion in a plain root environment (stdin closed: a prompt fails, never hangs)."""
    plain = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [str(part) for part in command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DPKG_TIMEOUT,
        env={**plain, "DEBIAN_FRONTEND": "noninteractive", **env},
        cwd="/",
    )


def dpkg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``dpkg ARGS``, waiting its turn while another dpkg or apt on this shared machine holds the lock."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        done = run("dpkg", *args)
        if done.returncode == 0 or "lock" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(1)


def apt_install(*debs: Path) -> subprocess.CompletedProcess[str]:
    """``apt-get install`` of package files, as an operator switches editions."""
    wait = f"DPkg::Lock::Timeout={LOCK_WAIT}"
    return run("apt-get", "install", "--yes", "--no-install-recommends", "-o", wait, *debs)


def agent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed command, with the state directory the unit gives it."""
    return run(COMMAND, *args, POP_AGENT_STATE_DIR=str(STATE))


def status(package: str) -> str:
    """dpkg's state of ``package``: ``installed``, ``config-files``, ``not-installed``..."""
    done = run("dpkg-query", "-W", "-f=${db:Status-Status}", package)
    return done.stdout if done.returncode == 0 else "not-installed"


def contents(deb: Path) -> dict[str, str]:
    """The paths a package holds, each with its ``ls -l``-like mode and ``owner/group``."""
    listing = run("dpkg-deb", "--contents", deb)
    assert listing.returncode == 0, listing.stderr
    found = {}
    for line in listing.stdout.splitlines():
        mode, owner, _size, _date, _time, path, *_link = line.split()
        found[path.removeprefix(".").rstrip("/") or "/"] = f"{mode} {owner}"
    return found


def field(deb: Path, name: str) -> str:
    """One control field of a package."""
    return run("dpkg-deb", "--field", deb, name).stdout.strip()


def relations(deb: Path, name: str) -> set[str]:
    """A relationship field (Depends, Conflicts...) as a set of its comma-separated parts."""
    return {part.strip() for part in field(deb, name).split(",") if part.strip()}


def extract(deb: Path, into: Path) -> Path:
    """The package's files, unpacked under ``into``."""
    done = run("dpkg-deb", "--extract", deb, into)
    assert done.returncode == 0, done.stderr
    return into


def snapshot(roots: Iterable[str] = TOUCHED) -> dict[str, str]:
    """Every path under ``roots`` with its type and mode (and a link's target): what a purge must restore."""
    found: dict[str, str] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        for directory, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                path = os.path.join(directory, name)
                info = os.lstat(path)
                kind = stat.filemode(info.st_mode)
                found[path] = f"{kind} -> {os.readlink(path)}" if stat.S_ISLNK(info.st_mode) else kind
    return found


def foreign_install() -> str | None:
    """Why this machine already has a pop-agent these tests would overwrite, or None."""
    for package in PACKAGES:
        if status(package) != "not-installed":
            return f"the package {package} is on this machine ({status(package)})"
    for path in (PREFIX, CONF, STATE, Path("/opt/pop-agent"), UNIT):
        if os.path.lexists(path):
            return f"{path} exists (an install from source?)"
    return None


def purge_all() -> None:
    """Purge every pop-agent package, whatever state a failed test left them in."""
    dpkg("--purge", *PACKAGES)


def tools_missing() -> list[str]:
    """The programs the build and the checks need that this machine lacks."""
    needed = ("dpkg-buildpackage", "dh", "help2man", "lintian", "apt-get", "systemd-analyze")
    return [tool for tool in needed if shutil.which(tool) is None]
