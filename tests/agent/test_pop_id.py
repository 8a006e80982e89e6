"""`pop_id` never silences a POP: an address-like host name falls back, an unsafe explicit id is refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.heartbeat import Heartbeat
from agent.identity import default_pop_id, host_slug
from agent.sample import POP_ID_PATTERN
from agent.settings import Settings
from tests.conftest import RunAgent, agent_env


def test_safe_host_name_is_the_default(tmp_path: Path) -> None:
    """A host name the scrubber accepts becomes the pop id as a slug."""
    assert "ams1-edge" == default_pop_id("AMS1_Edge.example.net", tmp_path / "machine-id")


def test_address_host_name_falls_back_to_the_machine(tmp_path: Path) -> None:
    """`ip-10-1-2-3` is not used: the id is derived from the machine id, which it does not reveal."""
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    expected = (
        "pop-" + hmac.new(b"3d1219c7c4c5404aaa1f6d2a48adfda4", b"pop-agent pop_id", hashlib.sha256).hexdigest()[:12]
    )
    assert expected == default_pop_id("ip-10-1-2-3", machine_id)
    assert "3d1219c7c4c5" not in expected


def test_address_host_name_without_machine_id_is_refused(tmp_path: Path) -> None:
    """With no machine id to derive from, the default is a configuration error naming pop_id."""
    with pytest.raises(ConfigError, match=r"^pop_id \(env POP_AGENT_POP_ID\): the host name is not a safe id"):
        default_pop_id("ip-10-1-2-3", tmp_path / "machine-id")


def test_host_name_with_an_address_in_a_uts_namespace(tmp_path: Path) -> None:
    """On a host named ip-10-1-2-3 `agent --once` prints a heartbeat the scrubber accepts."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-u", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -u is not permitted here (needs root or user namespaces)")
    env = agent_env(tmp_path)
    del env["POP_AGENT_POP_ID"]
    script = f"hostname ip-10-1-2-3 && exec {sys.executable} -m agent --once"
    result = subprocess.run([unshare, "-u", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    machine_id = Path("/etc/machine-id")
    if not machine_id.exists():
        assert 78 == result.returncode
        assert "pop_id (env POP_AGENT_POP_ID)" in result.stderr
        return
    assert 0 == result.returncode, result.stderr
    key = machine_id.read_bytes().strip()
    expected = "pop-" + hmac.new(key, b"pop-agent pop_id", hashlib.sha256).hexdigest()[:12]
    assert expected == json.loads(result.stdout)["pop"]


@pytest.mark.parametrize("command", [("--once",), ("run",), ("check",), ("config",)])
def test_explicit_unsafe_pop_id_is_78(run_agent: RunAgent, command: tuple[str, ...]) -> None:
    """An explicit pop_id holding an address stops every command with one line naming pop_id."""
    result = run_agent(*command, POP_AGENT_POP_ID="ip-10-1-2-3")
    assert 78 == result.returncode
    expected = "pop_id (env POP_AGENT_POP_ID): the scrubber refuses it (ip_address): every heartbeat would be rejected"
    assert expected in result.stdout + result.stderr
    assert 1 == len((result.stdout + result.stderr).strip().splitlines())


def test_one_pop_id_pattern_everywhere() -> None:
    """The settings, the heartbeat model and the published JSON schema all hold pop ids to agent.sample's pattern."""
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "heartbeat.schema.json").read_text())
    anchored = f"^{POP_ID_PATTERN}$"
    patterns = [
        schema["properties"]["pop"]["pattern"],
        Heartbeat.model_json_schema()["properties"]["pop"]["pattern"],
        Settings.model_json_schema()["properties"]["pop_id"]["pattern"],
    ]
    assert [anchored] * 3 == patterns


@pytest.mark.parametrize("host", ["a" * 80, "Edge--01.example.net", "-x-", "ab-" * 30])
def test_every_host_slug_fits_the_pattern(host: str) -> None:
    """The slug made from a host name is always a string the pop-id pattern accepts."""
    slug = host_slug(host)
    assert [slug] == re.findall(f"^{POP_ID_PATTERN}$", slug)
