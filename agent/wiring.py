"""Wiring: from settings and the build's edition to the parts one agent process runs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from agent.collecting import CollectorSlot
from agent.edition import Edition, upload_installed
from agent.errors import ConfigError
from agent.plugin_api import PluginContext
from agent.plugin_tables import NotInstalledTable, PluginTables
from agent.plugins import CollectorRef, PluginRef, PluginSet, SinkRef, discover
from agent.sample import MetricKind, MetricSpec
from agent.scrubber import Allowlist
from agent.settings import Settings, configured_paths, secret_values

if TYPE_CHECKING:
    from collectors.base import Collector
    from sinks.base import Sink  # the contract ships with the upload code

P = TypeVar("P")
UPLOAD_HINT = "install the upload component (make wheel EDITION=upload; pip install pop_agent_upload-*.whl)"

# The agent's own numbers, declared like any collector's.
AGENT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("spool_pending", MetricKind.GAUGE, "Heartbeats waiting in the spool."),
    MetricSpec("spool_bytes", MetricKind.GAUGE, "Bytes of heartbeats waiting in the spool.", "bytes"),
    MetricSpec("spool_oldest_age_seconds", MetricKind.GAUGE, "Age of the oldest spooled heartbeat.", "seconds"),
    MetricSpec("spool_dropped_total", MetricKind.COUNTER, "Heartbeats dropped by the spool's bounds."),
    MetricSpec("spool_quarantined_total", MetricKind.COUNTER, "Unparseable spool files set aside."),
    MetricSpec("spool_rejected_total", MetricKind.COUNTER, "Heartbeats a receiver refused as malformed."),
    MetricSpec("spool_write_errors_total", MetricKind.COUNTER, "Heartbeats that could not be spooled."),
    MetricSpec("scrub_rejected_total", MetricKind.COUNTER, "Heartbeats the scrubber refused."),
    MetricSpec("collector_errors_total", MetricKind.COUNTER, "Collector runs that failed or timed out."),
    MetricSpec("tick_overruns_total", MetricKind.COUNTER, "Ticks skipped because the previous one ran long."),
    MetricSpec("agent_uptime_seconds", MetricKind.GAUGE, "Seconds since this agent process started.", "seconds"),
)


def telemetry_enabled(settings: Settings, edition: Edition) -> bool:
    """Whether heartbeats may leave the POP, or a :class:`ConfigError` for a contradiction.

    Commercial builds enforce telemetry and need central's URL and token;
    community builds send nothing unless the operator opts in with the upload
    component installed.
    """
    if edition == "commercial":
        if settings.telemetry == "off":
            raise ConfigError('telemetry: the commercial edition requires telemetry = "on"')
        _require_central(settings.sinks.table("central"))
        return True
    if settings.telemetry != "on":
        return False
    if not upload_installed():
        raise ConfigError(f'telemetry = "on" but this community build has no upload code: {UPLOAD_HINT}')
    return True


def _require_central(table: BaseModel | None) -> None:
    """The commercial edition's central URL and token, or a :class:`ConfigError` naming the missing one."""
    from sinks.central_settings import CentralSinkSettings  # a commercial build always has the upload code

    central = table if isinstance(table, CentralSinkSettings) else CentralSinkSettings()
    if not central.url:
        raise ConfigError("sinks.central.url (env POP_AGENT_SINKS__CENTRAL__URL): required by the commercial edition")
    if central.token is None and central.token_file is None and not _credential_present():
        raise ConfigError(
            "sinks.central.token (env POP_AGENT_SINKS__CENTRAL__TOKEN): required by the commercial edition "
            "(or token_file, or the systemd credential central-token)"
        )


def _credential_present() -> bool:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return directory is not None and (Path(directory) / "central-token").is_file()


def plugin_context(settings: Settings, environ: Mapping[str, str] | None = None) -> PluginContext:
    """What every plugin is told besides its own table."""
    credentials = (os.environ if environ is None else environ).get("CREDENTIALS_DIRECTORY", "")
    return PluginContext(
        interval=settings.interval,
        state_dir=settings.state_dir,
        collector_timeout=settings.collectors.timeout,
        credentials_dir=Path(credentials) if credentials else None,
    )


