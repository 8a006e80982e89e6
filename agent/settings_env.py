"""The environment's side of the settings: the ``POP_AGENT_*`` names that exist, and those in use.

Every name is ``POP_AGENT_`` and a setting's dotted path in upper case, ``__``
between the parts; an unknown one is refused like an unknown key in the file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from typing import get_args

from pydantic import BaseModel

from agent.errors import ConfigError
from agent.plugin_tables import NotInstalledTable

ENV_PREFIX = "POP_AGENT_"
CONFIG_ENV = "POP_AGENT_CONFIG"
# Variables with the prefix that are not settings: the config file's path, and the wheel build's edition.
NON_SETTING_ENV = frozenset({CONFIG_ENV, "POP_AGENT_BUILD_EDITION"})
# Read by their exact names, for compatibility with the POP's existing operations (DESIGN.md).
OPERATIONS_ENV = ("NTFY_ALERT_URL", "NTFY_ALERT_TOKEN", "KUMA_PUSH_URL")


def environment_used(environ: Mapping[str, str] | None = None) -> list[str]:
    """The names (never the values) of the environment variables that set something here."""
    environ = os.environ if environ is None else environ
    names = {name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() != CONFIG_ENV}
    names |= {name for name in OPERATIONS_ENV if name in environ}
    names |= {name for name in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY") if environ.get(name)}
    return sorted(names - {"POP_AGENT_BUILD_EDITION"})


def setting_env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> Iterator[str]:
    """Every ``POP_AGENT_*`` name a setting or a whole section (as JSON) can be given by.

    A table kept unread (:class:`NotInstalledTable`) takes any key: its names end in ``*``.
    """
    for name, field in model.model_fields.items():
        env = prefix + name.upper()
        yield env
        annotation = field.annotation
        if annotation is NotInstalledTable:
            yield env + "__*"
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from setting_env_names(annotation, env + "__")
        else:  # an optional table: a plugin whose model has required keys
            for member in get_args(annotation):
                if isinstance(member, type) and issubclass(member, BaseModel):
                    yield from setting_env_names(member, env + "__")


def check_environment(environ: Mapping[str, str], model: type[BaseModel]) -> None:
    """An unknown ``POP_AGENT_*`` variable is a typo until proven otherwise: refuse it, as an unknown key."""
    names = set(setting_env_names(model))
    known = {name for name in names if not name.endswith("*")} | NON_SETTING_ENV
    open_prefixes = tuple(name.rstrip("*") for name in names if name.endswith("*"))
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(open_prefixes):
            continue
        close = difflib.get_close_matches(upper, known - NON_SETTING_ENV, n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"environment variable {name}: unknown setting{hint}")
    if problems:
        raise ConfigError("; ".join(problems), problems=problems)
