"""The Debian packages: what each one holds, and what installing, upgrading, switching and purging do to the machine.

These tests install into the real system with dpkg and apt, so they run only as root, and
only on a machine with no pop-agent of its own. Each install test compares the file
system before and after, and purges whatever it installed even when it fails.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging import debmachine as m

VERSION = m.tree_version()
UPGRADE_VERSION = f"{VERSION}.1"  # a rebuild of the same tree, one step higher
SITE = "usr/lib/pop-agent/lib/python3.11/site-packages"
# The upload sinks DESIGN.md names: never in the community package, wherever the tree has them.
NAMED_UPLOAD_SINKS = {"central.py", "remote_write.py", "pushgateway.py", "loki.py"}
TREE_SINKS = {
    entry.name
    for entry in (m.REPO / "sinks").iterdir()
    if entry.name != "__pycache__" and (entry.is_dir() or entry.suffix == ".py" or entry.name == "py.typed")
}
EX_CONFIG = 78

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs the packages into this machine with dpkg: run as root"),
    pytest.mark.skipif(
        bool(m.tools_missing()),
        reason=f"missing {', '.join(m.tools_missing())} (Debian: debhelper dpkg-dev help2man lintian apt systemd)",
    ),
]


@pytest.fixture(scope="session")
def upgrade_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[m.Build]:
    """The upgrade's build (``make deb DEB_VERSION=...``), not yet started; stopped at the end if still running."""
    build = m.Build(UPGRADE_VERSION, tmp_path_factory.mktemp("deb-upgrade"))
    try:
        yield build
    finally:
        build.stop()


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory, upgrade_build: m.Build) -> dict[str, Path]:
    """The three packages, built once per session by ``make deb``; then the upgrade's build starts beside the tests.

    Not before: the first build fills the shared wheelhouse, which two builds at once would race to fill.
    """
    built = m.build_debs(VERSION, tmp_path_factory.mktemp("deb"))
    upgrade_build.start()
    return built


@pytest.fixture(scope="session")
def upgrade_debs(debs: dict[str, Path], upgrade_build: m.Build) -> dict[str, Path]:
    """The same three, rebuilt with a higher version, once that build is done."""
    return upgrade_build.wait()


@pytest.fixture
def machine() -> Iterator[dict[str, str]]:
    """The file system before the test, which must have no pop-agent; every package is purged afterwards."""
    reason = m.foreign_install()
    if reason is not None:
        pytest.skip(f"{reason}: this test would overwrite it")
    before = m.snapshot()
    try:
        yield before
    finally:
        m.purge_all()


def _sinks(deb: Path) -> set[str]:
    """The modules and subpackages a package puts in the environment's ``sinks`` package."""
    prefix = f"/{SITE}/sinks/"
    entries = {path.removeprefix(prefix).split("/")[0] for path in m.contents(deb) if path.startswith(prefix)}
    return entries - {"__pycache__"}


def _py_files(root: Path) -> dict[Path, str]:
    return {path: path.read_text(errors="replace") for path in root.rglob("*.py")}


def _class_names(source: str) -> set[str]:
    return {node.name for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}


def _subcommands() -> list[str]:
    from agent.cli import build_parser

    parser = build_parser()
    actions = [action for action in parser._actions if action.dest == "command"]
    return sorted(actions[0].choices or {})


def _assert_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert 0 == done.returncode, f"{done.args}: {done.stdout}{done.stderr}"


def _check_command() -> list[str]:
    """``agent check`` where the CLI has it, else ``agent config``, which validates the settings."""
    return ["check"] if m.agent("check", "--help").returncode == 0 else ["config"]


# --- what the packages hold ----------------------------------------------------------------


def test_packages_carry_the_tree_version_and_their_relations(debs: dict[str, Path]) -> None:
    """Each has agent/version.py's version; upload pins pop-agent; commercial conflicts with and replaces both."""
    assert [VERSION] * 3 == [m.field(deb, "Version") for deb in debs.values()]
    assert f"pop-agent (= {VERSION})" in m.relations(debs["pop-agent-upload"], "Depends")
    assert {"pop-agent", "pop-agent-upload"} == m.relations(debs["pop-agent-commercial"], "Conflicts")
    assert {"pop-agent", "pop-agent-upload"} == m.relations(debs["pop-agent-commercial"], "Replaces")


def test_community_package_holds_no_upload_code(debs: dict[str, Path], tmp_path: Path) -> None:
    """Neither by file list nor by content: no upload sink module, no copy of one, no class one defines."""
    upload = _sinks(debs["pop-agent-upload"])
    assert NAMED_UPLOAD_SINKS & TREE_SINKS <= upload
    assert set() == upload & _sinks(debs["pop-agent"])

    unpacked = _py_files(m.extract(debs["pop-agent"], tmp_path / "community"))
    for module in sorted(name for name in upload if name.endswith(".py") and name != "__init__.py"):
        source = (m.REPO / "sinks" / module).read_text()
        classes = {name for name in _class_names(source) if not name.startswith("_")}
        # ast only where the text could define one of them: the environment has thousands of modules.
        suspects = {path: text for path, text in unpacked.items() if any(f"class {name}" in text for name in classes)}
        defining = [str(path) for path, text in suspects.items() if classes & _class_names(text)]
        defining += [str(path) for path, text in unpacked.items() if text == source]
        assert [] == defining, module


