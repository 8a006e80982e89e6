"""The registry checks what an entry point names against the plugin contracts, and the settings compose the tables."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.errors import ConfigError
from agent.plugin_api import NoSettings
from agent.plugin_tables import NotInstalledTable
from agent.plugins import BUILTIN_SINK_SETTINGS, BUILTIN_SINKS, CollectorRef, PluginSet, SinkRef, discover
from agent.settings import configured_paths, secret_values, settings_class

MODULE = """
from pydantic import BaseModel
from agent.plugin_api import NoSettings, PluginSettings
from agent.sample import MetricKind, MetricSpec


class Good:
    name = "good"
    settings_model = NoSettings
    metrics = (MetricSpec("good_value", MetricKind.GAUGE, "A value."),)

    @classmethod
    def from_settings(cls, cfg, context):
        return cls()

    async def collect(self):
        return []


class Misnamed(Good):
    name = "other"


class Unconfigurable(Good):
    name = "unconfigurable"
    settings_model = None


class BadMetrics(Good):
    name = "bad_metrics"
    metrics = ["good_value"]


class Static(Good):
    name = "static"
    from_settings = staticmethod(lambda cfg, context: None)


class NoCollect:
    name = "no_collect"
    settings_model = NoSettings
    metrics = ()

    @classmethod
    def from_settings(cls, cfg, context):
        return cls()


class PathsSettings(PluginSettings):
    log: object = None
    dirs: list = []


class Paths(Good):
    name = "paths"
    settings_model = PathsSettings
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A plugin module on the path, holding classes that keep and break the collector contract."""
    (tmp_path / "contractplugins.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "contractplugins"


def test_a_class_that_keeps_the_contract_loads(module: str) -> None:
    """A collector with name, metrics, settings_model, from_settings and collect loads, typed."""
    cls = CollectorRef("good", f"{module}:Good", "pop-agent-test").load()
    assert ("good", NoSettings) == (cls.name, cls.settings_model)


@pytest.mark.parametrize(
    ("name", "attr", "expected"),
    [
        ("good", "Misnamed", "collectors.good: contractplugins:Misnamed.name must be 'good', its entry point's name"),
        ("unconfigurable", "Unconfigurable", "settings_model must be a pydantic model"),
        ("bad_metrics", "BadMetrics", "metrics must be a tuple of agent.sample.MetricSpec"),
        ("static", "Static", "from_settings(cfg, context) must be a classmethod"),
        ("no_collect", "NoCollect", "contractplugins:NoCollect has no collect()"),
        ("Good", "Good", "collectors.Good: a plugin's name must be lower-case letters, digits and _"),
        ("timeout", "Good", "collectors.timeout: 'timeout' is reserved"),
        ("json", "Good", "collectors.json: 'json' is reserved"),
        ("good", "Absent", "collectors.good: contractplugins:Absent does not exist"),
    ],
)
def test_a_class_that_breaks_the_contract_is_a_one_line_config_error(
    module: str, name: str, attr: str, expected: str
) -> None:
    """Each broken part of the contract is named in one line, before anything runs."""
    with pytest.raises(ConfigError) as caught:
        CollectorRef(name, f"{module}:{attr}", "pop-agent-test").load()
    assert (True, False) == (expected in str(caught.value), "\n" in str(caught.value))


def test_every_builtin_sink_names_its_settings_module() -> None:
    """Each built-in sink's class declares the model its light settings module holds."""
    for name in BUILTIN_SINKS:
        ref = SinkRef(name, BUILTIN_SINKS[name], "builtin")
        assert (name, ref.load().settings_model) == (name, ref.settings_model()), BUILTIN_SINK_SETTINGS[name]


def test_settings_compose_each_plugins_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-ins' tables are their own models; a sink whose code is missing keeps its table unread."""
    builtins = discover(third_party=False)
    # central as a community build without the upload component sees it: neither its code nor its settings module.
    monkeypatch.setitem(BUILTIN_SINK_SETTINGS, "central", "sinks.nowhere_settings:CentralSinkSettings")
    missing = SinkRef("central", "sinks.nowhere:CentralSink", "builtin")
    plugins = PluginSet(builtins.collectors, (missing, *builtins.sinks[1:]))
    settings = settings_class(plugins)(
        sinks={"central": {"url": "https://c.example/i", "token": "t0ken"}, "loki": {"url": "http://loki:3100"}},
        collectors={"vaults": {"path": "/var/lib/vaults"}},
    )
    central, loki, vaults = (
        settings.sinks.table("central"),
        settings.sinks.table("loki"),
        settings.collectors.table("vaults"),
    )
    assert (True, "LokiSinkSettings", "VaultsSettings") == (
        isinstance(central, NotInstalledTable),
        type(loki).__name__,
        type(vaults).__name__,
    )
    assert [("vaults", "collectors.vaults.path", Path("/var/lib/vaults"))] == configured_paths(settings)
    assert "t0ken" in secret_values(settings)


def test_paths_of_any_collector_are_configured_paths(module: str) -> None:
    """Path fields of a third-party table, alone or in a list, are checked like the built-ins' paths."""
    ref = CollectorRef("paths", f"{module}:Paths", "pop-agent-test")
    model = ref.settings_model()
    assert issubclass(model, BaseModel)
    settings = settings_class(PluginSet((ref,), ()))(
        collectors={"paths": {"log": Path("/var/log/a.log"), "dirs": [Path("/d1"), "text"]}}
    )
    expected = [
        ("paths", "collectors.paths.log", Path("/var/log/a.log")),
        ("paths", "collectors.paths.dirs[0]", Path("/d1")),
    ]
    assert expected == configured_paths(settings)
