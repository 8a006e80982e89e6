"""Third-party plugins own their settings: a collector from an entry point is configured by its own table."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, RunAgent, agent_env

EX_CONFIG = 78

PLUGIN = """
from pathlib import Path

from pydantic import BaseModel, Field

from agent.errors import CollectorError
from agent.plugin_api import PluginContext, PluginSettings
from agent.sample import MetricKind, MetricSpec, Sample


class GreeterSettings(PluginSettings):
    \"\"\"The greeter: counts the lines of a file.\"\"\"

    source: Path | None = Field(None, description="File whose lines are counted.")
    factor: int = Field(1, ge=0, description="A number reported as it is.")


class Greeter:
    name = "greeter"
    settings_model = GreeterSettings
    metrics = (
        MetricSpec("greeter_lines", MetricKind.GAUGE, "Lines in the source file."),
        MetricSpec("greeter_factor", MetricKind.GAUGE, "The configured factor."),
    )

    def __init__(self, cfg, state_dir):
        self.cfg = cfg
        self.state_dir = state_dir

    @classmethod
    def from_settings(cls, cfg: GreeterSettings, context: PluginContext):
        return None if cfg.source is None else cls(cfg, context.state_dir)

    async def collect(self):
        try:
            lines = len(self.cfg.source.read_text().splitlines())
        except OSError:
            raise CollectorError("source unreadable", code="io") from None
        return [Sample("greeter_lines", lines), Sample("greeter_factor", self.cfg.factor)]


class FileSinkSettings(PluginSettings):
    path: Path = Field(description="Where each delivered heartbeat's id is appended.")


class FileSink:
    name = "filesink"
    settings_model = FileSinkSettings
    max_batch = 10

    def __init__(self, path):
        self.path = path

    @classmethod
    def from_settings(cls, cfg: FileSinkSettings, context: PluginContext):
        return cls(cfg.path)

    async def send(self, batch, deadline):
        from agent.sample import Delivery

        with self.path.open("a") as out:
            out.writelines(item.id + "\\n" for item in batch)
        return Delivery(acked=frozenset(item.id for item in batch))

    async def aclose(self):
        pass


class Exploding:
    name = "exploding"
    settings_model = PluginSettings
    metrics = ()

    @classmethod
    def from_settings(cls, cfg, context):
        raise RuntimeError("a secret 198.51.100.7 in the text")

    async def collect(self):
        return []


class LooseSettings(BaseModel):  # a plain model: neither frozen nor strict by itself
    level: int  # required: the collector is off until its table gives it


class Loose:
    name = "loose"
    settings_model = LooseSettings
    metrics = (MetricSpec("loose_level", MetricKind.GAUGE, "The configured level."),)

    def __init__(self, level):
        self.level = level

    @classmethod
    def from_settings(cls, cfg, context):
        return cls(cfg.level)

    async def collect(self):
        return [Sample("loose_level", self.level)]
"""


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A third-party distribution on the path whose collectors declare settings models."""
    site = tmp_path / "site"
    info = site / "pop_agent_greeter-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pop-agent-greeter\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[pop_agent.collectors]\ngreeter = greeterplugin:Greeter\nloose = greeterplugin:Loose\n"
        "exploding = greeterplugin:Exploding\nnameless = greeterplugin:Nameless\nunimportable = broken:Broken\n"
        "[pop_agent.sinks]\nfilesink = greeterplugin:FileSink\n"
    )
    (site / "greeterplugin.py").write_text(textwrap.dedent(PLUGIN))
    (site / "broken.py").write_text("class Broken(:\n")
    return site


# Collectors that break the contract; every test but the ones about them disables them.
BROKEN = {"POP_AGENT_COLLECTORS__DISABLED": '["exploding", "nameless", "unimportable"]'}


