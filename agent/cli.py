"""The command line: the contract operators and systemd rely on (see DESIGN.md, Commands).

Exit codes come from :mod:`agent.exits`, the one table of them.
Every error is one line on stderr and never holds a secret or a rejected value.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from agent.exits import EX_CONFIG, EX_OK, EX_USAGE


class UsageError(Exception):
    """Bad command-line usage: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _common(*, hidden: bool = False) -> _Parser:
    """Options accepted before or after the command (CLI flags: the strongest settings source).

    ``hidden``: accepted, but left out of a command's own help, which points to ``agent --help`` instead.
    """

    def shown(text: str) -> str:
        return argparse.SUPPRESS if hidden else text

    common = _Parser(add_help=False)
    common.add_argument(
        "--config", type=Path, metavar="FILE", default=argparse.SUPPRESS, help=shown("TOML settings file")
    )
    common.add_argument(
        "--no-config",
        action="store_true",
        default=argparse.SUPPRESS,
        help=shown("read no settings file, not even POP_AGENT_CONFIG's: embedded defaults, environment, flags"),
    )
    common.add_argument("--interval", type=float, default=argparse.SUPPRESS, help=shown("seconds between ticks"))
    common.add_argument(
        "--state-dir", type=Path, default=argparse.SUPPRESS, help=shown("where the spool and state live")
    )
    common.add_argument("--pop-id", default=argparse.SUPPRESS, help=shown("this POP's id"))
    common.add_argument(
        "--telemetry", choices=("on", "off"), default=argparse.SUPPRESS, help=shown("let heartbeats leave")
    )
    common.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=argparse.SUPPRESS,
        help=shown("least important log lines shown (default info)"),
    )
    return common


def _document(commands: Any) -> None:
    """Give every command its description, exit codes, environment and example."""
    from agent.cli_help import HELP, epilog

    for name, sub in commands.choices.items():
        if name in HELP:
            sub.description = HELP[name].description
            sub.epilog = epilog(name)
            sub.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    """The ``agent`` command line: global options, then one sub-parser per command."""
    from agent.cli_help import MAIN_EPILOG

    parser = _Parser(
        prog="agent",
        description="pop-agent: the POP heartbeat agent. Without a command: run the daemon.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    common = _common(hidden=True)
    parser.add_argument("--version", action="store_true", help="print version and edition")
    parser.add_argument("--once", action="store_true", help="one tick: print the heartbeat; no spool, no network")
    parser.add_argument("--push", action="store_true", help="with --once: one tick through the spool and the sinks")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="the daemon, in the foreground (the default)")
    scrub = commands.add_parser("scrub", parents=[common], help="run one heartbeat document through the scrubber")
    scrub.add_argument("file", nargs="?", default="-", help="a file, or - for stdin")
    status = commands.add_parser("status", parents=[common], help="the agent's state, spool and delivery")
    status.add_argument("--json", action="store_true", help="machine-readable")
    export = commands.add_parser("export", parents=[common], help="pending heartbeats as JSON lines")
    export.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    enqueue = commands.add_parser("enqueue", parents=[common], help="scrub, then spool a heartbeat document")
    enqueue.add_argument("file", help="a file, or - for stdin")
    commands.add_parser("upload", parents=[common], help="drain the spool once, now")
    commands.add_parser("config", parents=[common], help="the effective configuration, secrets masked")
    commands.add_parser("check", parents=[common], help="every validation `agent run` does, without running")
    commands.add_parser("collectors", parents=[common], help="the collectors and sinks available")
    _add_audit_commands(commands, common)
    _document(commands)
    return parser


