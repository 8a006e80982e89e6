"""The settings of the remote_write sink, ``[sinks.remote_write]``: Prometheus remote write.

A module of its own, without the sink's code, so that the agent can validate the
table at start without importing upload code it may never run.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from agent.plugin_api import PluginSettings, check_url


class RemoteWriteSinkSettings(PluginSettings):
    """Prometheus remote write 1.0: VictoriaMetrics, Mimir, Thanos Receive, Cortex, Prometheus."""

    url: str | None = Field(None, description="Remote-write endpoint (e.g. .../api/v1/write); the sink is on when set.")
    token: SecretStr | None = Field(None, description="Bearer token for the receiver.")
    token_file: Path | None = Field(
        None, description="File holding the bearer token (read at start); else the credential remote-write-token."
    )
    username: str | None = Field(
        None, pattern=r"^[!-9;-~]{1,128}$", description="Basic-auth user name (instead of a bearer token)."
    )
    password: SecretStr | None = Field(None, description="Basic-auth password.")
    password_file: Path | None = Field(
        None, description="File holding the basic-auth password; else the credential remote-write-password."
    )
    tenant_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Sent as X-Scope-OrgID when set (Mimir, Cortex)."
    )
    job: str = Field(
        "pop_agent", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$", description="The job label on every series."
    )
    batch_max_count: int = Field(500, ge=1, le=10_000, description="Most heartbeats in one request.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(15.0, gt=0, description="Seconds to wait for the receiver's answer.")
    max_sample_age: float = Field(
        3300.0,
        gt=0,
        description=(
            "Heartbeats older than this many seconds are skipped for this sink (and counted): 55 min suits "
            "receivers built on the Prometheus TSDB, which refuse samples older than about an hour; "
            "VictoriaMetrics takes any age within its retention, so raise it there to replay long backlogs."
        ),
    )

    _url = field_validator("url")(check_url)
