"""Extra sections of pop-agent(1) for help2man, from the CLI itself: each command's own --help."""

import argparse
import sys

from agent.cli import build_parser

FILES = {
    "/etc/pop-agent/agent.toml": "the configuration (see /usr/share/doc/pop-agent/configuration.md.gz)",
    "/etc/pop-agent/pop-agent.env": "environment of the service: alert hooks, settings by their environment names",
    "/etc/pop-agent/central-token": "the central token, handed to the service as the systemd credential central-token",
    "/var/lib/pop-agent": "the spool and the agent's state",
}


def roff(text: str) -> str:
    """Text as literal roff: backslashes, hyphens and leading dots escaped."""
    lines = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def main() -> int:
    """Print the help2man include file on stdout."""
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help or "" for choice in commands._choices_actions}
    out = ["[COMMANDS]"]
    for name, command in commands.choices.items():
        out += [f".SS {name}", roff(summaries.get(name, "")), ".PP", ".nf", roff(command.format_help().rstrip()), ".fi"]
    out.append("[FILES]")
    for path, what in FILES.items():
        out += [".TP", f".I {path}", roff(what)]
    out += [
        "[SEE ALSO]",
        "The operations runbook, /usr/share/doc/pop-agent/operations.md.gz",
        "(pop\\-agent\\-commercial: /usr/share/doc/pop\\-agent\\-commercial/), and systemd.exec(5).",
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