def test_upload_package_holds_only_upload_code(debs: dict[str, Path], tmp_path: Path) -> None:
    """The upload package holds the tree's sinks the community package lacks, and none of the latter's files."""
    upload = m.contents(debs["pop-agent-upload"])
    assert TREE_SINKS - _sinks(debs["pop-agent"]) == _sinks(debs["pop-agent-upload"])
    outside = [path for path, mode in upload.items() if mode[0] != "d" and not path.startswith(f"/{SITE}/")]
    assert ["/usr/share/doc/pop-agent-upload"] == outside  # a link to pop-agent's documentation
    community = m.contents(debs["pop-agent"])
    assert set() == {path for path, mode in upload.items() if not mode.startswith("d") and path in community}


def test_commercial_package_holds_every_sink(debs: dict[str, Path]) -> None:
    """The commercial package holds the base and upload sinks, and the drop-in that waits for the token."""
    assert TREE_SINKS == _sinks(debs["pop-agent-commercial"])
    assert "/lib/systemd/system/pop-agent.service.d/commercial.conf" in m.contents(debs["pop-agent-commercial"])


@pytest.mark.parametrize("package", ["pop-agent", "pop-agent-commercial"])
def test_base_packages_lay_out_program_unit_config_docs_and_man_page(package: str, debs: dict[str, Path]) -> None:
    """The program, the command, the unit, the conffiles (0640), the docs and the man page; never a token file."""
    files = m.contents(debs[package])
    expected = {
        "/usr/lib/pop-agent/bin/agent": "-rwxr-xr-x root/root",
        "/usr/bin/pop-agent": "lrwxrwxrwx root/root",
        "/lib/systemd/system/pop-agent.service": "-rw-r--r-- root/root",
        "/etc/pop-agent/agent.toml": "-rw-r----- root/adm",
        "/etc/pop-agent/pop-agent.env": "-rw-r----- root/root",
        f"/usr/share/doc/{package}/copyright": "-rw-r--r-- root/root",
        f"/usr/share/doc/{package}/operations.md.gz": "-rw-r--r-- root/root",
        "/usr/share/man/man1/pop-agent.1.gz": "-rw-r--r-- root/root",
    }
    assert expected == {path: files.get(path) for path in expected}
    # The central token is the operator's: no package ships a file for it, under /etc or anywhere.
    assert [] == [path for path in files if "token" in Path(path).name and not path.endswith(".py")]
    conffiles = m.run("dpkg-deb", "--info", debs[package], "conffiles").stdout.split()
    assert ["/etc/pop-agent/agent.toml", "/etc/pop-agent/pop-agent.env"] == sorted(conffiles)


def test_man_page_documents_every_command(debs: dict[str, Path], tmp_path: Path) -> None:
    """The man page, generated from the CLI, has a section for each of its commands."""
    root = m.extract(debs["pop-agent"], tmp_path / "pkg")
    page = gzip.decompress((root / "usr/share/man/man1/pop-agent.1.gz").read_bytes()).decode()
    commands = page.split("\n.SH COMMANDS\n", 1)[1].split("\n.SH ", 1)[0]
    assert _subcommands() == sorted(re.findall(r"^\.SS (\S+)$", commands, flags=re.MULTILINE))
    assert "help2man" in page.splitlines()[0]


def test_lintian_finds_no_error_and_only_documented_warnings(debs: dict[str, Path]) -> None:
    """lintian reports no error on any package, and every warning it reports is listed in docs/packaging.md."""
    done = m.run("lintian", "--fail-on", "error", "--tag-display-limit", "0", *debs.values())
    tags = set(re.findall(r"^([EW]): \S+: (\S+)", done.stdout, flags=re.MULTILINE))
    documented = (m.REPO / "docs" / "packaging.md").read_text()
    assert (0, set()) == (done.returncode, {tag for kind, tag in tags if kind == "E"}), done.stdout
    assert set() == {tag for kind, tag in tags if kind == "W" and f"`{tag}`" not in documented}


# --- on the machine --------------------------------------------------------------------------


