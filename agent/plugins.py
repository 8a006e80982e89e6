"""The registry of collectors and sinks: built-ins by name, third parties by entry point.

Built-ins are named here explicitly, as ``module:Class`` strings imported on
use, so that start-up imports only what runs and a build without the upload
sinks simply lacks their modules. Third-party plugins come from the entry-point
groups below and cannot replace a built-in.

Every plugin class declares ``settings_model`` (the pydantic model of its table,
``[collectors.<name>]`` or ``[sinks.<name>]``) and ``from_settings(cfg, context)``,
returning an instance, or ``None`` when its table leaves it unconfigured (see
:mod:`collectors.base` and :mod:`sinks.base`). Whatever an entry point names is
checked against that contract here, when it is loaded, so that the rest of the
agent holds typed plugins only.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar, TypeGuard

from pydantic import BaseModel, ConfigDict

from agent.errors import ConfigError
from agent.sample import MetricSpec

if TYPE_CHECKING:
    # mypy holds every built-in to its contract; entry points are checked when they are loaded (below).
    from agent.plugin_api import NoSettings
    from collectors.base import CollectorClass
    from collectors.cpu import CpuCollector
    from collectors.disk import DiskCollector
    from collectors.janitor import JanitorCollector, JanitorSettings
    from collectors.memory import MemoryCollector
    from collectors.network import NetworkCollector
    from collectors.requests import RequestsCollector, RequestsSettings
    from collectors.system import SystemCollector
    from collectors.vaults import VaultsCollector, VaultsSettings
    from sinks.base import SinkClass  # the sink contract ships with the upload code
    from sinks.central import CentralSink
    from sinks.central_settings import CentralSinkSettings
    from sinks.loki import LokiSink
    from sinks.loki_settings import LokiSinkSettings
    from sinks.pushgateway import PushgatewaySink
    from sinks.pushgateway_settings import PushgatewaySinkSettings
    from sinks.remote_write import RemoteWriteSink
    from sinks.remote_write_settings import RemoteWriteSinkSettings

    _cpu: CollectorClass[NoSettings] = CpuCollector
    _memory: CollectorClass[NoSettings] = MemoryCollector
    _disk: CollectorClass[NoSettings] = DiskCollector
    _network: CollectorClass[NoSettings] = NetworkCollector
    _system: CollectorClass[NoSettings] = SystemCollector
    _vaults: CollectorClass[VaultsSettings] = VaultsCollector
    _requests: CollectorClass[RequestsSettings] = RequestsCollector
    _janitor: CollectorClass[JanitorSettings] = JanitorCollector
    _central: SinkClass[CentralSinkSettings] = CentralSink
    _pushgateway: SinkClass[PushgatewaySinkSettings] = PushgatewaySink
    _loki: SinkClass[LokiSinkSettings] = LokiSink
    _remote_write: SinkClass[RemoteWriteSinkSettings] = RemoteWriteSink

COLLECTOR_GROUP = "pop_agent.collectors"
SINK_GROUP = "pop_agent.sinks"
# A plugin's name is a TOML table and part of environment names (POP_AGENT_COLLECTORS__<NAME>__<KEY>).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Names a table of plugins uses itself: the keys of [collectors], and the tables' own method.
RESERVED_NAMES = frozenset({"timeout", "disabled", "table"})

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

# The built-in sinks' settings models live apart from their code: validating a
# table must not import upload code that telemetry may never let run.
BUILTIN_SINK_SETTINGS: dict[str, str] = {
    "central": "sinks.central_settings:CentralSinkSettings",
    "pushgateway": "sinks.pushgateway_settings:PushgatewaySinkSettings",
    "loki": "sinks.loki_settings:LokiSinkSettings",
    "remote_write": "sinks.remote_write_settings:RemoteWriteSinkSettings",
}


def _import(target: str, table: str) -> object:
    """The object ``module:attribute`` names, or a one-line :class:`ConfigError`."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigError(f"{table}: module {module_name} is not installed") from None
        raise ConfigError(f"{table}: module {module_name} cannot be imported (ModuleNotFoundError)") from None
    except Exception as exc:  # a broken plugin is a configuration problem, never a traceback
        raise ConfigError(f"{table}: module {module_name} cannot be imported ({type(exc).__name__})") from None
    try:
        found: object = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{table}: {target} does not exist") from None
    return found


def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """``model``, or a subclass of it that refuses unknown keys: every table is validated strictly."""
    if model.model_config.get("extra") == "forbid":
        return model
    config: ConfigDict = {**model.model_config, "extra": "forbid"}
    return type(model.__name__, (model,), {"model_config": config, "__doc__": model.__doc__})


