"""What a plugin sees of the agent: the base of its settings model, and the context it is built with.

A collector or sink declares ``settings_model``, a :class:`PluginSettings`
subclass, and is built by ``from_settings(cfg, context)`` from *its own* table
(``[collectors.<name>]`` or ``[sinks.<name>]``, validated by that model) and a
:class:`PluginContext`: the few facts of the agent every plugin may need. No
plugin sees the whole configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr

HTTP_URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s]*)?$"
Url = TypeVar("Url", SecretStr, str, None)


class PluginSettings(BaseModel):
    """The base of a plugin's settings model: unknown keys are refused, values never change after start."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoSettings(PluginSettings):
    """The settings model of a plugin that takes none: only an empty table is accepted."""


def check_url(value: Url) -> Url:
    """A field validator: ``value`` must be an http:// or https:// URL (or unset)."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if raw is not None and not re.match(HTTP_URL_PATTERN, raw):
        raise ValueError("must be an http:// or https:// URL")
    return value


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What the agent tells every plugin besides its own table."""

    interval: float  # seconds between ticks
    state_dir: Path  # the agent's state directory, for a plugin's own files
    collector_timeout: float  # seconds the runner gives one collector per tick
    credentials_dir: Path | None = None  # systemd's $CREDENTIALS_DIRECTORY, when set