def test_community_install_upgrade_remove_purge(
    debs: dict[str, Path], upgrade_debs: dict[str, Path], machine: dict[str, str], tmp_path: Path
) -> None:
    """Install, run, upgrade with a spooled heartbeat and an edited conffile, remove, purge: nothing left behind."""
    _assert_ok(m.dpkg("--install", debs["pop-agent"]))
    assert f"pop-agent {VERSION} (community)" == m.agent("--version").stdout.strip()

    once = m.agent("--once")
    heartbeat = json.loads(once.stdout)
    assert (0, "pop-heartbeat/1", "community") == (once.returncode, heartbeat["schema"], heartbeat["edition"])
    _assert_ok(m.agent(*_check_command()))
    verify = m.run("systemd-analyze", "verify", "--man=no", m.UNIT)
    assert (0, "", "") == (verify.returncode, verify.stdout, verify.stderr)
    unit = m.UNIT.read_text().splitlines()
    expected_lines = ["ExecStart=/usr/lib/pop-agent/bin/agent run", "Documentation=man:pop-agent(1)"]
    assert expected_lines == [line for line in expected_lines if line in unit]
    token = m.CONF / "central-token"
    assert ("-rw-------", 0) == (m.snapshot([str(m.CONF)])[str(token)], token.stat().st_size)
    assert Path("/etc/systemd/system/multi-user.target.wants/pop-agent.service").is_symlink()  # enabled at install
    no_upload = m.run(m.PREFIX / "bin/python", "-c", "import sinks.central")
    assert (1, "ModuleNotFoundError") == (no_upload.returncode, no_upload.stderr.splitlines()[-1].split(":")[0])

    (tmp_path / "heartbeat.json").write_text(once.stdout)
    _assert_ok(m.agent("enqueue", tmp_path / "heartbeat.json"))
    config = m.CONF / "agent.toml"
    edited = config.read_text().replace("\ninterval = 10\n", "\ninterval = 7\n")
    assert edited != config.read_text()
    config.write_text(edited)

    _assert_ok(m.dpkg("--install", upgrade_debs["pop-agent"]))
    assert f"pop-agent {UPGRADE_VERSION} (community)" == m.agent("--version").stdout.strip()
    exported = [json.loads(line)["id"] for line in m.agent("export").stdout.splitlines()]
    assert [heartbeat["id"]] == exported
    assert edited == config.read_text()
    assert 7.0 == json.loads(m.agent("config").stdout)["interval"]

    _assert_ok(m.dpkg("--remove", "pop-agent"))
    assert (False, False) == (m.PREFIX.exists(), m.COMMAND.exists())
    assert [f"{heartbeat['id']}.json"] == [path.name for path in (m.STATE / "spool" / "pending").iterdir()]
    assert edited == config.read_text()

    _assert_ok(m.dpkg("--purge", "pop-agent"))
    after = m.snapshot()
    assert ({}, {}) == (_only_in(after, machine), _only_in(machine, after))


def test_switch_from_community_and_upload_to_commercial(
    debs: dict[str, Path], machine: dict[str, str], tmp_path: Path
) -> None:
    """apt replaces pop-agent and pop-agent-upload by the commercial package, keeping spool and configuration."""
    _assert_ok(m.dpkg("--install", debs["pop-agent"], debs["pop-agent-upload"]))
    _assert_ok(_import_upload_sinks(debs))
    once = m.agent("--once")
    (tmp_path / "heartbeat.json").write_text(once.stdout)
    _assert_ok(m.agent("enqueue", tmp_path / "heartbeat.json"))
    config = m.CONF / "agent.toml"
    edited = config.read_text().replace("\ninterval = 10\n", "\ninterval = 7\n")
    config.write_text(edited)

    _assert_ok(m.apt_install(debs["pop-agent-commercial"]))
    states = {package: m.status(package) for package in m.PACKAGES}
    assert {"pop-agent": "config-files", "pop-agent-upload": "config-files", "pop-agent-commercial": "installed"} == (
        states
    )
    assert f"pop-agent {VERSION} (commercial)" == m.agent("--version").stdout.strip()
    assert [json.loads(once.stdout)["id"]] == [json.loads(line)["id"] for line in m.agent("export").stdout.splitlines()]
    assert edited == config.read_text()
    _assert_ok(_import_upload_sinks(debs))  # with whatever they need that the community edition does not
    verify = m.run("systemd-analyze", "verify", "--man=no", "pop-agent.service")
    assert (0, "", "") == (verify.returncode, verify.stdout, verify.stderr)

    # Without a token systemd skips the start; with one it starts the agent, which names what else it lacks.
    waiting = m.run("systemd-analyze", "condition", "--unit=pop-agent.service")
    assert (True, True) == (waiting.returncode != 0, "ConditionFileNotEmpty=/etc/pop-agent/central-token failed" in
                            waiting.stdout + waiting.stderr)  # fmt: skip
    (m.CONF / "central-token").write_text("a-token-from-central\n")
    _assert_ok(m.run("systemd-analyze", "condition", "--unit=pop-agent.service"))
    refused = m.agent("--once")
    assert (EX_CONFIG, 1) == (refused.returncode, len(refused.stderr.splitlines())), refused.stderr
    assert "sinks.central.url" in refused.stderr

    _assert_ok(m.dpkg("--purge", *m.PACKAGES))
    after = m.snapshot()
    assert ({}, {}) == (_only_in(after, machine), _only_in(machine, after))


def _import_upload_sinks(debs: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """Import every module of the upload package with the installed environment's interpreter."""
    upload = sorted(name for name in _sinks(debs["pop-agent-upload"]) if name not in {"py.typed", "__init__.py"})
    modules = ", ".join(f"sinks.{Path(name).stem}" for name in upload)
    return m.run(m.PREFIX / "bin/python", "-c", f"import {modules}")


def _only_in(left: dict[str, str], right: dict[str, str]) -> dict[str, str]:
    return {path: kind for path, kind in left.items() if right.get(path) != kind}
