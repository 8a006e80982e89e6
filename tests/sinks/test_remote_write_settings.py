"""The remote-write sink's settings: credentials from settings, files or systemd credentials, always masked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from agent.errors import ConfigError
from sinks.remote_write import authorization
from sinks.remote_write_settings import RemoteWriteSinkSettings

TOKEN = "rw-s3cr3t-token-0123456789"


def test_authorization_bearer_basic_or_none(tmp_path: Path) -> None:
    """A token gives Bearer, a username with a password file Basic, neither no header; a credential is found."""
    url = "https://vm.example/api/v1/write"
    (tmp_path / "pw").write_text("hunter2-pw\n")
    (tmp_path / "remote-write-token").write_text("from-credential\n")
    empty = tmp_path / "empty"
    empty.mkdir()

    assert "Bearer abc" == authorization(RemoteWriteSinkSettings(url=url, token=SecretStr("abc")), str(empty))
    basic = authorization(RemoteWriteSinkSettings(url=url, username="pop", password_file=tmp_path / "pw"), str(empty))
    assert "Basic cG9wOmh1bnRlcjItcHc=" == basic  # base64 of "pop:hunter2-pw"
    assert None is authorization(RemoteWriteSinkSettings(url=url), str(empty))
    assert "Bearer from-credential" == authorization(RemoteWriteSinkSettings(url=url), str(tmp_path))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"token": SecretStr("t0ken-xyz"), "username": "pop"}, "not both"),
        ({"username": "pop"}, "no password"),
        ({"token": SecretStr("t0ken xyz")}, "whitespace"),
    ],
)
def test_bad_credentials_are_one_line_config_errors(tmp_path: Path, settings: dict[str, Any], expected: str) -> None:
    """Contradictory or unusable credentials are a one-line ConfigError that never shows the secret."""
    with pytest.raises(ConfigError) as caught:
        authorization(RemoteWriteSinkSettings(url="https://vm.example/w", **settings), str(tmp_path))
    message = str(caught.value)
    assert (True, False, False) == (expected in message, "\n" in message, "t0ken" in message)


def test_agent_config_masks_the_remote_write_secrets(run_agent: Any) -> None:
    """`agent config` shows the remote-write token and password as asterisks, never their values."""
    result = run_agent(
        "config",
        POP_AGENT_SINKS__REMOTE_WRITE__URL="https://vm.example/api/v1/write",
        POP_AGENT_SINKS__REMOTE_WRITE__TOKEN=TOKEN,
        POP_AGENT_SINKS__REMOTE_WRITE__PASSWORD="pw-hunter2-secret",
    )
    assert (0, False, False) == (result.returncode, TOKEN in result.stdout, "hunter2" in result.stdout)
    assert "**********" in result.stdout
