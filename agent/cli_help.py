"""The words of ``agent --help`` and ``agent COMMAND --help``: what each command does, exits with, reads.

Kept apart from the parser so that cli.py stays about parsing. The exit codes
are the CLI contract (DESIGN.md, Commands; docs/operations.md, Exit codes) and
come from :mod:`agent.exits`: ``agent --help`` lists its table, and each
command's list here holds only codes from it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from agent.exits import (
    EX_CONFIG,
    EX_FAIL,
    EX_NOT_RUNNING,
    EX_OK,
    EX_RUNNING_OUTAGE,
    EX_TEMPFAIL,
    EX_USAGE,
    summary_line,
)


@dataclass(frozen=True)
class CommandHelp:
    """One command's description, exit codes and example."""

    description: str
    exits: tuple[tuple[int, str], ...]
    example: str


CONFIG_ERROR = (EX_CONFIG, "configuration error: one line naming the setting and its environment variable")

HELP: dict[str, CommandHelp] = {
    "run": CommandHelp(
        "The daemon, in the foreground: tick every `interval` seconds (collect, scrub, spool) and deliver "
        "to every configured sink. systemd runs this (Type=notify). SIGTERM and SIGINT stop it cleanly; "
        "SIGHUP reloads the configuration.",
        (
            (EX_OK, "clean stop on SIGTERM/SIGINT"),
            CONFIG_ERROR,
            (EX_TEMPFAIL, "another agent holds the state directory"),
        ),
        "agent run --config /etc/pop-agent/agent.toml",
    ),
    "check": CommandHelp(
        "Every validation `agent run` does, without running: the edition's rules, the token and the upload "
        "component, the settings and POP_AGENT_* variables, pop_id, the state directory, and every configured "
        "path. One line per problem (error: or warning:); nothing is left behind.",
        ((EX_OK, "the daemon would start (warnings may be printed)"), (EX_CONFIG, "at least one error")),
        "agent check --config /etc/pop-agent/agent.toml",
    ),
    "status": CommandHelp(
        "Whether the daemon runs (from the spool's lock), the state directory, edition, telemetry, the spool "
        "on disk, and the daemon's last word: each sink's last ack, the outage state, each collector's result. "
        "Takes no lock and writes nothing.",
        (
            (EX_OK, "the daemon runs and no outage is on"),
            (EX_NOT_RUNNING, "no daemon runs on this state directory (stopped or never started)"),
            (EX_RUNNING_OUTAGE, "the daemon runs, but an outage is on (delivery, collectors or spool)"),
            CONFIG_ERROR,
        ),
        "agent status --json",
    ),
    "scrub": CommandHelp(
        "Run one heartbeat document through the scrubber, as every heartbeat is. Accepted: printed on stdout. "
        "Rejected: JSON paths and reason codes on stderr, never the offending value. Input over 1 MiB is refused.",
        (
            (EX_OK, "accepted"),
            (EX_FAIL, "rejected"),
            (EX_USAGE, "unreadable input (missing, not JSON, too large)"),
            CONFIG_ERROR,
        ),
        "agent --once | agent scrub -",
    ),
    "enqueue": CommandHelp(
        "Scrub, then spool a heartbeat document (an out-of-band drop). Beside a running daemon it is handed "
        "over through spool/incoming/ and scrubbed again on the next tick. Input over 1 MiB is refused.",
        (
            (EX_OK, "spooled or handed over"),
            (EX_FAIL, "rejected, or the spool cannot be written"),
            (EX_USAGE, "unreadable input"),
            CONFIG_ERROR,
        ),
        "agent enqueue /var/lib/pop-agent/spool/rejected/ID.json",
    ),
    "export": CommandHelp(
        "Every pending heartbeat, oldest first, as JSON lines. Reads the spool without locking it.",
        ((EX_OK, "exported"), (EX_FAIL, "the spool or FILE cannot be used"), CONFIG_ERROR),
        "agent export --out backlog.jsonl",
    ),
    "upload": CommandHelp(
        "Drain the spool once, now, to every configured sink, and report what was acknowledged. Stop the "
        "daemon first: it holds the spool and delivers on its own.",
        (
            (EX_OK, "nothing is left"),
            (EX_FAIL, "heartbeats are left, or nothing to send to"),
            (EX_TEMPFAIL, "the daemon holds the spool"),
            CONFIG_ERROR,
        ),
        "systemctl stop pop-agent && agent upload",
    ),
    "config": CommandHelp(
        "The effective configuration as JSON, secrets shown as **********; on stderr, which settings file "
        "and which environment variables (names only) it came from.",
        ((EX_OK, "printed"), CONFIG_ERROR),
        "agent config --no-config",
    ),
    "collectors": CommandHelp(
        "The collectors and sinks this installation has (built-in and plugins), and whether each runs here.",
        ((EX_OK, "listed"), CONFIG_ERROR),
        "agent collectors",
    ),
    "sent": CommandHelp(
        "The sent ledger (<state_dir>/ledger/): one record per request an upload sink or alert hook made, "
        "acknowledged or not: time, sink or hook, destination (no credentials, no query), heartbeat ids and "
        "seq range, bytes, SHA-256 of the body as sent, and the answer. --verify checks every kept body "
        "against its digest and runs the scrubber over it again.",
        (
            (EX_OK, "listed; with --verify, every kept body matches and is clean"),
            (EX_FAIL, "--verify found a mismatch or a finding (named by record, never by value)"),
            (EX_USAGE, "a bad --since, or an unreadable ledger"),
            CONFIG_ERROR,
        ),
        "agent sent --since 2h --json",
    ),
    "egress": CommandHelp(
        "Every destination this build and configuration can contact, per upload sink and alert hook: whether "
        "this artifact holds the code for it (a community build: no upload code present) and whether the "
        "edition and the telemetry setting allow it.",
        ((EX_OK, "listed"), CONFIG_ERROR),
        "agent egress",
    ),
}

