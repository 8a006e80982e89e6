"""The exit codes of every ``agent`` command: one table, the CLI contract (DESIGN.md, Commands).

Every module that exits imports its code from here. ``agent --help`` (and so the
man page, which help2man makes from it) is generated from :data:`EXIT_CODES`;
each command's own list in :mod:`agent.cli_help` and the table in
docs/operations.md are checked against it by tests/agent/test_exits.py.
Stdlib only, so that importing it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

EX_OK = 0
EX_FAIL = 1  # the command's own failure: a collector failed, a document was rejected, heartbeats left
EX_USAGE = 2
EX_NOT_RUNNING = 3  # `agent status`, as LSB's "program is not running"
EX_TEMPFAIL = 75  # sysexits.h: another agent holds the state directory; try again later
EX_CONFIG = 78  # sysexits.h; the unit does not restart on it (RestartPreventExitStatus=78)
# LSB reserves 150-199 of the status exit codes for applications; 3 and 0 keep their systemd meaning.
EX_RUNNING_OUTAGE = 150


@dataclass(frozen=True)
class ExitCode:
    """One exit code and what it means in a sentence, as ``agent --help`` says it."""

    code: int
    summary: str


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EX_OK, "success"),
    ExitCode(EX_FAIL, "the command's own failure"),
    ExitCode(EX_USAGE, "bad usage or unreadable input"),
    ExitCode(EX_NOT_RUNNING, "(status) no daemon runs"),
    ExitCode(EX_TEMPFAIL, "another agent holds the state directory"),
    ExitCode(EX_CONFIG, "configuration error"),
    ExitCode(EX_RUNNING_OUTAGE, "(status) the daemon runs in an outage"),
)


def summary_line(joiner: str = " ") -> str:
    """Every exit code with its summary, ``;``-separated, for ``agent --help``.

    ``joiner`` goes between the words of one entry, so a caller can wrap the line between entries only.
    """
    return "; ".join(joiner.join((str(entry.code), *entry.summary.split())) for entry in EXIT_CODES)
