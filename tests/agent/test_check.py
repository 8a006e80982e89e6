"""`agent check` and `agent config`: the daemon's own start-up validation, run by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import RunAgent


def test_check_passes_on_defaults_and_leaves_nothing_behind(run_agent: RunAgent, tmp_path: Path) -> None:
    """A usable configuration is one `ok:` line and exit 0, and the state directory is not created."""
    result = run_agent("check")
    assert (0, "") == (result.returncode, result.stderr)
    assert result.stdout.startswith("ok: pop_id test-pop, state_dir ")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ("--telemetry", "on"),
            {
                "POP_AGENT_SINKS__CENTRAL__URL": "http://127.0.0.1:9/ingest/v1/heartbeats",
                "CREDENTIALS_DIRECTORY": "creds",
            },
            "credential central-token: the token is empty",
        ),
        (
            ("--telemetry", "on"),
            {"POP_AGENT_SINKS__CENTRAL__URL": "http://127.0.0.1:9/ingest/v1/heartbeats"},
            "sinks.central: no token",
        ),
        ((), {"POP_AGENT_COLLECTORS__DISABLED": '["cpu","cpu"]', "POP_AGENT_INTERVL": "3"}, "did you mean"),
    ],
)
def test_check_refuses_what_run_refuses(
    run_agent: RunAgent, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    """Whatever stops `agent run` with 78 makes `agent check` exit 78 with the same words."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "central-token").write_text("\n")
    env = {key: str(creds) if value == "creds" else value for key, value in env.items()}
    checked = run_agent("check", *args, **env)
    ran = run_agent("run", *args, **env)
    assert (78, 78) == (checked.returncode, ran.returncode)
    assert expected in checked.stdout
    assert expected in ran.stderr
    assert 1 == len(ran.stderr.splitlines())
    assert not (tmp_path / "state" / "spool").exists()


def test_check_lists_every_problem_on_its_own_line(run_agent: RunAgent) -> None:
    """Two bad settings are two `error:` lines, not one joined line."""
    result = run_agent("check", POP_AGENT_INTERVAL="0", POP_AGENT_SPOOL__MAX_FILES="1")
    assert 78 == result.returncode
    lines = result.stdout.splitlines()
    assert ["interval", "spool.max_files"] == [line.split()[1] for line in lines]
    assert all(line.startswith("error: ") for line in lines)


def test_check_warns_about_a_missing_log_and_passes(run_agent: RunAgent, tmp_path: Path) -> None:
    """A configured access log that does not exist yet is a warning, not an error: exit 0."""
    log = tmp_path / "access.log"
    result = run_agent("check", POP_AGENT_COLLECTORS__REQUESTS__ACCESS_LOG=str(log))
    assert 0 == result.returncode
    expected = (
        f"warning: collectors.requests.access_log {log}: does not exist (the collector reports 'missing' until it does)"
    )
    assert expected == result.stdout.splitlines()[0]


@pytest.mark.parametrize("command", [("run",), ("check",), ("status",), ("enqueue", "-"), ("upload",), ("export",)])
@pytest.mark.parametrize("shape", ["file", "under_file", "proc"])
def test_unusable_state_dir_is_one_line_and_78(
    run_agent: RunAgent, tmp_path: Path, command: tuple[str, ...], shape: str
) -> None:
    """A state directory that is a file, lies under a file or cannot be created: one line, exit 78, no traceback."""
    (tmp_path / "a-file").write_text("x")
    state_dir = {
        "file": tmp_path / "a-file",
        "under_file": tmp_path / "a-file" / "state",
        "proc": Path("/proc/pop-agent"),
    }[shape]
    if shape == "proc" and command[0] in ("status", "export", "upload"):
        pytest.skip("status and export only read, and upload has no sink here: none of them creates the directory")
    result = run_agent(*command, POP_AGENT_STATE_DIR=str(state_dir), input="")
    assert 78 == result.returncode, result.stderr
    output = (result.stdout + result.stderr).strip()
    assert 1 == len(output.splitlines()), output
    assert "state_dir (env POP_AGENT_STATE_DIR)" in output
    assert "Traceback" not in output


def test_config_names_its_file_and_environment(run_agent: RunAgent, tmp_path: Path) -> None:
    """`agent config` says which file and which variables it read (names only), and stdout stays JSON."""
    result = run_agent("config", POP_AGENT_INTERVAL="2.5", NTFY_ALERT_TOKEN="tk_secret-value")
    assert 0 == result.returncode
    expected = [
        f"agent: config file: {tmp_path / 'empty.toml'}",
        (
            "agent: environment: NTFY_ALERT_TOKEN, POP_AGENT_DELIVERY__FLUSH_INTERVAL, POP_AGENT_INTERVAL,"
            " POP_AGENT_POP_ID, POP_AGENT_STATE_DIR"
        ),
    ]
    assert expected == result.stderr.splitlines()
    assert 2.5 == json.loads(result.stdout)["interval"]
    assert "tk_secret-value" not in result.stdout + result.stderr


def test_no_config_reads_no_file(run_agent: RunAgent, tmp_path: Path) -> None:
    """With --no-config not even the file POP_AGENT_CONFIG names is read: embedded defaults."""
    named = tmp_path / "named.toml"
    named.write_text("interval = 7\n")
    result = run_agent("--no-config", "config", POP_AGENT_CONFIG=str(named))
    assert 0 == result.returncode
    assert "agent: config file: none (embedded defaults)" == result.stderr.splitlines()[0]
    assert 10.0 == json.loads(result.stdout)["interval"]


def test_unknown_environment_variable_is_78_with_a_suggestion(run_agent: RunAgent) -> None:
    """A typo in a POP_AGENT_* variable stops every command, as the same typo in the file does."""
    for command in (("config",), ("--once",), ("run",)):
        result = run_agent(*command, POP_AGENT_SINKS__CENTRAL__UR="http://x")
        assert 78 == result.returncode
        expected = (
            "agent: configuration error: environment variable POP_AGENT_SINKS__CENTRAL__UR: unknown setting; "
            "did you mean POP_AGENT_SINKS__CENTRAL__URL?"
        )
        assert expected == result.stderr.strip()
