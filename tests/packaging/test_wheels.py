"""The wheels per edition: what each one holds, and what each one does once installed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename

from hatch_build import compile_extension

REPO = Path(__file__).resolve().parents[2]
EDITIONS = ("community", "commercial", "upload")
# What the community wheel may hold of sinks/: the contract, retry policy and local alert hooks.
BASE_SINKS = {"__init__.py", "base.py", "retry.py", "ntfy.py", "kuma.py", "py.typed"}
NAMED_UPLOAD_SINKS = {
    "sinks/central.py",
    "sinks/credentials.py",
    "sinks/pushgateway.py",
    "sinks/exposition.py",
    "sinks/series.py",
    "sinks/loki.py",
    "sinks/remote_write.py",
    "sinks/remote_write_body.py",
    "sinks/prompb.py",
}
TREE_PARTS = ("pyproject.toml", "hatch_build.py", "agent", "collectors", "sinks", "packaging", "mk", "systemd", "docs")
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "agent" / "version.py").read_text()).group(1)  # type: ignore[union-attr]
EX_CONFIG = 78
TICKS = 3
WAIT = 60.0  # generous bound on the agent's first ticks on a loaded machine; not a timing assertion
_CC = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]
needs_compiler = pytest.mark.skipif(
    shutil.which(_CC) is None or not Path(sysconfig.get_paths()["include"], "Python.h").is_file(),
    reason=f"no C compiler ({_CC}) or no Python headers: the wheels stay pure (Debian: gcc libc6-dev python3-dev)",
)


def _payload(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if ".dist-info/" not in name}


def _metadata(wheel: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    header = text.split("\n\n", 1)[0]
    return [tuple(line.split(": ", 1)) for line in header.splitlines() if ": " in line]  # type: ignore[misc]


def _platform_tagged(wheel: Path) -> bool:
    """Whether the wheel is tagged for this interpreter and platform only, rather than ``py3-none-any``."""
    tags = parse_wheel_filename(wheel.name)[3]
    return all(tag.platform != "any" for tag in tags) and bool(tags & set(sys_tags()))


def _tree_sinks(tree: Path) -> set[str]:
    return {
        f"sinks/{entry.name}"
        for entry in (tree / "sinks").iterdir()
        if entry.suffix == ".py" or (entry.is_dir() and entry.name != "__pycache__")
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the source tree, so that builds neither race other work in the checkout nor touch it.

    Compiled modules of the checkout are left out: a wheel that holds one compiled it itself.
    """
    root = tmp_path_factory.mktemp("tree")
    for part in TREE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(source, root / part)
    readme = REPO / "README.md"
    (root / "README.md").write_text(readme.read_text() if readme.exists() else "pop-agent\n")
    return root


@pytest.fixture(scope="module")
def wheels(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One wheel per edition, built by ``make wheel EDITION=...``."""
    dist = tmp_path_factory.mktemp("dist")
    built = {}
    for edition in EDITIONS:
        subprocess.run(
            [
                "make",
                "-s",
                "-f",
                "mk/packaging.mk",
                "wheel",
                f"EDITION={edition}",
                f"PYTHON={sys.executable}",
                f"DIST={dist}",
            ],
            cwd=tree,
            check=True,
            capture_output=True,
        )
        (built[edition],) = (dist / edition).glob("*.whl")
    return built


@pytest.fixture(scope="module")
def deps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project venv's third-party packages, without anything of pop-agent itself."""
    deps = tmp_path_factory.mktemp("deps")
    ours = ("agent", "collectors", "sinks", "pop_agent", "__editable__", "_pop_agent")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.startswith(ours) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    return deps


@pytest.fixture
def install(tmp_path: Path, deps_dir: Path) -> Iterator[object]:
    """Factory: a fresh virtual environment holding the given wheels; returns its ``bin`` directory."""

    def make(name: str, *wheel_files: Path) -> Path:
        root = tmp_path / name
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
        python = root / "bin" / "python"
        purelib = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "--no-deps",
                "--no-index",
                "--disable-pip-version-check",
                "--quiet",
                *map(str, wheel_files),
            ],
            check=True,
        )
        # Runtime dependencies without the network: the project venv's, after the wheel's own files.
        (Path(purelib) / "zz_pop_agent_test_deps.pth").write_text(f"{deps_dir}\n")
        return root / "bin"

    yield make


def _env(tmp_path: Path, config: str) -> dict[str, str]:
    (tmp_path / "agent.toml").write_text(config)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "POP_AGENT_CONFIG": str(tmp_path / "agent.toml"),
        "POP_AGENT_STATE_DIR": str(tmp_path / "state"),
    }