def run_with(
    run_agent: RunAgent, tmp_path: Path, site: Path, config: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the agent with the plugin installed and ``config`` as its file."""
    (tmp_path / "agent.toml").write_text(config)
    env = {**BROKEN, **env}
    return run_agent(*args, "--config", str(tmp_path / "agent.toml"), PYTHONPATH=f"{REPO}:{site}", **env)


def test_its_table_configures_it_and_its_metrics_pass_the_scrubber(
    run_agent: RunAgent, tmp_path: Path, plugin_path: Path
) -> None:
    """`[collectors.greeter]` reaches the plugin, and `agent --once` carries its declared metrics."""
    source = tmp_path / "lines.txt"
    source.write_text("one\ntwo\n")
    config = f'[collectors.greeter]\nsource = "{source}"\nfactor = 3\n'
    result = run_with(run_agent, tmp_path, plugin_path, config, "--once")
    doc = json.loads(result.stdout)
    expected = (0, "ok", 2, 3)
    metrics = doc["metrics"]
    actual = (result.returncode, doc["collectors"]["greeter"], metrics["greeter_lines"], metrics["greeter_factor"])
    assert expected == actual
    assert "loose" not in doc["collectors"]  # its required key is not given: not configured


def test_its_environment_names_reach_it(run_agent: RunAgent, tmp_path: Path, plugin_path: Path) -> None:
    """POP_AGENT_COLLECTORS__GREETER__FACTOR sets the plugin's key, stronger than the file."""
    source = tmp_path / "lines.txt"
    source.write_text("one\n")
    config = f'[collectors.greeter]\nsource = "{source}"\nfactor = 3\n'
    result = run_with(run_agent, tmp_path, plugin_path, config, "--once", POP_AGENT_COLLECTORS__GREETER__FACTOR="7")
    assert (0, 7) == (result.returncode, json.loads(result.stdout)["metrics"]["greeter_factor"])


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        (
            "[collectors.greeter]\nfactr = 3\n",
            {},
            "collectors.greeter.factr (env POP_AGENT_COLLECTORS__GREETER__FACTR): unknown setting",
        ),
        (
            "[collectors.greeter]\nfactor = -1\n",
            {},
            "collectors.greeter.factor (env POP_AGENT_COLLECTORS__GREETER__FACTOR): Input should be greater than",
        ),
        (
            "[collectors.loose]\nlevel = 2\nlevle = 3\n",
            {},
            "collectors.loose.levle (env POP_AGENT_COLLECTORS__LOOSE__LEVLE): unknown setting",
        ),
        ("", {"POP_AGENT_COLLECTORS__GREETER__FACTR": "3"}, "POP_AGENT_COLLECTORS__GREETER__FACTR: unknown setting"),
        ("[collectors.nosuch]\nkey = 1\n", {}, "collectors.nosuch (env POP_AGENT_COLLECTORS__NOSUCH): unknown setting"),
    ],
    ids=["unknown-key", "bad-value", "plain-model-is-strict-too", "unknown-env", "no-such-plugin"],
)
def test_a_wrong_key_is_one_line_and_exit_78(
    run_agent: RunAgent, tmp_path: Path, plugin_path: Path, config: str, env: dict[str, str], expected: str
) -> None:
    """A wrong key in a third-party table, in the file or the environment, is refused like a built-in's."""
    result = run_with(run_agent, tmp_path, plugin_path, config, "--once", **env)
    lines = result.stderr.strip().splitlines()
    assert (EX_CONFIG, 1, True) == (result.returncode, len(lines), expected in lines[0])
    assert "Traceback" not in result.stderr


def test_a_required_key_turns_it_on_and_config_shows_the_table(
    run_agent: RunAgent, tmp_path: Path, plugin_path: Path
) -> None:
    """`[collectors.loose]` with its required key runs it; `agent config` shows the validated table."""
    config = "[collectors.loose]\nlevel = 4\n"
    once = run_with(run_agent, tmp_path, plugin_path, config, "--once")
    shown = run_with(run_agent, tmp_path, plugin_path, config, "config")
    expected = (0, 4, {"level": 4})
    level, table = json.loads(once.stdout)["metrics"]["loose_level"], json.loads(shown.stdout)["collectors"]["loose"]
    actual = (once.returncode, level, table)
    assert expected == actual


def test_a_sink_plugin_is_configured_by_its_table(run_agent: RunAgent, tmp_path: Path, plugin_path: Path) -> None:
    """`[sinks.filesink]` configures a third-party sink: `agent --once --push` delivers the tick to it."""
    out = tmp_path / "delivered.txt"
    config = f'telemetry = "on"\n[sinks.filesink]\npath = "{out}"\n'
    result = run_with(run_agent, tmp_path, plugin_path, config, "--once", "--push")
    assert (0, 1) == (result.returncode, len(out.read_text().splitlines()))


@pytest.mark.parametrize(
    ("disabled", "expected"),
    [
        ('["nameless", "unimportable"]', "collectors.exploding: pop-agent-greeter failed to start (RuntimeError)"),
        ('["exploding", "unimportable"]', "collectors.nameless: greeterplugin:Nameless does not exist"),
        ('["exploding", "nameless"]', "collectors.unimportable: module broken cannot be imported (SyntaxError)"),
    ],
    ids=["raises", "missing-class", "syntax-error"],
)
def test_a_plugin_that_breaks_the_contract_is_one_line_naming_it(
    run_agent: RunAgent, tmp_path: Path, plugin_path: Path, disabled: str, expected: str
) -> None:
    """A plugin whose from_settings raises, or whose class is missing: exit 78, one line, no exception text."""
    result = run_with(run_agent, tmp_path, plugin_path, "", "--once", POP_AGENT_COLLECTORS__DISABLED=disabled)
    assert (EX_CONFIG, [f"agent: configuration error: {expected}"]) == (result.returncode, result.stderr.splitlines())


def test_once_imports_the_sinks_settings_models_but_no_upload_code(tmp_path: Path) -> None:
    """Validating `[sinks.central]` for `agent --once` loads the sinks' settings modules only, never their code."""
    script = (
        "import sys\n"
        "from agent.cli import main\n"
        "try:\n"
        "    main(['--once'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(name for name in sys.modules if name.startswith('sinks.')), file=sys.stderr)\n"
    )
    (tmp_path / "agent.toml").write_text('[sinks.central]\nurl = "https://central.example/ingest"\ntoken = "t0ken"\n')
    env = agent_env(tmp_path, POP_AGENT_CONFIG=str(tmp_path / "agent.toml"), POP_AGENT_STATE_DIR=str(tmp_path / "s"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    loaded = done.stderr.strip().splitlines()[-1]
    expected = str([f"sinks.{name}_settings" for name in ("central", "loki", "pushgateway", "remote_write")])
    assert expected == loaded
