"""Settings: sources, their order, and one-line errors that never show a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.settings import load_settings, masked_dump


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the host's environment out of these tests."""
    import os

    for key in list(os.environ):
        if key.startswith("POP_AGENT_") or key in ("NTFY_ALERT_URL", "NTFY_ALERT_TOKEN", "KUMA_PUSH_URL"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_are_community_safe() -> None:
    """Without any source, telemetry is unset, sinks are off and state lives in ./.pop-agent."""
    settings = load_settings()
    assert settings.telemetry is None
    assert settings.sinks.central.url is None
    assert settings.state_dir == Path(".pop-agent")
    assert settings.interval == 10.0


def test_state_directory_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd's $STATE_DIRECTORY is the default state directory."""
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/pop-agent")
    assert load_settings().state_dir == Path("/var/lib/pop-agent")


def test_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI flags beat the environment, which beats the TOML file, which beats defaults."""
    path = write(
        tmp_path,
        'interval = 5\npop_id = "ams1"\n[spool]\nmax_files = 500\n[sinks.central]\nurl = "https://c.example/x"\n',
    )
    monkeypatch.setenv("POP_AGENT_INTERVAL", "3")
    monkeypatch.setenv("POP_AGENT_SINKS__CENTRAL__URL", "https://env.example/ingest")
    settings = load_settings(path, interval=2.5)
    assert settings.interval == 2.5
    assert settings.sinks.central.url == "https://env.example/ingest"
    assert settings.pop_id == "ams1"
    assert settings.spool.max_files == 500


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POP_AGENT_CONFIG names the TOML file when --config is not given."""
    monkeypatch.setenv("POP_AGENT_CONFIG", str(write(tmp_path, "interval = 7\n")))
    assert load_settings().interval == 7


def test_operations_variables_by_exact_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """NTFY_ALERT_URL, NTFY_ALERT_TOKEN and KUMA_PUSH_URL are read as named, as secrets."""
    monkeypatch.setenv("NTFY_ALERT_URL", "https://ntfy.example/pop-alerts")
    monkeypatch.setenv("NTFY_ALERT_TOKEN", "tk_secret123")
    monkeypatch.setenv("KUMA_PUSH_URL", "https://kuma.example/api/push/PUSHTOKEN?status=up")
    settings = load_settings()
    assert settings.ntfy_alert_url is not None
    assert settings.ntfy_alert_url.get_secret_value() == "https://ntfy.example/pop-alerts"
    assert settings.ntfy_alert_token is not None
    assert settings.ntfy_alert_token.get_secret_value() == "tk_secret123"
    assert settings.kuma_push_url is not None
    dumped = str(masked_dump(settings))
    assert "tk_secret123" not in dumped and "PUSHTOKEN" not in dumped and "pop-alerts" not in dumped


def test_secrets_masked_in_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    """The central token never appears in the effective configuration."""
    monkeypatch.setenv("POP_AGENT_SINKS__CENTRAL__TOKEN", "s3cr3t-token-value")
    dumped = masked_dump(load_settings())
    assert dumped["sinks"]["central"]["token"] == "**********"


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("interval = 0.01\n", {}, "interval (env POP_AGENT_INTERVAL)"),
        ("", {"POP_AGENT_INTERVAL": "soon"}, "interval (env POP_AGENT_INTERVAL)"),
        ("intervall = 10\n", {}, "intervall (env POP_AGENT_INTERVALL): unknown setting"),
        ('[sinks.central]\nurl = "ftp://x"\n', {}, "sinks.central.url"),
        ('[collectors.requests]\nformat = "xml"\n', {}, "collectors.requests.format"),
        ('pop_id = "AMS 1"\n', {}, "pop_id"),
        ("", {"POP_AGENT_SPOOL__MAX_FILES": "-1"}, "spool.max_files (env POP_AGENT_SPOOL__MAX_FILES)"),
    ],
)
def test_bad_values_name_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str], needle: str
) -> None:
    """A bad value is one line naming the setting and its environment variable."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, toml))
    message = str(caught.value)
    assert needle in message
    assert "\n" not in message


def test_bad_value_never_echoes_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed secret is reported by name, never by value."""
    monkeypatch.setenv("KUMA_PUSH_URL", "not a url PUSHTOKEN")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "PUSHTOKEN" not in str(caught.value)
    assert "kuma_push_url" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [("interval = = 3\n", "invalid TOML"), (b"\xff\xfe", "")],
)
def test_unreadable_toml(tmp_path: Path, content: str | bytes, needle: str) -> None:
    """A TOML file that does not parse is a one-line configuration error."""
    path = tmp_path / "agent.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
    assert needle in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    """An explicit config file that does not exist is an error, not silently ignored."""
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_credentials_in_a_sink_url_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink URL with user:password shows them masked in the effective configuration."""
    monkeypatch.setenv("POP_AGENT_SINKS__LOKI__URL", "https://pop:hunter2@loki.example:3100")
    dumped = masked_dump(load_settings())
    assert dumped["sinks"]["loki"]["url"] == "https://**********@loki.example:3100"
