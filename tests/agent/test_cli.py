"""The CLI as an operator uses it: real processes, real files, exit codes from the contract."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import REPO, RunAgent, agent_env

SCHEMA = json.loads((REPO / "docs" / "heartbeat.schema.json").read_text())


def test_once_prints_a_valid_heartbeat(run_agent: RunAgent, tmp_path: Path) -> None:
    """`agent --once` prints one heartbeat that validates, and writes no state."""
    result = run_agent("--once")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["pop"] == "test-pop"
    assert {"cpu_percent", "mem_used_percent", "load1"} <= set(doc["metrics"])
    assert set(doc["collectors"].values()) == {"ok"}
    assert not (tmp_path / "state").exists()


def test_once_output_passes_scrub(run_agent: RunAgent) -> None:
    """`agent --once | agent scrub -` exits 0 and passes the document through."""
    once = run_agent("--once")
    scrubbed = run_agent("scrub", "-", input=once.stdout)
    assert scrubbed.returncode == 0, scrubbed.stderr
    assert json.loads(scrubbed.stdout) == json.loads(once.stdout)


def test_scrub_rejects_with_paths_never_values(run_agent: RunAgent, tmp_path: Path) -> None:
    """A rejected document exits 1 with JSON paths and reason codes on stderr, never the value."""
    doc = json.loads(run_agent("--once").stdout)
    doc["pop"] = "203.0.113.77"
    doc["metrics"]["bob@example.com"] = 1
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    result = run_agent("scrub", str(path))
    assert result.returncode == 1
    assert "$.pop: ip_address" in result.stderr
    assert "email_address" in result.stderr
    assert "203.0.113.77" not in result.stderr + result.stdout
    assert "bob@example.com" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (("scrub", "-"), "this is not json", "not JSON"),
        (("scrub", "-"), "", "not JSON"),
        (("scrub", "/nonexistent/doc.json"), None, "no such file"),
        (("enqueue", "/nonexistent/doc.json"), None, "no such file"),
    ],
)
def test_unreadable_input_exits_2(run_agent: RunAgent, args: tuple[str, ...], stdin: str | None, needle: str) -> None:
    """Unreadable input is a one-line error and exit 2."""
    result = run_agent(*args, input=stdin)
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("interval = = 1\n", {}, "invalid TOML"),
        ("colour = 'blue'\n", {}, "colour (env POP_AGENT_COLOUR): unknown setting"),
        ("interval = 0\n", {}, "interval"),
        ("", {"POP_AGENT_INTERVAL": "fast"}, "interval (env POP_AGENT_INTERVAL)"),
    ],
)
def test_configuration_errors_exit_78(
    run_agent: RunAgent, tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    """A bad TOML file, an unknown setting or an invalid interval: one line naming it, exit 78."""
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    for command in (("--once",), ("run",), ("config",)):
        result = run_agent("--config", str(path), *command, **env)
        assert result.returncode == 78, (command, result.stderr)
        assert needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_config_masks_secrets(run_agent: RunAgent) -> None:
    """`agent config` shows the effective configuration with every secret masked."""
    result = run_agent(
        "config",
        POP_AGENT_SINKS__CENTRAL__TOKEN="tok-AAAA-secret",
        NTFY_ALERT_TOKEN="tk_ntfysecret",
        KUMA_PUSH_URL="https://kuma.example/api/push/KUMASECRET",
        POP_AGENT_INTERVAL="2.5",
    )
    assert result.returncode == 0
    config = json.loads(result.stdout)
    assert config["interval"] == 2.5
    assert config["sinks"]["central"]["token"] == "**********"
    assert config["kuma_push_url"] == "**********"
    for secret in ("tok-AAAA-secret", "tk_ntfysecret", "KUMASECRET"):
        assert secret not in result.stdout + result.stderr


def test_version_names_the_edition(run_agent: RunAgent) -> None:
    """`agent --version` prints the version and the edition."""
    result = run_agent("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "pop-agent 0.1.0 (community)"


def test_usage_error_is_one_line(run_agent: RunAgent) -> None:
    """An unknown command is a one-line usage error, exit 2."""
    result = run_agent("frobnicate")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_collectors_lists_plugins(run_agent: RunAgent) -> None:
    """`agent collectors` lists every built-in collector and sink."""
    result = run_agent("collectors")
    assert result.returncode == 0
    sinks = ("central", "pushgateway", "loki", "remote_write")
    for name in ("cpu", "memory", "disk", "network", "system", "vaults", "requests", *sinks):
        assert f"  {name} " in result.stdout
    requests_line = next(line for line in result.stdout.splitlines() if line.startswith("  requests "))
    assert requests_line.endswith("log_lines_malformed_total")


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A third-party distribution on the path, with collectors that raise and hang."""
    site = tmp_path / "site"
    (site / "pop_agent_testplugin-1.0.dist-info").mkdir(parents=True)
    (site / "pop_agent_testplugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pop-agent-testplugin\nVersion: 1.0\n"
    )
    (site / "pop_agent_testplugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[pop_agent.collectors]\nbroken = testplugin:Broken\nstuck = testplugin:Stuck\n"
    )
    (site / "testplugin.py").write_text(
        textwrap.dedent(
            """
            import asyncio, threading
            from agent.plugin_api import NoSettings
            from agent.sample import MetricKind, MetricSpec, Sample

            class Broken:
                name = "broken"
                settings_model = NoSettings
                metrics = (MetricSpec("broken_value", MetricKind.GAUGE, "never"),)
                @classmethod
                def from_settings(cls, cfg, context):
                    return cls()
                async def collect(self):
                    raise RuntimeError("secret detail 198.51.100.23 must not leak")

            class Stuck:
                name = "stuck"
                settings_model = NoSettings
                metrics = (MetricSpec("stuck_value", MetricKind.GAUGE, "never"),)
                @classmethod
                def from_settings(cls, cfg, context):
                    return cls()
                async def collect(self):
                    await asyncio.to_thread(threading.Event().wait, 30)
                    return [Sample("stuck_value", 1)]
            """
        )
    )
    return site


