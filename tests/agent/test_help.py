"""Help for people: every command describes itself, its own flags, exit codes, environment and an example."""

from __future__ import annotations

import pytest

from agent.cli import build_parser
from agent.cli_help import HELP


def help_of(*args: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The text `agent ARGS --help` prints."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*args, "--help"])
    assert 0 == exited.value.code
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(HELP))
def test_every_command_has_its_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Description, exit codes, environment and example are there; the global flags are named once, not listed."""
    text = help_of(command, capsys=capsys)
    assert HELP[command].description.split(".")[0] in " ".join(text.split())
    for heading in ("exit codes:", "environment:", "example:", "global options ("):
        assert heading in text
    for code, _ in HELP[command].exits:
        assert f"\n  {code:<5}" in text
    assert "--state-dir STATE_DIR" not in text
    assert "--telemetry {on,off}" not in text


def test_status_help_documents_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """`agent status --help` gives 0, 3 and 150 with their meanings."""
    text = help_of("status", capsys=capsys)
    expected = [
        "  0    the daemon runs and no outage is on",
        "  3    no daemon runs on this state directory (stopped or never started)",
        "  150  the daemon runs, but an outage is on (delivery, collectors or spool)",
    ]
    assert expected == [line for line in text.splitlines() if line.startswith(("  0 ", "  3 ", "  150"))]


def test_global_flags_still_work_after_the_command() -> None:
    """Hidden from a command's help, the global flags are still accepted after it."""
    args = build_parser().parse_args(["status", "--state-dir", "/tmp/x", "--json"])
    assert ("status", "/tmp/x", True) == (args.command, str(args.state_dir), args.json)


def test_main_help_lists_global_flags_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """`agent --help` lists the global flags once, every exit code and the environment."""
    text = help_of(capsys=capsys)
    for needle in (
        "--state-dir STATE_DIR",
        "--no-config",
        "78 configuration error",
        "150 (status)",
        "POP_AGENT_CONFIG",
    ):
        assert needle in text
