"""The spool's modules import one another one way only, and each stays small."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
SPOOL_MODULES = ("spool", "spool_store", "spool_index", "spool_cursors", "spool_io", "aside", "atomic_file")


def agent_imports(module: str) -> set[str]:
    """The ``agent`` modules that ``agent/<module>.py`` imports."""
    tree = ast.parse((AGENT / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "agent":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent."):
            found.add(node.module.removeprefix("agent."))
    return found & set(SPOOL_MODULES)


def test_the_spool_modules_import_one_way() -> None:
    """The facade uses the parts, the cursors use the index, the store uses the file helpers; nothing points back."""
    expected = {
        "spool": {"atomic_file", "spool_cursors", "spool_index", "spool_io", "spool_store"},
        "spool_store": {"aside", "atomic_file", "spool_io"},
        "spool_cursors": {"spool_index"},
        "spool_index": set(),
        "spool_io": {"atomic_file"},
        "aside": {"atomic_file"},
        "atomic_file": set(),
    }
    assert expected == {module: agent_imports(module) for module in SPOOL_MODULES}


def test_each_spool_module_stays_under_about_400_lines() -> None:
    """No spool module grows past the project's module size."""
    sizes = {module: len((AGENT / f"{module}.py").read_text().splitlines()) for module in SPOOL_MODULES}
    assert {} == {module: size for module, size in sizes.items() if size > 410}
