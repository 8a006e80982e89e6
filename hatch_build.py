"""Hatchling hooks that bake the edition into each wheel built from this tree.

One tree, three wheels:

- ``community`` (the default): ``pop-agent`` without ``sinks/``, so the code that
  could send a heartbeat anywhere does not exist in it.
- ``commercial``: ``pop-agent`` with ``sinks/``, plus a generated ``agent/_build.py``
  holding ``EDITION = "commercial"``.
- ``upload``: the separate ``pop-agent-upload`` distribution (``packaging/upload``),
  holding ``sinks/`` only and pinned to the same ``pop-agent`` version.

The main project picks the edition from ``$POP_AGENT_BUILD_EDITION``; the upload
project fixes it in its hook configuration. ``sinks/`` holds upload code and
nothing else (the alert hooks live in ``alerts/``), so it goes whole or not at all.

Every wheel is pure Python (``py3-none-any``): the same files whatever the build host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

EDITION_ENV = "POP_AGENT_BUILD_EDITION"
EDITIONS = ("community", "commercial", "upload")
_SKIPPED = frozenset({"__pycache__"})


def tree_root(project_root: str, config: dict[str, Any]) -> Path:
    """The source tree the wheels are built from (``tree`` is relative to the project root)."""
    return (Path(project_root) / str(config.get("tree", "."))).resolve()


def sinks_entries(tree: Path) -> list[Path]:
    """Every module and subpackage of ``sinks`` (the upload code), sorted by name."""
    return sorted(
        entry
        for entry in (tree / "sinks").iterdir()
        if entry.name not in _SKIPPED
        and not entry.name.startswith(".")
        and (entry.is_dir() or entry.suffix == ".py" or entry.name == "py.typed")
    )


def requested_edition(config: dict[str, Any]) -> str:
    """The edition to build: the hook configuration, else the environment, else community."""
    edition = str(config.get("edition") or os.environ.get(EDITION_ENV) or "community")
    if edition not in EDITIONS:
        raise ValueError(f"{EDITION_ENV}={edition!r}: expected one of {', '.join(EDITIONS)}")
    return edition


class EditionBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Chooses the files of the wheel for the requested edition."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Add the edition's ``sinks`` modules (and the edition marker) to the wheel."""
        self._scratch: str | None = None
        if self.target_name != "wheel" or version == "editable":
            return  # a source checkout or an editable install behaves as community with the upload code present
        tree = tree_root(self.root, self.config)
        edition = requested_edition(self.config)
        project = self.metadata.name
        if edition == "upload" and project == "pop-agent":
            raise ValueError("the upload component is its own project: build packaging/upload")
        if edition != "upload" and project != "pop-agent":
            raise ValueError(f"{project} is only built as the upload component")

        chosen = [] if edition == "community" else sinks_entries(tree)
        if edition == "upload" and not chosen:
            raise ValueError("no upload sinks in this tree")
        force_include = build_data["force_include"]
        for entry in chosen:
            force_include[str(entry)] = f"sinks/{entry.name}"

        if edition == "upload":
            return
        self._scratch = tempfile.mkdtemp(prefix="pop-agent-build-")
        scratch = Path(self._scratch)
        if edition == "commercial":
            marker = scratch / "_build.py"
            marker.write_text(f'"""Generated at build time: the edition of this wheel."""\n\nEDITION = "{edition}"\n')
            force_include[str(marker)] = "agent/_build.py"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the generated edition marker once the wheel is written."""
        if getattr(self, "_scratch", None):
            shutil.rmtree(str(self._scratch), ignore_errors=True)


class UploadMetadataHook(MetadataHookInterface):
    """Pins the upload component to the pop-agent of its own version."""

    PLUGIN_NAME = "custom"

    def update(self, metadata: dict[str, Any]) -> None:
        """``dependencies``: the base project at this component's version, then the hook's own ``dependencies``."""
        tree = tree_root(self.root, self.config)
        with (tree / "pyproject.toml").open("rb") as handle:
            base_name = tomllib.load(handle)["project"]["name"]
        extra = [str(requirement) for requirement in self.config.get("dependencies", [])]
        metadata["dependencies"] = [f"{base_name}=={metadata['version']}", *extra]