def _is_model_class(value: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _shape_problem(cls: object, ref: PluginRef, methods: Iterable[str]) -> str | None:
    """What keeps ``cls`` from being a plugin class with the contract's name, settings model and methods."""
    if not isinstance(cls, type):
        return f"{ref.target} is not a class"
    if getattr(cls, "name", None) != ref.name:
        return f"{ref.target}.name must be {ref.name!r}, its entry point's name"
    if not _is_model_class(getattr(cls, "settings_model", None)):
        return f"{ref.target}.settings_model must be a pydantic model (agent.plugin_api.PluginSettings)"
    if not inspect.ismethod(getattr(cls, "from_settings", None)):
        return f"{ref.target}.from_settings(cfg, context) must be a classmethod"
    missing = [method for method in methods if not callable(getattr(cls, method, None))]
    return f"{ref.target} has no {', '.join(missing)}()" if missing else None


def _collector_problem(cls: object, ref: PluginRef) -> str | None:
    """What breaks the collector contract of :mod:`collectors.base`, or ``None``."""
    problem = _shape_problem(cls, ref, ("collect",))
    metrics = getattr(cls, "metrics", None)
    if problem is None and not (isinstance(metrics, tuple) and all(isinstance(spec, MetricSpec) for spec in metrics)):
        problem = f"{ref.target}.metrics must be a tuple of agent.sample.MetricSpec"
    return problem


def _is_collector_class(cls: object, ref: PluginRef) -> TypeGuard[CollectorClass[BaseModel]]:
    return _collector_problem(cls, ref) is None


def _is_sink_class(cls: object, ref: PluginRef) -> TypeGuard[SinkClass[BaseModel]]:
    """The sink contract of :mod:`sinks.base`."""
    return _shape_problem(cls, ref, ("send", "aclose")) is None


@dataclass(frozen=True)
class PluginRef:
    """Where a plugin comes from, before it is loaded."""

    kind: ClassVar[str]
    name: str
    target: str
    origin: str  # "builtin" or the distribution that provides the entry point

    @property
    def table(self) -> str:
        """The plugin's settings table, e.g. ``collectors.vaults``."""
        return f"{self.kind}.{self.name}"

    @property
    def builtin(self) -> bool:
        """Whether the plugin ships with the agent (or its upload component)."""
        return self.origin == "builtin"

    def available(self) -> bool:
        """Whether the plugin's module exists in this installation."""
        module_name = self.target.partition(":")[0]
        try:
            return importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            return False

    def settings_model(self) -> type[BaseModel]:
        """The model of the plugin's table, or a :class:`ConfigError` if the plugin cannot be loaded."""
        raise NotImplementedError

    def _named(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(f"{self.table}: a plugin's name must be lower-case letters, digits and _")
        # pydantic keeps model_* and BaseModel's own attributes for itself: such a table could not be a field.
        if self.name in RESERVED_NAMES or self.name.startswith("model_") or hasattr(BaseModel, self.name):
            raise ConfigError(f"{self.table}: {self.name!r} is reserved; the plugin needs another name")


@dataclass(frozen=True)
class CollectorRef(PluginRef):
    """A collector, built-in or from the ``pop_agent.collectors`` entry points."""

    kind: ClassVar[str] = "collectors"

    def load(self) -> CollectorClass[BaseModel]:
        """Import the collector's class and check it against the contract, or raise :class:`ConfigError`."""
        self._named()
        cls = _import(self.target, self.table)
        if _is_collector_class(cls, self):
            return cls
        raise ConfigError(f"{self.table}: {_collector_problem(cls, self)}")

    def settings_model(self) -> type[BaseModel]:
        """The model of the collector's table (its class is imported: collectors are cheap to import)."""
        return _strict(self.load().settings_model)


@dataclass(frozen=True)
class SinkRef(PluginRef):
    """A sink, built-in or from the ``pop_agent.sinks`` entry points."""

    kind: ClassVar[str] = "sinks"

    def load(self) -> SinkClass[BaseModel]:
        """Import the sink's class and check it against the contract, or raise :class:`ConfigError`."""
        self._named()
        cls = _import(self.target, self.table)
        if _is_sink_class(cls, self):
            return cls
        raise ConfigError(f"{self.table}: {_shape_problem(cls, self, ('send', 'aclose'))}")

    def settings_model(self) -> type[BaseModel]:
        """The model of the sink's table; a built-in's comes from its settings module, without the sink's code."""
        if self.builtin and self.name in BUILTIN_SINK_SETTINGS:
            self._named()
            model = _import(BUILTIN_SINK_SETTINGS[self.name], self.table)
            if not _is_model_class(model):
                raise ConfigError(f"{self.table}: {BUILTIN_SINK_SETTINGS[self.name]} is not a pydantic model")
            return _strict(model)
        return _strict(self.load().settings_model)


@dataclass(frozen=True)
class PluginSet:
    """The collectors and sinks one installation has: built-ins first, then third-party ones."""

    collectors: tuple[CollectorRef, ...]
    sinks: tuple[SinkRef, ...]


def discover(*, third_party: bool = True) -> PluginSet:
    """Every plugin of this installation (with ``third_party=False``, the built-ins alone)."""
    groups = entry_points() if third_party else None

    def found(group: str) -> list[tuple[str, str, str]]:
        if groups is None:
            return []
        return [
            (point.name, point.value, point.dist.name if point.dist is not None else "entry point")
            for point in groups.select(group=group)
        ]

    collectors = [CollectorRef(name, target, "builtin") for name, target in BUILTIN_COLLECTORS.items()]
    for name, target, origin in found(COLLECTOR_GROUP):
        if name not in {ref.name for ref in collectors}:  # a plugin cannot replace a built-in
            collectors.append(CollectorRef(name, target, origin))
    sinks = [SinkRef(name, target, "builtin") for name, target in BUILTIN_SINKS.items()]
    for name, target, origin in found(SINK_GROUP):
        if name not in {ref.name for ref in sinks}:
            sinks.append(SinkRef(name, target, origin))
    return PluginSet(tuple(collectors), tuple(sinks))


def collector_refs(plugins: PluginSet | None = None) -> list[CollectorRef]:
    """Every collector of ``plugins`` (else of a fresh scan): built-ins first, then third-party ones."""
    return list((plugins or discover()).collectors)


def sink_refs(plugins: PluginSet | None = None) -> list[SinkRef]:
    """Every sink of ``plugins`` (else of a fresh scan): built-ins first, then third-party ones."""
    return list((plugins or discover()).sinks)


def names(refs: Iterable[PluginRef]) -> list[str]:
    """The plugins' names, in order."""
    return [ref.name for ref in refs]
