"""Wiring: from settings and the build's edition to the parts one agent process runs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.collecting import CollectorSlot
from agent.edition import Edition, upload_installed
from agent.errors import ConfigError
from agent.plugins import BUILTIN_SINKS, collector_refs, sink_refs
from agent.sample import MetricKind, MetricSpec
from agent.settings import Settings

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
        central = settings.sinks.central
        if not central.url:
            raise ConfigError(
                "sinks.central.url (env POP_AGENT_SINKS__CENTRAL__URL): required by the commercial edition"
            )
        if central.token is None and central.token_file is None and not _credential_present():
            raise ConfigError(
                "sinks.central.token (env POP_AGENT_SINKS__CENTRAL__TOKEN): required by the commercial edition "
                "(or token_file, or the systemd credential central-token)"
            )
        return True
    if settings.telemetry != "on":
        return False
    if not upload_installed():
        raise ConfigError(f'telemetry = "on" but this community build has no upload code: {UPLOAD_HINT}')
    return True


def _credential_present() -> bool:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return directory is not None and (Path(directory) / "central-token").is_file()


def build_collectors(settings: Settings) -> list[CollectorSlot]:
    """Every enabled and configured collector, each in a slot with the runner's timeout."""
    disabled = set(settings.collectors.disabled)
    slots = []
    for ref in collector_refs():
        if ref.name in disabled:
            continue
        collector = ref.load().from_settings(settings)
        if collector is not None:
            slots.append(CollectorSlot(collector, settings.collectors.timeout))
    return slots


def build_sinks(settings: Settings, telemetry: bool) -> list[Any]:
    """The sinks to deliver to: none at all unless telemetry is on."""
    if not telemetry:
        return []
    sinks = []
    for ref in sink_refs():
        configured = ref.name not in BUILTIN_SINKS or getattr(settings.sinks, ref.name).url is not None
        if not configured:
            continue
        if not ref.available():
            raise ConfigError(f"sinks.{ref.name}: configured, but the sink is not installed: {UPLOAD_HINT}")
        sink = ref.load().from_settings(settings)
        if sink is not None:
            sinks.append(sink)
    return sinks


def allowed_metrics(slots: Iterable[CollectorSlot], extra: Sequence[MetricSpec] = ()) -> dict[str, MetricSpec]:
    """The scrubber's allowlist: every metric declared by a running collector or the agent."""
    allowed: dict[str, MetricSpec] = {}
    for spec in (*AGENT_METRICS, *extra, *(spec for slot in slots for spec in slot.metrics)):
        if spec.name in allowed and allowed[spec.name] != spec:
            raise ConfigError(f"metric {spec.name} is declared twice, differently")
        if (spec.kind is MetricKind.COUNTER) != spec.name.endswith("_total"):
            raise ConfigError(f"metric {spec.name}: counters, and only counters, end in _total")
        allowed[spec.name] = spec
    return allowed


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings, for the log masker."""
    values = [
        settings.sinks.central.token,
        settings.sinks.remote_write.token,
        settings.sinks.remote_write.password,
        settings.ntfy_alert_token,
        settings.ntfy_alert_url,
        settings.kuma_push_url,
    ]
    return [value.get_secret_value() for value in values if value is not None]
