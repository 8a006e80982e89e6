"""The settings of the pushgateway sink, ``[sinks.pushgateway]``: the Prometheus Pushgateway.

A module of its own, without the sink's code, so that the agent can validate the
table at start without importing upload code it may never run.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from agent.plugin_api import PluginSettings, check_url


class PushgatewaySinkSettings(PluginSettings):
    """Prometheus Pushgateway."""

    url: str | None = Field(None, description="Pushgateway base URL; the sink is on when set.")
    job: str = Field("pop_agent", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$", description="The job grouping label.")
    timeout: float = Field(10.0, gt=0, description="Seconds per request.")

    _url = field_validator("url")(check_url)
