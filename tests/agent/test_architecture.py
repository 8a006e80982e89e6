"""docs/architecture.md's newcomer walk-through names real files and real code, at most eight files, none twice."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_FILES = 8


def walk_through() -> list[tuple[str, str]]:
    """Each numbered step of "One heartbeat, file by file": its file and the text that says what to read there."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## One heartbeat, file by file\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `([^`]+)`:(.*?)(?=^\d+\. |\n\n|\Z)", section, flags=re.MULTILINE | re.DOTALL)


def defined_names(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and ``Class.method`` for every method."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return names


def test_at_most_eight_files_none_twice() -> None:
    """The walk-through lists at most eight files, each once, each of them in the tree."""
    files = [path for path, _ in walk_through()]
    assert (True, len(files), []) == (
        0 < len(files) <= MAX_FILES,
        len(set(files)),
        [path for path in files if not (ROOT / path).is_file()],
    )


def test_every_class_method_named_is_in_its_file() -> None:
    """Each ``Class.method`` a step tells the reader to read is defined in that step's file."""
    missing = []
    for path, text in walk_through():
        named = re.findall(r"`([A-Z][A-Za-z0-9]*\.[a-z_][a-z0-9_]*)`", text)
        missing += [f"{path}: {name}" for name in named if name not in defined_names(ROOT / path)]
    assert [] == missing
