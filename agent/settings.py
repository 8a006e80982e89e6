"""The agent's configuration: one pydantic-settings model, built once by the CLI.

Sources, strongest first: CLI flags (passed as keyword arguments), environment
(``POP_AGENT_`` prefix, ``__`` nesting, plus the POP's three operations variables
by their exact names), the TOML file, defaults.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("/etc/pop-agent/agent.toml")
ENV_PREFIX = "POP_AGENT_"
POP_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
HTTP_URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s]*)?$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: SecretStr | str | None) -> Any:
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if raw is not None and not re.match(HTTP_URL_PATTERN, raw):
        raise ValueError("must be an http:// or https:// URL")
    return value


class CentralSinkSettings(_Section):
    """Central ingest v1."""

    url: str | None = Field(None, description="Central ingest URL; the sink is on when set (and telemetry allows it).")
    token: SecretStr | None = Field(None, description="Bearer token for central.")
    token_file: Path | None = Field(None, description="File holding the bearer token (read at start).")
    batch_max_count: int = Field(500, ge=1, le=10_000, description="Most heartbeats in one request.")
    batch_max_bytes: int = Field(1_048_576, ge=1024, description="Most uncompressed bytes in one request.")
    gzip_min_bytes: int = Field(4096, ge=0, description="Bodies at least this large are gzip-compressed.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(15.0, gt=0, description="Seconds to wait for central's answer.")
    max_attempts: int = Field(4, ge=1, le=20, description="Tries per batch before it waits for the next tick.")
    max_retry_delay: float = Field(30.0, gt=0, description="Longest single wait between tries, Retry-After included.")

    _url = field_validator("url")(_check_url)


class PushgatewaySinkSettings(_Section):
    """Prometheus Pushgateway."""

    url: str | None = Field(None, description="Pushgateway base URL; the sink is on when set.")
    job: str = Field("pop_agent", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$", description="The job grouping label.")
    timeout: float = Field(10.0, gt=0, description="Seconds per request.")

    _url = field_validator("url")(_check_url)


class LokiSinkSettings(_Section):
    """Grafana Loki push API."""

    url: str | None = Field(None, description="Loki base URL; the sink is on when set.")
    tenant_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Sent as X-Scope-OrgID when set."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds per request.")
    batch_max_count: int = Field(500, ge=1, le=10_000, description="Most heartbeats in one push.")

    _url = field_validator("url")(_check_url)


class RemoteWriteSinkSettings(_Section):
    """Prometheus remote write 1.0: VictoriaMetrics, Mimir, Thanos Receive, Cortex, Prometheus."""

    url: str | None = Field(None, description="Remote-write endpoint (e.g. .../api/v1/write); the sink is on when set.")
    token: SecretStr | None = Field(None, description="Bearer token for the receiver.")
    token_file: Path | None = Field(
        None, description="File holding the bearer token (read at start); else the credential remote-write-token."
    )
    username: str | None = Field(
        None, pattern=r"^[!-9;-~]{1,128}$", description="Basic-auth user name (instead of a bearer token)."
    )
    password: SecretStr | None = Field(None, description="Basic-auth password.")
    password_file: Path | None = Field(
        None, description="File holding the basic-auth password; else the credential remote-write-password."
    )
    tenant_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Sent as X-Scope-OrgID when set (Mimir, Cortex)."
    )
    job: str = Field(
        "pop_agent", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$", description="The job label on every series."
    )
    batch_max_count: int = Field(500, ge=1, le=10_000, description="Most heartbeats in one request.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(15.0, gt=0, description="Seconds to wait for the receiver's answer.")
    max_attempts: int = Field(4, ge=1, le=20, description="Tries per request before it waits for the next pass.")
    max_retry_delay: float = Field(30.0, gt=0, description="Longest single wait between tries, Retry-After included.")
    max_sample_age: float = Field(
        3300.0,
        gt=0,
        description=(
            "Heartbeats older than this many seconds are skipped for this sink (and counted): 55 min suits "
            "receivers built on the Prometheus TSDB, which refuse samples older than about an hour; "
            "VictoriaMetrics takes any age within its retention, so raise it there to replay long backlogs."
        ),
    )

    _url = field_validator("url")(_check_url)


class SinksSettings(_Section):
    central: CentralSinkSettings = CentralSinkSettings()
    pushgateway: PushgatewaySinkSettings = PushgatewaySinkSettings()
    loki: LokiSinkSettings = LokiSinkSettings()
    remote_write: RemoteWriteSinkSettings = RemoteWriteSinkSettings()


class VaultsSettings(_Section):
    """Where to count vault stores: a directory (``path`` + ``glob``) or a SQLite database."""

    path: Path | None = Field(None, description="Directory holding one vault store per entry.")
    glob: str = Field("*", description="Pattern of vault store names inside path.")
    sqlite: Path | None = Field(None, description="SQLite database to count vaults in (opened read-only).")
    query: str = Field("SELECT count(*) FROM vaults", description="Count query; must return one number.")


class RequestsSettings(_Section):
    """The web server's access log, and an optional tarpit/scanner log."""

    access_log: Path | None = Field(None, description="Access log to follow.")
    format: Literal["combined", "json"] = Field("combined", description="Access log format.")
    tarpit_log: Path | None = Field(None, description="Tarpit/scanner log; unique addresses are counted.")
    tarpit_format: Literal["combined", "json"] = Field("combined", description="Tarpit log format.")
    max_lines_per_tick: int = Field(200_000, ge=1000, description="Bound on lines read per tick.")