ENVIRONMENT = """\
environment:
  POP_AGENT_<SETTING>        any setting, nested with __ (POP_AGENT_SINKS__CENTRAL__URL); an unknown
                             POP_AGENT_* name is a configuration error
  POP_AGENT_CONFIG           the settings file (default /etc/pop-agent/agent.toml if it exists)
  STATE_DIRECTORY            the state directory when state_dir is not set (else ./.pop-agent)
  CREDENTIALS_DIRECTORY      where the systemd credential central-token is read
  NTFY_ALERT_URL, NTFY_ALERT_TOKEN, KUMA_PUSH_URL   the alert hooks (unset: off)"""

GLOBAL_NOTE = (
    "global options (--config, --no-config, --interval, --state-dir, --pop-id, --telemetry, --log-level): "
    "see agent --help"
)


def epilog(name: str) -> str | None:
    """The text after a command's options: exit codes, global options, environment, example."""
    entry = HELP.get(name)
    if entry is None:
        return None
    exits = "\n".join(f"  {code:<5}{meaning}" for code, meaning in entry.exits)
    return f"exit codes:\n{exits}\n\n{GLOBAL_NOTE}\n\n{ENVIRONMENT}\n\nexample:\n  {entry.example}"


def _exits_summary(width: int = 100) -> str:
    """``agent --help``'s exit-code paragraph, wrapped between codes, never inside one's meaning."""
    glued = summary_line(joiner="\0") + ". `agent COMMAND --help` gives each command's own."
    return textwrap.fill("exit codes: " + glued, width=width, subsequent_indent="  ").replace("\0", " ")


MAIN_EPILOG = f"""\
{_exits_summary()}

{ENVIRONMENT}

examples:
  agent check                      validate the configuration as `agent run` would
  agent --once | agent scrub -     one heartbeat, proven clean
  agent status                     is the daemon running, and delivering?"""