def _table(tables: PluginTables, ref: PluginRef, model: type[BaseModel]) -> BaseModel | None:
    """The plugin's validated table; its defaults if the settings were composed without it (``None``: it has none)."""
    table = tables.table(ref.name)
    if table is None and ref.name not in type(tables).model_fields:
        try:
            table = model()
        except ValidationError:
            return None  # keys without defaults: off until configured
    if table is not None and not isinstance(table, model):
        raise ConfigError(f"{ref.table}: its table was validated by another model than the plugin's")
    return table


def build_collector(ref: CollectorRef, settings: Settings, context: PluginContext | None = None) -> Collector | None:
    """The collector ``ref`` names, built from its own table, or ``None`` when that leaves it unconfigured."""
    cls = ref.load()
    table = _table(settings.collectors, ref, cls.settings_model)
    if table is None:
        return None
    return _guarded(ref, lambda: cls.from_settings(table, context or plugin_context(settings)))


def build_collectors(settings: Settings, plugins: PluginSet | None = None) -> list[CollectorSlot]:
    """Every enabled and configured collector, each in a slot with the runner's timeout."""
    disabled = set(settings.collectors.disabled)
    paths = configured_paths(settings)
    context = plugin_context(settings)
    slots = []
    for ref in (plugins or settings.plugins or discover()).collectors:
        if ref.name in disabled:
            continue
        collector = build_collector(ref, settings, context)
        if collector is not None:
            own = [path for name, _, path in paths if name == ref.name]
            slots.append(CollectorSlot(collector, settings.collectors.timeout, paths=own))
    return slots


def build_sinks(settings: Settings, telemetry: bool, plugins: PluginSet | None = None) -> list[Sink]:
    """The sinks to deliver to: none at all unless telemetry is on."""
    if not telemetry:
        return []
    context = plugin_context(settings)
    sinks: list[Sink] = []
    for ref in (plugins or settings.plugins or discover()).sinks:
        table = settings.sinks.table(ref.name)
        if isinstance(table, NotInstalledTable) or (ref.builtin and not ref.available()):
            if ref.builtin and sink_configured(settings, ref):
                raise ConfigError(f"{ref.table}: configured, but the sink is not installed: {UPLOAD_HINT}")
            continue
        # A built-in sink is off until its table sets a url: one the operator left alone is not even imported.
        if ref.builtin and (table is None or not table.model_fields_set):
            continue
        sink = _build_sink(ref, settings, context)
        if sink is not None:
            sinks.append(sink)
    return sinks


def _build_sink(ref: SinkRef, settings: Settings, context: PluginContext) -> Sink | None:
    cls = ref.load()
    table = _table(settings.sinks, ref, cls.settings_model)
    return None if table is None else _guarded(ref, lambda: cls.from_settings(table, context))


def sink_configured(settings: Settings, ref: SinkRef) -> bool:
    """Whether the settings give built-in sink ``ref`` a url (read even where its code is missing)."""
    table = settings.sinks.table(ref.name)
    if isinstance(table, NotInstalledTable):
        return (table.model_extra or {}).get("url") is not None
    return table is not None and getattr(table, "url", None) is not None


def _guarded(ref: PluginRef, build: Callable[[], P]) -> P:
    """``build()``; a third-party plugin's exception is one line naming the plugin and the exception's type only."""
    try:
        return build()
    except ConfigError:
        raise
    except Exception as exc:
        if ref.builtin:
            raise
        raise ConfigError(f"{ref.table}: {ref.origin} failed to start ({type(exc).__name__})") from None


def allowed_metrics(slots: Iterable[CollectorSlot], extra: Sequence[MetricSpec] = ()) -> Allowlist:
    """The scrubber's allowlist: every metric declared by a running collector or the agent, and those collectors."""
    slots = list(slots)
    allowed: dict[str, MetricSpec] = {}
    for spec in (*AGENT_METRICS, *extra, *(spec for slot in slots for spec in slot.metrics)):
        if spec.name in allowed and allowed[spec.name] != spec:
            raise ConfigError(f"metric {spec.name} is declared twice, differently")
        if (spec.kind is MetricKind.COUNTER) != spec.name.endswith("_total"):
            raise ConfigError(f"metric {spec.name}: counters, and only counters, end in _total")
        allowed[spec.name] = spec
    return Allowlist(allowed.values(), collectors=[slot.name for slot in slots])


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings, plugins' tables included, for the log masker."""
    return secret_values(settings)