def test_failing_collectors_affect_only_themselves(run_agent: RunAgent, plugin_path: Path) -> None:
    """A third-party collector that raises and one that hangs: the others report, exit 1, names on stderr."""
    result = run_agent(
        "--once",
        PYTHONPATH=f"{REPO}:{plugin_path}",
        POP_AGENT_COLLECTORS__TIMEOUT="0.5",
    )
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["collectors"]["broken"] == "error"
    assert doc["collectors"]["stuck"] == "timeout"
    assert doc["collectors"]["cpu"] == "ok"
    assert "cpu_percent" in doc["metrics"]
    assert "collector broken: error" in result.stderr
    assert "collector stuck: timeout" in result.stderr
    assert "198.51.100.23" not in result.stdout + result.stderr
    assert "secret detail" not in result.stdout + result.stderr
    listed = run_agent("collectors", PYTHONPATH=f"{REPO}:{plugin_path}")
    assert "pop-agent-testplugin" in listed.stdout


def test_python_dash_m_and_console_script_agree(tmp_path: Path) -> None:
    """The `agent` console script and `python -m agent` are the same program."""
    script = Path(sys.executable).parent / "agent"
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, env=agent_env(tmp_path), check=False
    )
    assert result.stdout.strip() == "pop-agent 0.1.0 (community)"


def test_status_on_a_fresh_machine(run_agent: RunAgent, tmp_path: Path) -> None:
    """`agent status` before the daemon ever ran: exit 3, no daemon, and the state directory it looked in."""
    text = run_agent("status")
    assert text.returncode == 3, text.stderr
    assert "telemetry: off" in text.stdout
    assert f"daemon: never started with state dir {tmp_path / 'state'}" in text.stdout
    as_json = run_agent("status", "--json")
    assert as_json.returncode == 3, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["edition"] == "community"
    assert {"state": "never started", "state_dir": str(tmp_path / "state")} == report["daemon"]


def test_export_and_enqueue_round_trip(run_agent: RunAgent, tmp_path: Path) -> None:
    """A heartbeat enqueued by hand is pending, and `agent export` prints it as one JSON line."""
    doc = json.loads(run_agent("--once").stdout)
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    enqueued = run_agent("enqueue", str(path))
    assert enqueued.returncode == 0, enqueued.stderr
    exported = run_agent("export")
    assert exported.returncode == 0
    assert [json.loads(line) for line in exported.stdout.splitlines()] == [doc]
    out = tmp_path / "out.jsonl"
    assert run_agent("export", "--out", str(out)).returncode == 0
    assert json.loads(out.read_text()) == doc


def test_enqueue_rejects_before_spooling(run_agent: RunAgent, tmp_path: Path) -> None:
    """A document that fails the scrubber is refused with exit 1 and never reaches the spool."""
    doc = json.loads(run_agent("--once").stdout)
    doc["metrics"]["cpu_percent"] = "198.51.100.4"
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    result = run_agent("enqueue", str(path))
    assert result.returncode == 1
    assert "198.51.100.4" not in result.stdout + result.stderr
    assert run_agent("export").stdout == ""


def test_upload_with_telemetry_off_says_so(run_agent: RunAgent) -> None:
    """`agent upload` with nothing to upload to is a one-line failure, not a silent success."""
    result = run_agent("upload")
    assert result.returncode == 1
    assert "telemetry is off" in result.stderr


def test_status_names_another_command_holding_the_spool(run_agent: RunAgent, tmp_path: Path) -> None:
    """While another process holds the spool's lock and no daemon status names it, status says so: exit 3."""
    import fcntl
    import os

    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    with (spool / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_agent("status")
    assert 3 == result.returncode
    expected = (
        f"daemon: not running; another agent command (pid {os.getpid()}) holds the spool; "
        f"state dir {tmp_path / 'state'}"
    )
    assert expected in result.stdout.splitlines()
