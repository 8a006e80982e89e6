"""The settings of the loki sink, ``[sinks.loki]``: Grafana Loki.

A module of its own, without the sink's code, so that the agent can validate the
table at start without importing upload code it may never run.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from agent.plugin_api import PluginSettings, check_url


class LokiSinkSettings(PluginSettings):
    """Grafana Loki push API."""

    url: str | None = Field(None, description="Loki base URL; the sink is on when set.")
    tenant_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Sent as X-Scope-OrgID when set."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds per request.")
    batch_max_count: int = Field(500, ge=1, le=10_000, description="Most heartbeats in one push.")

    _url = field_validator("url")(check_url)
