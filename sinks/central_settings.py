"""The settings of the central sink, ``[sinks.central]``: central ingest v1.

A module of its own, without the sink's code, so that the agent can validate the
table at start without importing upload code it may never run.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from agent.plugin_api import PluginSettings, check_url


class CentralSinkSettings(PluginSettings):
    """Central ingest v1."""

    url: str | None = Field(None, description="Central ingest URL; the sink is on when set (and telemetry allows it).")
    token: SecretStr | None = Field(None, description="Bearer token for central.")
    token_file: Path | None = Field(None, description="File holding the bearer token (read at start).")
    batch_max_count: int = Field(500, ge=1, le=10_000, description="Most heartbeats in one request.")
    batch_max_bytes: int = Field(1_048_576, ge=1024, description="Most uncompressed bytes in one request.")
    gzip_min_bytes: int = Field(4096, ge=0, description="Bodies at least this large are gzip-compressed.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(15.0, gt=0, description="Seconds to wait for central's answer.")

    _url = field_validator("url")(check_url)
