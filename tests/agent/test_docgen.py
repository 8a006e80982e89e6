"""The generated reference docs: checked in as generated, complete, and true to the settings they describe."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agent import docgen
from agent.errors import ConfigError
from agent.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
CONFIGURATION = REPO / "docs" / "configuration.md"
PRIVACY = REPO / "docs" / "privacy.md"
OPS_VARIABLES = ("NTFY_ALERT_URL", "NTFY_ALERT_TOKEN", "KUMA_PUSH_URL")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the host's settings out of the tests that load settings."""
    for key in list(os.environ):
        if key.startswith("POP_AGENT_") or key in OPS_VARIABLES:
            monkeypatch.delenv(key)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("POP_AGENT_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    monkeypatch.chdir(tmp_path)


def leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf field of the settings model, found independently of the generator."""
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaf_paths(annotation, (*prefix, name))
        else:
            yield (*prefix, name)


def test_checked_in_configuration_is_the_generated_one() -> None:
    """docs/configuration.md is exactly what `python -m agent.docgen` prints (run `make docs` after a change)."""
    assert docgen.render_configuration() == CONFIGURATION.read_text(encoding="utf-8")


def test_module_entry_point_prints_the_reference() -> None:
    """`python -m agent.docgen` writes the same reference to stdout, in a process of its own."""
    result = subprocess.run(
        [sys.executable, "-m", "agent.docgen"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert docgen.render_configuration() == result.stdout


def test_every_setting_has_an_entry_and_an_index_row() -> None:
    """Each leaf setting has its heading, its TOML place, its environment name and an index row."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    docs = {doc.path: doc for doc in docgen.iter_settings()}
    assert sorted(leaf_paths(docgen.builtin_settings())) == sorted(docs)
    for path, doc in docs.items():
        dotted = ".".join(path)
        assert 1 == text.count(f"\n### `{dotted}`\n"), dotted
        assert f"| [`{dotted}`](#{dotted.replace('.', '').lower()}) | `{doc.env}` |" in text
        place = f"- TOML: `{path[-1]}` in `[{'.'.join(path[:-1])}]`" if len(path) > 1 else f"- TOML: `{path[0]}` "
        assert place in text, dotted


def test_every_setting_has_a_description() -> None:
    """No setting is documented by its name alone: each Field carries a description."""
    assert [] == [doc.dotted for doc in docgen.iter_settings() if not doc.description]


def test_environment_names() -> None:
    """POP_AGENT_ plus the upper-case path joined by __, and the three operations variables by exact name."""
    envs = {doc.dotted: doc.env for doc in docgen.iter_settings()}
    assert "POP_AGENT_SINKS__CENTRAL__URL" == envs["sinks.central.url"]
    assert "POP_AGENT_ALERTS__OUTAGE_AFTER" == envs["alerts.outage_after"]
    assert "POP_AGENT_INTERVAL" == envs["interval"]
    assert {"NTFY_ALERT_URL", "NTFY_ALERT_TOKEN", "KUMA_PUSH_URL"} == {
        envs["ntfy_alert_url"],
        envs["ntfy_alert_token"],
        envs["kuma_push_url"],
    }


def field_of(path: tuple[str, ...]) -> Any:
    """The pydantic FieldInfo of a dotted setting."""
    model: Any = docgen.builtin_settings()
    for name in path[:-1]:
        model = model.model_fields[name].annotation
    return model.model_fields[path[-1]]


def probe(path: tuple[str, ...]) -> tuple[str, Any] | None:
    """A valid value for a free-text setting, as the environment spells it and as the model holds it."""
    text = str(field_of(path).annotation)
    if "Literal" in text or "float" in text or "int" in text or "bool" in text:
        return None  # for these, a nonsense value must be refused instead
    if path[-1] in ("url", "ntfy_alert_url", "kuma_push_url"):
        return "https://probe.example/x", "https://probe.example/x"
    if "list" in text:
        return '["probe"]', [Path("probe")] if "Path" in text else ["probe"]
    return "probe", Path("probe") if "Path" in text else "probe"


def value_at(settings: Settings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for name in path:
        value = getattr(value, name)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


@pytest.mark.usefixtures("clean_env")
def test_documented_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each documented environment name reaches its setting: free text arrives, a nonsense number is refused."""
    missed = []
    for doc in docgen.iter_settings():
        sample = probe(doc.path)
        monkeypatch.setenv(doc.env, sample[0] if sample else "nonsense")
        try:
            value = value_at(load_settings(), doc.path)
            if sample is None or value != sample[1]:
                missed.append(doc.dotted)
        except ConfigError as error:
            if sample is not None or doc.dotted not in str(error):
                missed.append(doc.dotted)
        monkeypatch.delenv(doc.env)
    assert [] == missed


def test_output_does_not_depend_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults computed at start (host name, $STATE_DIRECTORY) are described, not evaluated."""
    before = docgen.render_configuration()
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/somewhere-else")
    monkeypatch.setattr("socket.gethostname", lambda: "another-host")
    assert before == docgen.render_configuration()
    assert "another-host" not in before and "somewhere-else" not in before


def test_secrets_are_marked() -> None:
    """Exactly the SecretStr settings are flagged as secret."""
    secret = {doc.dotted for doc in docgen.iter_settings() if doc.secret}
    expected = {"sinks.central.token", "ntfy_alert_url", "ntfy_alert_token", "kuma_push_url"}
    assert expected | {"sinks.remote_write.token", "sinks.remote_write.password"} == secret


def test_privacy_statement_lists_every_declared_metric() -> None:
    """docs/privacy.md holds the generated metric table (`python -m agent.docgen --privacy docs/privacy.md`)."""
    text = PRIVACY.read_text(encoding="utf-8")
    assert docgen.splice_metrics(text) == text


def test_privacy_splice_rewrites_only_the_table(tmp_path: Path) -> None:
    """--privacy replaces what is between the markers and keeps the prose around them."""
    page = tmp_path / "privacy.md"
    page.write_text(f"before\n{docgen.METRICS_BEGIN}\nstale\n{docgen.METRICS_END}\nafter\n")
    assert 0 == docgen.main(["--privacy", str(page)])
    assert f"before\n{docgen.render_metrics()}\nafter\n" == page.read_text()
    assert "| `spool_pending` | gauge |" in page.read_text()