def _add_audit_commands(commands: Any, common: _Parser) -> None:
    sent = commands.add_parser("sent", parents=[common], help="the ledger of every request sent off the machine")
    sent.add_argument("--since", metavar="DURATION", help="only requests this long ago or later: 30s, 15m, 2h, 7d")
    sent.add_argument("--json", action="store_true", help="one JSON object per request")
    sent.add_argument("--verify", action="store_true", help="check and scrub again every kept body")
    commands.add_parser("egress", parents=[common], help="every destination this build and configuration can reach")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agent`` console script."""
    from agent.errors import ConfigError

    # A SIGTERM that arrives before the daemon's own handlers are in place (systemd
    # stopping a unit that is still starting) is a clean stop too, not a death by signal.
    signal.signal(signal.SIGTERM, _stop_early)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.version:
        from agent.edition import edition
        from agent.version import __version__

        print(f"pop-agent {__version__} ({edition()})")
        return EX_OK
    if args.push and not args.once:
        print("agent: --push goes with --once", file=sys.stderr)
        return EX_USAGE
    command = "once" if args.once else (args.command or "run")
    handler: Callable[[Any, Any], int] = COMMANDS[command]
    try:
        settings = _settings(args)
        from agent import logs
        from agent.wiring import secrets_of

        logs.configure(secrets=secrets_of(settings), level=getattr(args, "log_level", "info"))
        return handler(settings, args)
    except ConfigError as exc:
        if command == "check":
            for problem in exc.problems:
                print(f"error: {problem}")
        else:
            from agent.logs import error_line

            error_line(f"agent: configuration error: {exc}")
        return EX_CONFIG
    except KeyboardInterrupt:
        return EX_OK
    except BrokenPipeError:
        # `agent status | head`: the reader left; say nothing more and exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK


def _stop_early(signum: int, frame: object) -> None:
    raise SystemExit(EX_OK)


def _settings(args: argparse.Namespace) -> Any:
    from agent.errors import ConfigError
    from agent.settings import load_settings

    overrides = {
        "interval": getattr(args, "interval", None),
        "state_dir": getattr(args, "state_dir", None),
        "pop_id": getattr(args, "pop_id", None),
        "telemetry": getattr(args, "telemetry", None),
    }
    if getattr(args, "no_config", False) and getattr(args, "config", None) is not None:
        raise ConfigError("--config and --no-config contradict each other")
    return load_settings(
        getattr(args, "config", None), use_system_file=not getattr(args, "no_config", False), **overrides
    )


def _cmd_run(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import run_daemon

    # Until the daemon's own handler is in place, a SIGHUP (a reload sent too early) must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return run_daemon(settings, load=lambda: _settings(args))


def _cmd_once(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import once, once_push

    return once_push(settings) if args.push else once(settings)


def _cmd_scrub(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import scrub_document

    return scrub_document(settings, args.file)


def _cmd_status(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import status

    return status(settings, as_json=args.json)


def _cmd_export(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import export

    return export(settings, args.out)


def _cmd_enqueue(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import enqueue

    return enqueue(settings, args.file)


def _cmd_upload(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import upload

    return upload(settings)


def _cmd_config(settings: Any, args: argparse.Namespace) -> int:
    from agent.settings import config_file_path, masked_dump
    from agent.settings_env import environment_used

    path = config_file_path(getattr(args, "config", None), use_system_file=not getattr(args, "no_config", False))
    # Where the settings came from goes to stderr, so stdout stays the configuration as JSON.
    print(f"agent: config file: {path if path is not None else 'none (embedded defaults)'}", file=sys.stderr)
    print(f"agent: environment: {', '.join(environment_used()) or 'none'}", file=sys.stderr)
    print(json.dumps(masked_dump(settings), indent=2, sort_keys=True))
    return EX_OK


def _cmd_check(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import check

    return check(settings)


def _cmd_collectors(settings: Any, args: argparse.Namespace) -> int:
    from agent.app import list_plugins

    return list_plugins(settings)


def _cmd_sent(settings: Any, args: argparse.Namespace) -> int:
    from agent.audit import sent

    return sent(settings, since=args.since, as_json=args.json, verify_bodies=args.verify)


def _cmd_egress(settings: Any, args: argparse.Namespace) -> int:
    from agent.audit import egress

    return egress(settings)


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "run": _cmd_run,
    "once": _cmd_once,
    "scrub": _cmd_scrub,
    "status": _cmd_status,
    "export": _cmd_export,
    "enqueue": _cmd_enqueue,
    "upload": _cmd_upload,
    "config": _cmd_config,
    "check": _cmd_check,
    "collectors": _cmd_collectors,
    "sent": _cmd_sent,
    "egress": _cmd_egress,
}

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
