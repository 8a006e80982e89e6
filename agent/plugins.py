"""The registry of collectors and sinks: built-ins by name, third parties by entry point.

Built-ins are named here explicitly, as ``module:Class`` strings imported on
use, so that start-up imports only what runs and a build without the upload
sinks simply lacks their modules. Third-party plugins come from the entry-point
groups below. Every plugin class offers ``from_settings(settings)``, returning an
instance, or ``None`` when it is not configured.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from agent.errors import ConfigError

COLLECTOR_GROUP = "pop_agent.collectors"
SINK_GROUP = "pop_agent.sinks"

BUILTIN_COLLECTORS: dict[str, str] = {
    "cpu": "collectors.cpu:CpuCollector",
    "memory": "collectors.memory:MemoryCollector",
    "disk": "collectors.disk:DiskCollector",
    "network": "collectors.network:NetworkCollector",
    "system": "collectors.system:SystemCollector",
    "vaults": "collectors.vaults:VaultsCollector",
    "requests": "collectors.requests:RequestsCollector",
    "janitor": "collectors.janitor:JanitorCollector",
}

BUILTIN_SINKS: dict[str, str] = {
    "central": "sinks.central:CentralSink",
    "pushgateway": "sinks.pushgateway:PushgatewaySink",
    "loki": "sinks.loki:LokiSink",
    "remote_write": "sinks.remote_write:RemoteWriteSink",
}


@dataclass(frozen=True)
class PluginRef:
    """Where a plugin comes from, before it is loaded."""

    name: str
    target: str
    origin: str  # "builtin" or the distribution that provides the entry point

    def load(self) -> Any:
        """Import and return the plugin class, or raise :class:`ConfigError`."""
        module_name, _, attr = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                raise ConfigError(f"{self.name}: module {module_name} is not installed") from None
            raise
        except AttributeError:
            raise ConfigError(f"{self.name}: {self.target} does not exist") from None

    def available(self) -> bool:
        """Whether the plugin's module exists in this installation."""
        module_name = self.target.partition(":")[0]
        try:
            return importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            return False


def _discover(builtins: dict[str, str], group: str) -> list[PluginRef]:
    refs = [PluginRef(name, target, "builtin") for name, target in builtins.items()]
    known = set(builtins)
    for point in entry_points(group=group):
        if point.name in known:
            continue  # a plugin cannot replace a built-in
        known.add(point.name)
        origin = point.dist.name if point.dist is not None else "entry point"
        refs.append(PluginRef(point.name, point.value, origin))
    return refs


def collector_refs() -> list[PluginRef]:
    """Every collector: built-ins first, then third-party ones."""
    return _discover(BUILTIN_COLLECTORS, COLLECTOR_GROUP)


def sink_refs() -> list[PluginRef]:
    """Every sink: built-ins first, then third-party ones."""
    return _discover(BUILTIN_SINKS, SINK_GROUP)


def names(refs: Iterable[PluginRef]) -> list[str]:
    return [ref.name for ref in refs]
