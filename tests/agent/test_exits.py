"""One table of exit codes: the help, the man page's source and the runbook all say what agent/exits.py says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.cli_help import HELP
from agent.exits import EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]


def operations_exit_table() -> list[int]:
    """The codes in the first column of docs/operations.md's "Exit codes" table, in order."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    return [int(match) for match in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)]


def test_the_runbook_table_lists_every_code_once() -> None:
    """docs/operations.md documents exactly the codes of the table, each once."""
    assert sorted(entry.code for entry in EXIT_CODES) == sorted(operations_exit_table())


def test_main_help_gives_every_code_with_its_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    """`agent --help` (help2man's source for the man page) names every code of the table with its summary."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    expected = [f"{entry.code} {entry.summary}" for entry in EXIT_CODES]
    assert expected == [line for line in expected if line in text]


@pytest.mark.parametrize("command", sorted(HELP))
def test_each_command_documents_only_codes_of_the_table(command: str) -> None:
    """A command's own help lists codes that the table defines, each once."""
    codes = [code for code, _ in HELP[command].exits]
    known = {entry.code for entry in EXIT_CODES}
    assert (sorted(set(codes)), []) == (sorted(codes), [code for code in codes if code not in known])


def test_no_module_defines_its_own_exit_codes() -> None:
    """Only agent/exits.py assigns an ``EX_*`` name; every other module imports it."""
    defining = []
    for path in sorted(ROOT.glob("*/*.py")):
        if path.parts[-2] not in {"agent", "collectors", "sinks", "alerts"} or path.name == "exits.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            names = [name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)]
            defining += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.startswith("EX_")]
    assert [] == defining