class JanitorSettings(_Section):
    """Retention for logs that hold scanner addresses."""

    dirs: list[Path] = Field(default_factory=list, description="Directories whose old files are deleted.")
    retention_days: float = Field(30, gt=0, description="Files older than this many days are deleted.")


class CollectorsSettings(_Section):
    timeout: float = Field(5.0, gt=0, description="Seconds one collector may take per tick.")
    disabled: list[str] = Field(default_factory=list, description="Collectors not to run.")
    vaults: VaultsSettings = VaultsSettings()
    requests: RequestsSettings = RequestsSettings()
    janitor: JanitorSettings = JanitorSettings()


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


class AlertsSettings(_Section):
    outage_after: float = Field(300, gt=0, description="Seconds of failed delivery before an outage alert.")
    hook_timeout: float = Field(5.0, gt=0, description="Seconds an alert hook may take.")


def default_pop_id() -> str:
    """The host name as a slug: lower case, runs of other characters as one dash."""
    slug = re.sub(r"[^a-z0-9]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return slug[:63] or "pop"


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

    pop_id: str = Field(default_factory=default_pop_id, pattern=POP_ID_PATTERN, description="This POP's id.")
    interval: float = Field(10.0, ge=0.1, le=86_400, description="Seconds between ticks.")
    state_dir: Path = Field(default_factory=default_state_dir, description="Where the spool and state live.")
    telemetry: Literal["on", "off"] | None = Field(
        None, description='"on" lets heartbeats leave the POP; community builds default to "off".'
    )
    shutdown_deadline: float = Field(10.0, gt=0, le=120, description="Seconds a clean stop may take.")
    sinks: SinksSettings = SinksSettings()
    collectors: CollectorsSettings = CollectorsSettings()
    spool: SpoolSettings = SpoolSettings()
    alerts: AlertsSettings = AlertsSettings()
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

    _ntfy = field_validator("ntfy_alert_url", "kuma_push_url")(_check_url)

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


def config_file_path(explicit: Path | None) -> Path | None:
    """``--config``, else ``$POP_AGENT_CONFIG``, else the system file if it exists."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get("POP_AGENT_CONFIG")
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from every source, or raise a one-line :class:`ConfigError`."""
    path = config_file_path(config_file)
    if path is not None:
        _check_toml(path)
    bound = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    try:
        settings: Settings = bound(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return settings


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


def _describe(exc: ValidationError) -> str:
    """One line naming each bad setting and its environment variable, never its value."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        dotted = ".".join(str(part) for part in error["loc"])
        env = ENV_PREFIX + "__".join(str(part) for part in error["loc"]).upper()
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{dotted} (env {env}): {message}")
    return "invalid setting: " + "; ".join(parts)


_URL_CREDENTIALS = re.compile(r"^(https?://)[^/@\s]+@", re.IGNORECASE)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets shown as ``**********``.

    Secret fields are masked by their type; a sink URL that carries credentials
    (``https://user:password@host/``) has them masked too.
    """

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: mask(item) for key, item in value.items()}
        if isinstance(value, str):
            return _URL_CREDENTIALS.sub(r"\1**********@", value)
        return value

    dumped: dict[str, Any] = mask(settings.model_dump(mode="json"))
    return dumped