def _pending(tmp_path: Path) -> int:
    pending = tmp_path / "state" / "spool" / "pending"
    return len(list(pending.glob("*.json"))) if pending.is_dir() else 0


def test_community_wheel_lacks_upload_sinks(wheels: dict[str, Path], tree: Path) -> None:
    """The community wheel has the base sinks and not one module of upload code, nor an edition marker."""
    files = _payload(wheels["community"])
    sinks = {name for name in files if name.startswith("sinks/")}
    assert set() == NAMED_UPLOAD_SINKS & files
    assert {f"sinks/{name}" for name in BASE_SINKS} & _tree_sinks(tree) == sinks
    assert "agent/_build.py" not in files
    assert {"agent/__init__.py", "agent/cli.py", "collectors/__init__.py"} <= files


def test_commercial_wheel_has_every_sink_and_bakes_edition(wheels: dict[str, Path], tree: Path) -> None:
    """The commercial wheel holds every sink of the tree and ``agent/_build.py`` saying commercial."""
    files = _payload(wheels["commercial"])
    assert _tree_sinks(tree) == {name for name in files if name.startswith("sinks/")}
    assert files >= NAMED_UPLOAD_SINKS
    with zipfile.ZipFile(wheels["commercial"]) as archive:
        namespace: dict[str, object] = {}
        exec(archive.read("agent/_build.py").decode(), namespace)
    assert namespace["EDITION"] == "commercial"


def test_upload_wheel_holds_only_upload_sinks(wheels: dict[str, Path], tree: Path) -> None:
    """The upload component holds exactly the upload sinks and pins pop-agent to its own version."""
    files = _payload(wheels["upload"])
    expected = {name for name in _tree_sinks(tree) if name.removeprefix("sinks/") not in BASE_SINKS}
    assert expected == files
    assert files >= NAMED_UPLOAD_SINKS
    metadata = _metadata(wheels["upload"])
    assert ("Name", "pop-agent-upload") in metadata
    assert ("Version", VERSION) in metadata
    assert sorted([f"pop-agent=={VERSION}", "cramjam>=2.8"]) == sorted(v for k, v in metadata if k == "Requires-Dist")


def test_only_the_upload_component_requires_snappy(wheels: dict[str, Path]) -> None:
    """cramjam (remote write's snappy) is a dependency of the upload component, never of the base wheels."""
    for edition in ("community", "commercial"):
        required = [value for key, value in _metadata(wheels[edition]) if key == "Requires-Dist"]
        assert [] == [value for value in required if value.startswith("cramjam") and "extra ==" not in value]
    assert "sinks/remote_write.py" not in _payload(wheels["community"])
    assert "sinks/remote_write.py" in _payload(wheels["upload"])


def test_editions_split_the_tree_exactly(wheels: dict[str, Path], tree: Path) -> None:
    """Community plus upload is the commercial wheel's code, with no file in both."""
    community, upload = _payload(wheels["community"]), _payload(wheels["upload"])
    assert set() == community & upload
    assert _payload(wheels["commercial"]) - {"agent/_build.py"} == community | upload


def test_builds_leave_no_edition_marker_in_the_tree(wheels: dict[str, Path], tree: Path) -> None:
    """The generated ``agent/_build.py`` exists only inside the commercial wheel."""
    assert [path for path in (tree / "agent", REPO / "agent") if (path / "_build.py").exists()] == []


@needs_compiler
@pytest.mark.parametrize("edition", ["community", "commercial"])
def test_base_wheels_carry_the_compiled_log_scan(edition: str, wheels: dict[str, Path], tree: Path) -> None:
    """The community and commercial wheels hold the compiled ``collectors._hllscan`` and are tagged for it."""
    native = {name for name in _payload(wheels[edition]) if name.endswith(".so")}
    assert [name.split(".")[0] for name in native] == ["collectors/_hllscan"]
    assert _platform_tagged(wheels[edition]), wheels[edition].name
    assert list((tree / "collectors").glob("*.so")) == []  # compiled by the build, into the wheel only


def test_upload_wheel_is_pure(wheels: dict[str, Path]) -> None:
    """The upload component holds no compiled module and installs on any platform."""
    assert [name for name in _payload(wheels["upload"]) if name.endswith(".so")] == []
    assert wheels["upload"].name.endswith("-py3-none-any.whl")


@pytest.mark.slow
def test_base_wheel_without_a_compiler_stays_pure(tree: Path, tmp_path: Path) -> None:
    """With ``CC`` naming no program the community wheel still builds, pure, with a warning naming the log scan."""
    make = ["make", "-s", "-f", "mk/packaging.mk", "wheel", f"PYTHON={sys.executable}", f"DIST={tmp_path}"]
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc")}
    done = subprocess.run(make, cwd=tree, env=env, check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "community").glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    assert [name for name in _payload(wheel) if name.endswith(".so")] == []
    assert [line for line in done.stderr.splitlines() if "not compiled" in line and "pure Python" in line] != []


