"""The wheels per edition: what each one holds, and what each one does once installed."""

from __future__ import annotations

import asyncio
import grp
import hashlib
import json
import os
import re
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

from agent.plugins import BUILTIN_SINKS

REPO = Path(__file__).resolve().parents[2]
EDITIONS = ("community", "commercial", "upload")
# The local alert hooks every edition ships; sinks/ is upload code only and none of it is in community.
ALERT_MODULES = {"alerts/__init__.py", "alerts/health.py", "alerts/hooks.py", "alerts/ntfy.py", "alerts/kuma.py"}
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
TREE_PARTS = (
    "pyproject.toml",
    "hatch_build.py",
    "agent",
    "collectors",
    "sinks",
    "alerts",
    "packaging",
    "mk",
    "systemd",
    "docs",
)
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "agent" / "version.py").read_text()).group(1)  # type: ignore[union-attr]
EX_CONFIG = 78
TICKS = 3
WAIT = 60.0  # generous bound on the agent's first ticks on a loaded machine; not a timing assertion


def _payload(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if ".dist-info/" not in name}


def _metadata(wheel: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    header = text.split("\n\n", 1)[0]
    return [tuple(line.split(": ", 1)) for line in header.splitlines() if ": " in line]  # type: ignore[misc]


def _contents(wheel: Path) -> dict[str, str]:
    """Each file of the wheel's payload and the SHA-256 of its bytes."""
    with zipfile.ZipFile(wheel) as archive:
        return {
            name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in archive.namelist()
            if ".dist-info/" not in name
        }


def _tree_sinks(tree: Path) -> set[str]:
    return {
        f"sinks/{entry.name}"
        for entry in (tree / "sinks").iterdir()
        if entry.suffix == ".py" or (entry.is_dir() and entry.name != "__pycache__")
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the source tree, so that builds neither race other work in the checkout nor touch it."""
    root = tmp_path_factory.mktemp("tree")
    for part in TREE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
    """The community wheel has the alert hooks and not one module of sinks/ (upload code), nor an edition marker."""
    files = _payload(wheels["community"])
    assert set() == {name for name in files if name.startswith("sinks/")}
    assert ALERT_MODULES <= files
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
    """The upload component holds exactly sinks/ and pins pop-agent to its own version."""
    files = _payload(wheels["upload"])
    assert _tree_sinks(tree) == files
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


@pytest.mark.parametrize("edition", EDITIONS)
def test_every_wheel_is_pure(edition: str, wheels: dict[str, Path]) -> None:
    """Every edition's wheel is tagged ``py3-none-any`` and holds Python and data files only."""
    compiled = [name for name in _payload(wheels[edition]) if name.endswith((".so", ".c", ".pyi", ".pyd"))]
    assert ([], True) == (compiled, wheels[edition].name.endswith("-py3-none-any.whl"))


@pytest.mark.slow
def test_community_wheel_is_the_same_whatever_the_build_host(
    wheels: dict[str, Path], tree: Path, tmp_path: Path
) -> None:
    """A build host without a C compiler makes the same community wheel, file for file, as this one."""
    make = ["make", "-s", "-f", "mk/packaging.mk", "wheel", f"PYTHON={sys.executable}", f"DIST={tmp_path}"]
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc")}
    done = subprocess.run(make, cwd=tree, env=env, check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "community").glob("*.whl")
    assert (wheels["community"].name, _contents(wheels["community"])) == (wheel.name, _contents(wheel))
    assert [] == [line for line in done.stderr.splitlines() if "warning" in line.lower()]


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
    # `agent check` runs the same validation: it refuses this configuration too, with the daemon's words.
    checked = subprocess.run([bin_dir / "agent", "check"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert EX_CONFIG == checked.returncode
    reason = done.stderr.strip().removeprefix("agent: configuration error: ")
    assert f"error: {reason}" in checked.stdout.splitlines()


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
def test_community_keeps_the_upload_sinks_tables_unread(
    wheels: dict[str, Path], install: object, tmp_path: Path
) -> None:
    """Community without sinks/: a `[sinks.central]` table loads, `agent check` notes it, `agent config` masks it."""
    bin_dir = install("community", wheels["community"])  # type: ignore[operator]
    config = 'telemetry = "off"\n[sinks.central]\nurl = "https://central.example/ingest"\ntoken = "t0ken"\n'
    env = {**_env(tmp_path, config), "POP_AGENT_SINKS__LOKI__URL": "http://loki.example:3100"}
    checked = subprocess.run([bin_dir / "agent", "check"], cwd=tmp_path, env=env, capture_output=True, text=True)
    shown = subprocess.run([bin_dir / "agent", "config"], cwd=tmp_path, env=env, capture_output=True, text=True)
    ignored = "sinks.{}: this build has no code for the sink; the table is ignored"
    assert (0, 0) == (checked.returncode, shown.returncode)
    assert f"warning: {ignored.format('central')}" in checked.stdout.splitlines()
    assert f"warning: {ignored.format('loki')}" in checked.stdout.splitlines()
    masked = {"url": "**********", "token": "**********"}
    sinks = json.loads(shown.stdout)["sinks"]
    assert (masked, {"url": "**********"}) == (sinks["central"], sinks["loki"])
    assert "t0ken" not in shown.stdout + shown.stderr + checked.stdout + checked.stderr


@pytest.mark.slow
async def test_community_egress_names_no_upload_code_and_its_ledger_holds_no_upload(
    wheels: dict[str, Path], install: object, tmp_path: Path, aiohttp_server: object
) -> None:
    """The community wheel says its upload code is absent, and its ledger records only the Kuma hook's pushes."""
    seen: list[object] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = await aiohttp_server(app)  # type: ignore[operator]
    bin_dir = install("community", wheels["community"])  # type: ignore[operator]
    base = f"http://127.0.0.1:{server.port}"
    config = (
        f'kuma_push_url = "{base}/api/push/KUMATOKEN"\n'
        f'[sinks.central]\nurl = "{base}/ingest/v1/heartbeats"\ntoken = "t0ken"\n'
        f'[sinks.pushgateway]\nurl = "{base}"\n'
    )
    returncode = await _run_against_central(bin_dir, tmp_path, config, seen)
    env = _env(tmp_path, config)
    egress = subprocess.run([bin_dir / "agent", "egress"], cwd=tmp_path, env=env, capture_output=True, text=True)
    sent = subprocess.run([bin_dir / "agent", "sent", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    records = [json.loads(line) for line in sent.stdout.splitlines()]

    assert (0, 0, 0) == (returncode, egress.returncode, sent.returncode)
    assert "upload code: absent (no upload code present)" in egress.stdout
    assert len(BUILTIN_SINKS) == egress.stdout.count("code: no upload code present")  # every upload sink
    assert "KUMATOKEN" not in egress.stdout + sent.stdout
    assert {("GET", "/api/push/KUMATOKEN")} == set(seen)
    assert {"kuma"} == {record["sink"] for record in records}


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
    tmpfiles = destdir / "etc" / "tmpfiles.d" / "pop-agent.conf"
    assert (tree / "systemd" / "pop-agent.tmpfiles").read_text() == tmpfiles.read_text()
    assert (destdir / "opt" / "pop-agent" / "share" / "doc" / "pop-agent" / "operations.md").is_file()
    modes = {name: (conf / name).stat().st_mode & 0o777 for name in ("agent.toml", "pop-agent.env", "central-token")}
    # Every file that may hold a token is 0640 or tighter; agent.toml is readable by the unit's group adm.
    assert modes == {"agent.toml": 0o640, "pop-agent.env": 0o600, "central-token": 0o600}
    assert grp.getgrgid((conf / "agent.toml").stat().st_gid).gr_name == "adm"

    (conf / "agent.toml").write_text('pop_id = "ams1"\n')
    subprocess.run([*make, "install"], cwd=tree, check=True, capture_output=True)
    assert (conf / "agent.toml").read_text() == 'pop_id = "ams1"\n'

    subprocess.run([*make, "uninstall"], cwd=tree, check=True, capture_output=True)
    assert (agent.exists(), unit.exists(), (conf / "agent.toml").exists()) == (False, False, True)
