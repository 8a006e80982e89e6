"""The agent's configuration: one pydantic-settings model, built once by the CLI.

Sources, strongest first: CLI flags (passed as keyword arguments), environment
(``POP_AGENT_`` prefix, ``__`` nesting, plus the POP's three operations variables
by their exact names), the TOML file, defaults.

This module holds the agent's own settings. Each collector and sink declares the
model of its own table; :func:`settings_class` composes those of the plugins a
build has (:mod:`agent.plugin_tables`), so ``[collectors.<name>]`` and
``[sinks.<name>]`` are validated as strictly as the rest.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.errors import ConfigError
from agent.identity import default_pop_id, pop_id_problem
from agent.plugin_api import check_url
from agent.plugin_tables import CollectorsSettings, SinksSettings, compose_tables, unread_tables
from agent.plugins import PluginSet, discover
from agent.sample import POP_ID_PATTERN
from agent.settings_env import CONFIG_ENV, ENV_PREFIX, check_environment

DEFAULT_CONFIG_FILE = Path("/etc/pop-agent/agent.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpoolSettings(_Section):
    max_files: int = Field(100_000, ge=10, description="Most heartbeats kept on disk; the oldest are dropped.")
    max_bytes: int = Field(268_435_456, ge=65_536, description="Most bytes kept on disk; the oldest are dropped.")
    local_max_files: int = Field(
        8_640,
        ge=10,
        description=(
            "With no sink enabled (telemetry off) the spool is only a local record: it keeps at most this many "
            "heartbeats (a day at 10 s), so memory and disk stay flat on a POP that never sends."
        ),
    )


class DeliverySettings(_Section):
    """Every sink's delivery loop: how it backs off after a failed pass (see agent/pacing.py)."""

    backoff_initial: float = Field(
        1.0, gt=0, le=3600, description="Longest wait after the first failed pass; it doubles with each failure."
    )
    backoff_max: float = Field(
        120.0, gt=0, le=3600, description="Cap of the backoff; each wait is drawn from zero to it (full jitter)."
    )
    retry_after_max: float = Field(
        900.0, ge=0, le=86_400, description="Longest Retry-After honoured; a receiver asking for more gets this."
    )
    flush_interval: float = Field(
        30.0,
        ge=0,
        le=3600,
        description=(
            "Seconds between deliveries, in whole ticks: the heartbeats of the ticks between wait in the spool and "
            "go together in one request (0, or anything up to the interval: every tick). The first delivery after a "
            "start or reload goes at once. Fewer requests for central and less CPU on the POP, for heartbeats that "
            "reach central up to this much later."
        ),
    )


class AlertsSettings(_Section):
    outage_after: float = Field(300, gt=0, description="Seconds of failed delivery before an outage alert.")
    hook_timeout: float = Field(5.0, gt=0, description="Seconds an alert hook may take.")


class LedgerSettings(_Section):
    """The sent ledger: a local record of every request made by an upload sink or alert hook."""

    enabled: bool = Field(True, description="Record every request in <state_dir>/ledger (read by agent sent).")
    max_age_days: float = Field(30, gt=0, description="Records older than this many days are deleted.")
    max_bytes: int = Field(67_108_864, ge=65_536, description="Most bytes of records kept; the oldest are deleted.")
    keep_bodies: bool = Field(False, description="Also keep each request body, for agent sent --verify.")
    bodies_max_bytes: int = Field(
        268_435_456, ge=65_536, description="Most bytes of kept bodies; the oldest are deleted."
    )
    sync_interval: float = Field(
        1.0,
        ge=0,
        le=60,
        description=(
            "Seconds within which a record reaches the disk (written and synced): a sink's are written right after "
            "its send, before its heartbeats leave the spool; an alert hook's with the next tick's heartbeat, or "
            "within this if that comes later. Records written together share one fsync. 0 writes each at once."
        ),
    )


