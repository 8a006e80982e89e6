"""Start-up validation: what `agent run` refuses to start with, and what `agent check` reports.

One code path for both. The daemon builds its parts through :func:`wire` and
refuses to start (exit 78) on any error it finds; `agent check` calls the same
function, prints every finding on its own line and throws the parts away. Errors
stop the daemon; warnings (a configured log that does not exist yet) do not: the
daemon runs, and the collector reports ``missing`` until the path appears.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.collecting import CollectorSlot
from agent.edition import Edition
from agent.errors import ConfigError
from agent.plugin_tables import unread_tables
from agent.plugins import discover
from agent.sample import MetricSpec
from agent.scrubber import Allowlist
from agent.settings import Settings, configured_paths
from agent.wiring import allowed_metrics, build_collectors, build_sinks, telemetry_enabled

if TYPE_CHECKING:
    from sinks.base import Sink  # the contract ships with the upload code

Level = Literal["error", "warning"]
ERROR: Level = "error"
WARNING: Level = "warning"
_PROBE = ".pop-agent-probe"


@dataclass(frozen=True)
class Finding:
    """One problem with the configuration, worded for the operator; never holds a secret."""

    level: Level
    text: str


@dataclass
class Wiring:
    """The parts one agent process runs, built from its settings."""

    telemetry: bool = False
    collectors: list[CollectorSlot] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    allowed: Allowlist = field(default_factory=Allowlist)  # the scrubber's allowlist for these collectors

    @property
    def errors(self) -> list[Finding]:
        """The findings that stop the daemon."""
        return [finding for finding in self.findings if finding.level == ERROR]


def wire(
    settings: Settings, edition: Edition, *, with_sinks: bool = True, extra_metrics: tuple[MetricSpec, ...] = ()
) -> Wiring:
    """Build collectors and sinks the way the daemon does, collecting every problem on the way.

    Nothing is started: no file is opened for writing, no connection made.
    """
    wiring = Wiring()
    plugins = settings.plugins or discover()
    try:
        wiring.telemetry = telemetry_enabled(settings, edition)
    except ConfigError as exc:
        wiring.findings.extend(Finding(ERROR, problem) for problem in exc.problems)
    try:
        wiring.collectors = build_collectors(settings, plugins)
        wiring.allowed = allowed_metrics(wiring.collectors, extra_metrics)
    except ConfigError as exc:
        wiring.findings.extend(Finding(ERROR, problem) for problem in exc.problems)
    if with_sinks and wiring.telemetry:
        try:
            wiring.sinks = build_sinks(settings, wiring.telemetry, plugins)
        except ConfigError as exc:
            wiring.findings.extend(Finding(ERROR, problem) for problem in exc.problems)
    wiring.findings.extend(Finding(WARNING, text) for text in missing_paths(settings))
    if not wiring.telemetry:
        wiring.findings.extend(
            Finding(WARNING, f"sinks.{name}: this build has no code for the sink; the table is ignored")
            for name, _ in unread_tables(settings.sinks)
        )
    return wiring


def missing_paths(settings: Settings) -> list[str]:
    """A line for each configured path that does not exist or cannot be read by this process."""
    lines = []
    for _, name, path in configured_paths(settings):
        if not path.exists():
            lines.append(f"{name} {path}: does not exist (the collector reports 'missing' until it does)")
        elif not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            lines.append(f"{name} {path}: not readable by this user")
    return lines


def prepare_state_dir(path: Path, *, keep: bool = True) -> None:
    """Create the state directory if needed and prove it takes a file; a :class:`ConfigError` if not.

    With ``keep=False`` (for `agent check`) whatever this created is removed again.
    """
    where = f"state_dir (env POP_AGENT_STATE_DIR) {path}"
    created: list[Path] = []
    try:
        missing = [parent for parent in (path, *path.parents) if not parent.exists()]
        for directory in reversed(missing):
            directory.mkdir(mode=0o700)
            created.append(directory)
        if not path.is_dir():
            raise ConfigError(f"{where}: is not a directory")
        # One name per process: two commands starting at once must not remove each other's probe.
        probe = path / f"{_PROBE}.{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        probe.unlink(missing_ok=True)
    except OSError as exc:
        reason = "not writable" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "cannot be created"
        raise ConfigError(f"{where}: {reason} ({exc.strerror})") from None
    finally:
        if not keep:
            for directory in reversed(created):
                with contextlib.suppress(OSError):
                    directory.rmdir()
