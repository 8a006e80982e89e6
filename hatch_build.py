"""Hatchling hooks that bake the edition into each wheel built from this tree.

One tree, three wheels:

- ``community`` (the default): ``pop-agent`` without the upload sinks, so the code
  that could send a heartbeat anywhere does not exist in it.
- ``commercial``: ``pop-agent`` with every sink, plus a generated ``agent/_build.py``
  holding ``EDITION = "commercial"``.
- ``upload``: the separate ``pop-agent-upload`` distribution (``packaging/upload``),
  holding only the upload sinks and pinned to the same ``pop-agent`` version.

The main project picks the edition from ``$POP_AGENT_BUILD_EDITION``; the upload
project fixes it in its hook configuration. Which ``sinks`` entries are upload
code is decided here and nowhere else: everything but :data:`BASE_SINKS`.

The community and commercial wheels also carry the C modules of :data:`NATIVE_MODULES`,
compiled for the building interpreter, and are then tagged for its platform; where
there is no C compiler or no Python headers they stay pure wheels and the code runs
in Python. ``make setup`` builds the same modules in place with :func:`compile_extension`
(``python hatch_build.py SOURCE TARGET``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

EDITION_ENV = "POP_AGENT_BUILD_EDITION"
EDITIONS = ("community", "commercial", "upload")
# The sinks every edition ships: the contract, the retry policy and the local alert hooks.
BASE_SINKS = frozenset({"__init__.py", "base.py", "retry.py", "ntfy.py", "kuma.py", "py.typed"})
_SKIPPED = frozenset({"__pycache__"})
# C modules with a pure-Python fallback: the module's path in the tree (its source is that plus ".c"),
# and what runs in Python when it is not built.
NATIVE_MODULES = {"collectors/_hllscan": "the log scan runs in pure Python"}


def tree_root(project_root: str, config: dict[str, Any]) -> Path:
    """The source tree the wheels are built from (``tree`` is relative to the project root)."""
    return (Path(project_root) / str(config.get("tree", "."))).resolve()


def sinks_entries(tree: Path) -> list[Path]:
    """Every module and subpackage of ``sinks``, sorted by name."""
    return sorted(
        entry
        for entry in (tree / "sinks").iterdir()
        if entry.name not in _SKIPPED
        and not entry.name.startswith(".")
        and (entry.is_dir() or entry.suffix == ".py" or entry.name in BASE_SINKS)
    )


def upload_entries(tree: Path) -> list[Path]:
    """The ``sinks`` modules that deliver heartbeats off the machine."""
    return [entry for entry in sinks_entries(tree) if entry.name not in BASE_SINKS]


def base_entries(tree: Path) -> list[Path]:
    """The ``sinks`` modules every edition ships."""
    return [entry for entry in sinks_entries(tree) if entry.name in BASE_SINKS]


def extension_suffix() -> str:
    """The file name ending of a C module for the running interpreter (``.cpython-311-x86_64-linux-gnu.so``)."""
    return str(sysconfig.get_config_var("EXT_SUFFIX"))


def compile_extension(source: Path, target: Path, *, fallback: str = "its pure-Python fallback runs") -> bool:
    """Compile the C module ``source`` into ``target`` for the running interpreter; whether it worked.

    The compiler is ``$CC``, else the interpreter's own ``CC``, else ``cc``. A missing compiler
    or a failed compile raises nothing: it prints one line on stderr ending in ``fallback``, and
    leaves no ``target`` behind, so that a stale module never outlives a change to its source.
    """
    compiler = shlex.split(os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "") or "cc")
    paths = sysconfig.get_paths()
    includes = dict.fromkeys(f"-I{paths[name]}" for name in ("include", "platinclude"))
    # A running agent may have the old module mapped: the new one replaces it, nothing writes into it.
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    command = [*compiler, "-O2", "-fPIC", "-shared", *includes, "-o", str(scratch), str(source)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        reason = f"no C compiler: {compiler[0]}: {exc.strerror}"
    else:
        if done.returncode == 0:
            os.replace(scratch, target)
            return True
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if "error" in line), lines[0] if lines else "")[:200]
        reason = f"{compiler[0]} exited {done.returncode}" + (f": {first}" if first else "")
    scratch.unlink(missing_ok=True)
    target.unlink(missing_ok=True)
    print(f"warning: {source} not compiled ({reason}); {fallback}", file=sys.stderr)
    return False


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

        chosen = {
            "community": base_entries(tree),
            "commercial": sinks_entries(tree),
            "upload": upload_entries(tree),
        }[edition]
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
        for module, fallback in NATIVE_MODULES.items():
            name = Path(module).name + extension_suffix()
            if compile_extension(tree / f"{module}.c", scratch / name, fallback=fallback):
                force_include[str(scratch / name)] = str(Path(module).with_name(name))
                build_data["pure_python"] = False
                build_data["infer_tag"] = True  # cp311-cp311-linux_x86_64: the module fits this interpreter only

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the generated edition marker and compiled modules once the wheel is written."""
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


def main(argv: list[str]) -> int:
    """``python hatch_build.py SOURCE TARGET``: compile one C module in place; a failure is a notice, not an error."""
    if len(argv) != 3:
        print(f"usage: {argv[0]} SOURCE.c TARGET", file=sys.stderr)
        return 2
    source, target = Path(argv[1]), Path(argv[2])
    fallback = NATIVE_MODULES.get(source.with_suffix("").as_posix(), "its pure-Python fallback runs")
    compile_extension(source, target, fallback=fallback)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
