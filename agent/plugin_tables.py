"""The plugins' tables in the settings: ``[collectors.<name>]`` and ``[sinks.<name>]``.

The settings of a build compose the settings models of the plugins it has
(:func:`agent.settings.settings_class`): each plugin's table is a field whose type
is the plugin's own model, so pydantic-settings validates it strictly, reads its
``POP_AGENT_COLLECTORS__<NAME>__<KEY>`` variables and names it in errors, exactly
as for the agent's own settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from agent.plugins import PluginRef, SinkRef


class PluginTables(BaseModel):
    """The tables of one kind of plugin; the settings of a build add one field per plugin it has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def table(self, name: str) -> BaseModel | None:
        """The validated table of plugin ``name``, or ``None`` when these settings hold none for it."""
        value = self.__dict__.get(name) if name in type(self).model_fields else None
        return value if isinstance(value, BaseModel) else None


class NotInstalledTable(BaseModel):
    """A built-in sink's table in a build without the sink's code: kept unread, so an operator's file still loads.

    With telemetry off it is ignored (``agent check`` says so); with telemetry
    on, a sink configured here without its code is a configuration error.
    """

    model_config = ConfigDict(extra="allow", frozen=True)


class SinksSettings(PluginTables):
    """Upload sinks, one table each: ``[sinks.<name>]``, validated by the sink's own settings model."""


class CollectorsSettings(PluginTables):
    """Collectors: the runner's bounds here, then one table per collector, validated by its own settings model."""

    timeout: float = Field(5.0, gt=0, description="Seconds one collector may take per tick.")
    disabled: list[str] = Field(default_factory=list, description="Collectors not to run.")


def compose_tables(base: type[PluginTables], refs: Sequence[PluginRef]) -> type[PluginTables]:
    """``base`` with one field per plugin of ``refs``: its table, validated by the plugin's own model."""
    fields: dict[str, Any] = {}
    for ref in refs:
        try:
            model = ref.settings_model()  # refuses a name the table itself uses (timeout, disabled)
        except Exception:  # a plugin that cannot be loaded must not stop the settings loading
            if ref.builtin and isinstance(ref, SinkRef) and not ref.available():
                fields[ref.name] = (NotInstalledTable, NotInstalledTable())
            continue
        try:
            fields[ref.name] = (model, model())
        except ValidationError:  # keys without defaults: the plugin is off until its table gives them
            fields[ref.name] = (model | None, None)
    composed: type[PluginTables] = create_model(base.__name__, __base__=base, __doc__=base.__doc__, **fields)
    return composed


def unread_tables(sinks: SinksSettings) -> Iterator[tuple[str, NotInstalledTable]]:
    """The sinks' tables this build keeps unread, by name."""
    for name in type(sinks).model_fields:
        table = sinks.table(name)
        if isinstance(table, NotInstalledTable):
            yield name, table