def configured_paths(settings: Settings) -> list[tuple[str, str, Path]]:
    """Every path an enabled collector's table names: ``(collector, setting, path)``, lists by index."""
    collectors = settings.collectors
    disabled = set(collectors.disabled)
    found: list[tuple[str, str, Path]] = []
    for name in type(collectors).model_fields:
        table = collectors.table(name)
        if table is None or name in disabled:
            continue
        for key in type(table).model_fields:
            value = getattr(table, key)
            if isinstance(value, Path):
                found.append((name, f"collectors.{name}.{key}", value))
            elif isinstance(value, list | tuple):
                found += [
                    (name, f"collectors.{name}.{key}[{i}]", item)
                    for i, item in enumerate(value)
                    if isinstance(item, Path)
                ]
    return found


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` (set by systemd's StateDirectory=), else ``./.pop-agent``."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path(".pop-agent")


class Settings(BaseSettings):
    """The effective configuration of one agent process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )
    # The plugins whose tables these settings hold (see settings_class), so that wiring builds exactly those.
    plugins: ClassVar[PluginSet | None] = None

    pop_id: str = Field(
        default_factory=default_pop_id,
        pattern=rf"^{POP_ID_PATTERN}$",
        description=(
            "This POP's id. Default: the host name as a slug; a host name the scrubber refuses (ip-10-1-2-3) "
            "gives pop- and 12 hex digits derived from /etc/machine-id instead. An explicit id the scrubber "
            "refuses is a configuration error."
        ),
    )
    interval: float = Field(10.0, ge=0.1, le=86_400, description="Seconds between ticks.")
    state_dir: Path = Field(default_factory=default_state_dir, description="Where the spool and state live.")
    telemetry: Literal["on", "off"] | None = Field(
        None, description='"on" lets heartbeats leave the POP; community builds default to "off".'
    )
    shutdown_deadline: float = Field(10.0, gt=0, le=120, description="Seconds a clean stop may take.")
    sinks: SinksSettings = SinksSettings()  # the settings of a build compose its plugins' tables
    collectors: CollectorsSettings = CollectorsSettings()
    spool: SpoolSettings = SpoolSettings()
    delivery: DeliverySettings = DeliverySettings()
    alerts: AlertsSettings = AlertsSettings()
    ledger: LedgerSettings = LedgerSettings()
    ntfy_alert_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ntfy_alert_url", "NTFY_ALERT_URL"),
        description="ntfy topic URL for outage and recovery messages (env NTFY_ALERT_URL).",
    )
    ntfy_alert_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ntfy_alert_token", "NTFY_ALERT_TOKEN"),
        description="ntfy access token (env NTFY_ALERT_TOKEN).",
    )
    kuma_push_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("kuma_push_url", "KUMA_PUSH_URL"),
        description="Uptime Kuma push URL, pushed every tick (env KUMA_PUSH_URL).",
    )

    _ntfy = field_validator("ntfy_alert_url", "kuma_push_url")(check_url)

    @field_validator("pop_id")
    @classmethod
    def _safe_pop_id(cls, value: str) -> str:
        """A pop id the scrubber refuses would make every heartbeat a rejected one: refuse it at start."""
        problem = pop_id_problem(value)
        if problem is not None and re.fullmatch(POP_ID_PATTERN, value):
            raise ValueError(problem)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def config_file_path(explicit: Path | None, *, use_system_file: bool = True) -> Path | None:
    """``--config``, else ``$POP_AGENT_CONFIG``, else the system file if it exists.

    ``--no-config`` (``use_system_file=False``) means no file at all, and so does
    an empty ``POP_AGENT_CONFIG``: the embedded defaults, whatever is in ``/etc``.
    """
    if explicit is not None:
        return explicit
    if not use_system_file:
        return None
    if CONFIG_ENV in os.environ:
        from_env = os.environ[CONFIG_ENV]
        return Path(from_env) if from_env else None
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None


def settings_class(plugins: PluginSet, *, toml_file: Path | None = None) -> type[Settings]:
    """The settings of a build with ``plugins``: ``[collectors.<name>]`` and ``[sinks.<name>]`` per plugin.

    Each table is validated by its plugin's own model, strictly. A plugin that
    cannot be loaded gets no table (wiring reports why, unless it is disabled),
    and a built-in sink whose code this build lacks gets a :class:`NotInstalledTable`.
    """
    tables = {
        "sinks": compose_tables(SinksSettings, plugins.sinks),
        "collectors": compose_tables(CollectorsSettings, plugins.collectors),
    }
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__doc__": Settings.__doc__,
        "__annotations__": tables,
        **{name: table() for name, table in tables.items()},
        "model_config": {**Settings.model_config, "toml_file": toml_file},
        "plugins": plugins,
    }
    return type("Settings", (Settings,), namespace)


def load_settings(
    config_file: Path | None = None,
    *,
    use_system_file: bool = True,
    plugins: PluginSet | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings from every source, or raise a one-line :class:`ConfigError`.

    The tables of ``plugins`` (default: every plugin installed) are validated by
    their own models.
    """
    path = config_file_path(config_file, use_system_file=use_system_file)
    if path is not None:
        _check_toml(path)
    bound = settings_class(discover() if plugins is None else plugins, toml_file=path)
    check_environment(os.environ, bound)
    try:
        settings = bound(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc), problems=_problems(exc)) from None
    check_state_dir_shape(settings.state_dir)
    return settings


def check_state_dir_shape(path: Path) -> None:
    """A state directory that is a file, or lies under one, can never work: say so in one line.

    Only looks (lstat): whether it can be created and written is for the
    commands that write (:func:`agent.preflight.prepare_state_dir`).
    """
    probe = path
    while True:
        try:
            mode = probe.stat().st_mode
        except FileNotFoundError:
            if probe.parent == probe:
                return
            probe = probe.parent
            continue
        except NotADirectoryError:
            # stat() walked through a file on the way: keep climbing to name it.
            probe = probe.parent
            continue
        except OSError as exc:
            raise ConfigError(f"state_dir (env POP_AGENT_STATE_DIR) {path}: cannot be read ({exc.strerror})") from None
        if stat.S_ISDIR(mode):
            if probe == path and not os.access(path, os.R_OK | os.X_OK):
                raise ConfigError(f"state_dir (env POP_AGENT_STATE_DIR) {path}: not readable by this user")
            return
        where = "is a file" if probe == path else f"lies under {probe}, which is not a directory"
        raise ConfigError(f"state_dir (env POP_AGENT_STATE_DIR) {path}: {where}")


def _check_toml(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except PermissionError:
        raise ConfigError(f"config file {path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None


def _problems(exc: ValidationError) -> list[str]:
    """One entry per bad setting, naming it and its environment variable, never its value."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        dotted = ".".join(str(part) for part in error["loc"])
        env = ENV_PREFIX + "__".join(str(part) for part in error["loc"]).upper()
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        message = message.removeprefix("Value error, ")  # our own validators' messages read as they are
        parts.append(f"{dotted} (env {env}): {message}")
    return parts


def _describe(exc: ValidationError) -> str:
    """One line naming each bad setting and its environment variable, never its value."""
    return "invalid setting: " + "; ".join(_problems(exc))


_URL_CREDENTIALS = re.compile(r"^(https?://)[^/@\s]+@", re.IGNORECASE)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets shown as ``**********``.

    Secret fields are masked by their type; a sink URL that carries credentials
    (``https://user:password@host/``) has them masked too, and so is every value
    of a table this build keeps unread, whose secrets it cannot tell.
    """

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: mask(item) for key, item in value.items()}
        if isinstance(value, str):
            return _URL_CREDENTIALS.sub(r"\1**********@", value)
        return value

    dumped: dict[str, Any] = mask(settings.model_dump(mode="json"))
    for name, table in unread_tables(settings.sinks):
        dumped["sinks"][name] = dict.fromkeys(table.model_extra or {}, "**********")
    return dumped


def secret_values(settings: Settings) -> list[str]:
    """Every secret in the settings, plugins' tables included, for the log masker.

    The values of a table this build keeps unread count as secrets too: which of
    them are is for the missing code to say.
    """
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)

    walk(settings)
    for _, table in unread_tables(settings.sinks):
        found += [value for value in (table.model_extra or {}).values() if isinstance(value, str)]
    return [value for value in found if value]