@needs_compiler
@pytest.mark.slow
def test_installed_community_wheel_loads_the_compiled_log_scan(
    wheels: dict[str, Path], install: object, tmp_path: Path
) -> None:
    """An installed community wheel's interpreter imports ``collectors._hllscan`` from the install."""
    bin_dir = install("community", wheels["community"])  # type: ignore[operator]
    probe = "from collectors import hll, _hllscan; print(hll.native_available(), _hllscan.__file__)"
    done = subprocess.run(
        [bin_dir / "python", "-c", probe], cwd=tmp_path, env=_env(tmp_path, ""), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    available, module = done.stdout.split()
    assert (available, Path(module).is_relative_to(bin_dir.parent)) == ("True", True)


@needs_compiler
def test_compile_extension_builds_an_importable_module(tmp_path: Path) -> None:
    """A valid C module compiles into the target, which the interpreter then imports."""
    source = tmp_path / "_probe.c"
    source.write_text(
        "#include <Python.h>\n"
        'static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_probe", NULL, -1, NULL};\n'
        "PyMODINIT_FUNC PyInit__probe(void) { return PyModule_Create(&def); }\n"
    )
    target = tmp_path / f"_probe{sysconfig.get_config_var('EXT_SUFFIX')}"
    assert compile_extension(source, target)
    done = subprocess.run(
        [sys.executable, "-c", "import _probe; print(_probe.__file__)"], cwd=tmp_path, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout.strip()) == (0, str(target)), done.stderr


def test_compile_extension_of_a_broken_source_fails_quietly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A source that does not compile returns False, says so in one line, and leaves no target, not even a stale one."""
    source = tmp_path / "broken.c"
    source.write_text("int broken = ;\n")
    target = tmp_path / "broken.so"
    target.write_bytes(b"a module built from an older source")
    assert compile_extension(source, target, fallback="the test runs in pure Python") is False
    lines = capsys.readouterr().err.splitlines()
    assert (len(lines), "broken.c not compiled" in lines[0], lines[0].endswith("pure Python")) == (1, True, True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.c"]


def test_compile_extension_without_the_compiler_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``CC`` naming a program that does not exist is a warning and False, not an exception."""
    source = tmp_path / "fine.c"
    source.write_text("int fine = 1;\n")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert compile_extension(source, tmp_path / "fine.so") is False
    assert "no C compiler" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fine.c"]


@pytest.mark.slow
@pytest.mark.parametrize("edition", ["community", "commercial"])
def test_version_shows_edition(edition: str, wheels: dict[str, Path], install: object, tmp_path: Path) -> None:
    """``agent --version`` of an installed wheel names its edition."""
    bin_dir = install(edition, wheels[edition])  # type: ignore[operator]
    done = subprocess.run(
        [bin_dir / "agent", "--version"], cwd=tmp_path, env=_env(tmp_path, ""), capture_output=True, text=True
    )
    assert (0, f"pop-agent {VERSION} ({edition})") == (done.returncode, done.stdout.strip())


@pytest.mark.slow
def test_community_refuses_telemetry_without_upload(wheels: dict[str, Path], install: object, tmp_path: Path) -> None:
    """Community with ``telemetry = "on"`` but no upload component is a configuration error naming it."""
    bin_dir = install("community", wheels["community"])  # type: ignore[operator]
    config = 'telemetry = "on"\n[sinks.central]\nurl = "http://127.0.0.1:9/ingest/v1/heartbeats"\ntoken = "t0ken"\n'
    env = _env(tmp_path, config)
    done = subprocess.run([bin_dir / "agent", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EX_CONFIG
    assert "upload" in done.stderr
    assert _pending(tmp_path) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        'telemetry = "off"\n[sinks.central]\nurl = "http://127.0.0.1:9/ingest/v1/heartbeats"\ntoken = "t0ken"\n',
        'telemetry = "on"\n',
    ],
    ids=["telemetry-off", "no-central"],
)
def test_commercial_refuses_to_run_without_telemetry(
    config: str, wheels: dict[str, Path], install: object, tmp_path: Path
) -> None:
    """The commercial edition exits 78 when telemetry is off or central is not configured."""
    bin_dir = install("commercial", wheels["commercial"])  # type: ignore[operator]
    env = _env(tmp_path, config)
    done = subprocess.run([bin_dir / "agent", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EX_CONFIG
    assert "commercial" in done.stderr


async def _run_against_central(bin_dir: Path, tmp_path: Path, config: str, received: list[object]) -> int:
    """Run ``agent run --interval 0.2`` until the spool or central shows a few ticks, then SIGTERM it."""
    env = _env(tmp_path, config)
    process = await asyncio.create_subprocess_exec(
        str(bin_dir / "agent"),
        "run",
        "--interval",
        "0.2",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WAIT
        while process.returncode is None and loop.time() < give_up:
            if _pending(tmp_path) >= TICKS or len(received) >= 1:
                break
            await asyncio.sleep(0.1)
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=WAIT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    if process.returncode != 0:
        sys.stderr.write(stderr.decode(errors="replace"))
    return process.returncode


def _central_app(received: list[object]) -> web.Application:
    async def ingest(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"accepted": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ingest)
    return app


@pytest.mark.slow
async def test_community_sends_nothing_to_a_live_central(
    wheels: dict[str, Path], install: object, tmp_path: Path, aiohttp_server: object
) -> None:
    """Community pointed at a live central with telemetry off spools its ticks and sends central nothing."""
    received: list[object] = []
    server = await aiohttp_server(_central_app(received))  # type: ignore[operator]
    bin_dir = install("community", wheels["community"])  # type: ignore[operator]
    url = f"http://127.0.0.1:{server.port}/ingest/v1/heartbeats"
    config = f'telemetry = "off"\n[sinks.central]\nurl = "{url}"\ntoken = "t0ken"\n'
    returncode = await _run_against_central(bin_dir, tmp_path, config, received)
    assert (returncode, received) == (0, [])
    assert _pending(tmp_path) >= TICKS


@pytest.mark.slow
async def test_community_with_upload_component_delivers(
    wheels: dict[str, Path], install: object, tmp_path: Path, aiohttp_server: object
) -> None:
    """The same setup with the upload component installed and telemetry on does reach central."""
    received: list[object] = []
    server = await aiohttp_server(_central_app(received))  # type: ignore[operator]
    bin_dir = install("community-upload", wheels["community"], wheels["upload"])  # type: ignore[operator]
    url = f"http://127.0.0.1:{server.port}/ingest/v1/heartbeats"
    config = f'telemetry = "on"\n[sinks.central]\nurl = "{url}"\ntoken = "t0ken"\n'
    returncode = await _run_against_central(bin_dir, tmp_path, config, received)
    assert returncode == 0
    assert len(received) >= 1
    bodies = [json.loads(body) for body in received if isinstance(body, bytes) and body[:2] != b"\x1f\x8b"]
    assert all(doc["edition"] == "community" for body in bodies for doc in body["heartbeats"])


@pytest.mark.slow
def test_make_install_stages_under_destdir_and_keeps_operator_files(tree: Path, tmp_path: Path) -> None:
    """``make install DESTDIR=...`` lays out venv, unit and config; install and uninstall keep an edited config."""
    destdir = tmp_path / "root"
    make = [
        "make", "-s", "-f", "mk/packaging.mk", f"DESTDIR={destdir}", f"PYTHON={sys.executable}",
        f"PYTHON3={sys.executable}", f"DIST={tmp_path / 'dist'}", "PIP_INSTALL_FLAGS=--no-deps --no-index",
    ]  # fmt: skip
    subprocess.run([*make, "install"], cwd=tree, check=True, capture_output=True)
    conf = destdir / "etc" / "pop-agent"
    unit = destdir / "etc" / "systemd" / "system" / "pop-agent.service"
    agent = destdir / "opt" / "pop-agent" / "bin" / "agent"
    assert agent.read_text().splitlines()[0] == "#!/opt/pop-agent/bin/python"
    assert "ExecStart=/opt/pop-agent/bin/agent run" in unit.read_text().splitlines()
    assert (conf / "agent.toml").read_text() == (tree / "systemd" / "agent.toml").read_text()
    assert (destdir / "opt" / "pop-agent" / "share" / "doc" / "pop-agent" / "operations.md").is_file()
    modes = {name: (conf / name).stat().st_mode & 0o777 for name in ("agent.toml", "pop-agent.env", "central-token")}
    assert modes == {"agent.toml": 0o644, "pop-agent.env": 0o600, "central-token": 0o600}

    (conf / "agent.toml").write_text('pop_id = "ams1"\n')
    subprocess.run([*make, "install"], cwd=tree, check=True, capture_output=True)
    assert (conf / "agent.toml").read_text() == 'pop_id = "ams1"\n'

    subprocess.run([*make, "uninstall"], cwd=tree, check=True, capture_output=True)
    assert (agent.exists(), unit.exists(), (conf / "agent.toml").exists()) == (False, False, True)
