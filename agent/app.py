"""What each command does, on top of the runner and the spool. The CLI only parses and dispatches."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import structlog

from agent import heartbeat, threads
from agent.deadline import Deadline
from agent.edition import edition
from agent.errors import ConfigError, ScrubRejected, SpoolError
from agent.plugins import BUILTIN_SINKS, collector_refs, sink_refs
from agent.sample import MetricSpec
from agent.scrubber import describe, scrub
from agent.settings import Settings
from agent.state import drop_incoming
from agent.version import __version__
from agent.wiring import AGENT_METRICS, allowed_metrics, build_collectors, build_sinks, telemetry_enabled

log = structlog.get_logger("agent")

EX_OK, EX_FAIL, EX_USAGE, EX_TEMPFAIL = 0, 1, 2, 75
UPLOAD_DEADLINE = 300.0  # seconds an explicit `agent upload` may take


def _runner(settings: Settings, *, with_sinks: bool) -> Any:
    from agent.runner import Runner

    telemetry = telemetry_enabled(settings, edition())
    slots = build_collectors(settings)
    sinks = build_sinks(settings, telemetry) if with_sinks else []
    return Runner(
        settings,
        edition=edition(),
        version=__version__,
        telemetry=telemetry,
        collectors=slots,
        allowed=allowed_metrics(slots, _extra_metrics()),
        backlog_allowed=declared_metrics(),
        sinks=sinks,
    )


def _extra_metrics() -> tuple[MetricSpec, ...]:
    from agent.health import HEALTH_METRICS

    return tuple(HEALTH_METRICS)


def declared_metrics() -> dict[str, MetricSpec]:
    """Every metric any installed collector or the agent declares: the allowlist for foreign documents."""
    specs: list[MetricSpec] = [*AGENT_METRICS, *_extra_metrics()]
    for ref in collector_refs():
        try:
            specs.extend(ref.load().metrics)
        except (ConfigError, ImportError, AttributeError):
            continue
    return {spec.name: spec for spec in specs}


def run_daemon(settings: Settings) -> int:
    """``agent run``: tick until SIGTERM/SIGINT, then stop cleanly."""
    from agent.runner import install_signal_handlers

    runner = _runner(settings, with_sinks=True)

    async def main() -> None:
        install_signal_handlers(runner)
        await runner.run()

    try:
        threads.run(main())
    except SpoolError as exc:
        if exc.code == "locked":
            print(f"agent: another agent is running on {settings.state_dir}", file=sys.stderr)
            return EX_TEMPFAIL
        print(f"agent: cannot open the spool in {settings.state_dir}: {exc.code}", file=sys.stderr)
        return EX_FAIL
    return EX_OK


def once(settings: Settings) -> int:
    """``agent --once``: one tick printed to stdout; touches neither the spool nor the network."""
    runner = _runner(settings, with_sinks=False)

    async def main() -> tuple[dict[str, Any], dict[str, str]]:
        try:
            doc, statuses = await runner.collect(once=True)
        finally:
            for slot in runner.collectors:
                await slot.aclose()
        return doc, statuses

    doc, statuses = threads.run(main())
    try:
        scrub(doc, runner.allowed)
    except ScrubRejected as rejected:
        for line in describe(rejected.findings):
            print(f"agent: heartbeat rejected: {line}", file=sys.stderr)
        return EX_FAIL
    print(json.dumps(doc, indent=2))
    failed = sorted(name for name, status in statuses.items() if status != "ok")
    for name in failed:
        print(f"agent: collector {name}: {statuses[name]}", file=sys.stderr)
    return EX_FAIL if failed else EX_OK


def once_push(settings: Settings) -> int:
    """``agent --once --push``: one tick through the spool and every sink."""
    return _deliver_now(settings, tick_first=True)


def upload(settings: Settings) -> int:
    """``agent upload``: drain the spool once, now, and say what was acknowledged."""
    return _deliver_now(settings, tick_first=False)


def _deliver_now(settings: Settings, *, tick_first: bool) -> int:
    """Drain every sink once (after one tick if asked); exit 0 only when nothing is left."""
    runner = _runner(settings, with_sinks=True)
    if not runner.sinks:
        print("agent: nothing to send to: telemetry is off or no sink is configured", file=sys.stderr)
        return EX_FAIL

    async def main() -> bool:
        await runner.start()
        try:
            if tick_first and await runner.tick() is None:
                return False
            deadline = Deadline(UPLOAD_DEADLINE)
            drained = await asyncio.gather(*(runner.drain(sink, deadline) for sink in runner.sinks))
            left = runner.spool.stats().pending  # before aclose, which closes the spool
        finally:
            await runner.aclose()
        for name, state in runner.sink_state.items():
            print(
                f"{name}: acked {state.acked_total}, rejected {state.rejected_total}, "
                f"{'failed: ' + state.last_failure if state.last_failure else 'ok'}; {left} pending"
            )
        return all(drained)

    return _with_spool_errors(settings, lambda: EX_OK if threads.run(main()) else EX_FAIL)


def _with_spool_errors(settings: Settings, body: Any) -> int:
    try:
        result: int = body()
    except SpoolError as exc:
        if exc.code == "locked":
            print(
                f"agent: the daemon is running on {settings.state_dir} and delivers on its own; "
                "stop it first to drain by hand",
                file=sys.stderr,
            )
            return EX_TEMPFAIL
        print(f"agent: spool error: {exc.code}", file=sys.stderr)
        return EX_FAIL
    return result


def _read_document(source: str) -> tuple[Any, str | None]:
    """The JSON document in ``source`` (a path or ``-``), or an error line."""
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except FileNotFoundError:
        return None, f"{source}: no such file"
    except IsADirectoryError:
        return None, f"{source}: is a directory"
    except OSError as exc:
        return None, f"{source}: cannot read ({exc.strerror})"
    try:
        return json.loads(raw), None
    except UnicodeDecodeError:
        return None, f"{source}: not UTF-8 text"
    except ValueError as exc:
        # The decoder's message names a position only, never content.
        return None, f"{source}: not JSON: {str(exc).split(':', 1)[-1].strip()}"
    except RecursionError:
        return None, f"{source}: not JSON: nested too deeply"


def _accepted_document(source: str) -> tuple[Any, int]:
    """The document in ``source`` if the scrubber accepts it, else ``None`` and the exit code."""
    doc, error = _read_document(source)
    if error:
        print(f"agent: {error}", file=sys.stderr)
        return None, EX_USAGE
    try:
        scrub(doc, declared_metrics())
    except ScrubRejected as rejected:
        for line in describe(rejected.findings):
            print(line, file=sys.stderr)
        return None, EX_FAIL
    return doc, EX_OK


def scrub_document(settings: Settings, source: str) -> int:
    """``agent scrub``: 0 and the document if accepted, 1 with findings if rejected, 2 if unreadable."""
    doc, code = _accepted_document(source)
    if doc is not None:
        print(json.dumps(doc, indent=2))
    return code


def enqueue(settings: Settings, source: str) -> int:
    """``agent enqueue``: scrub a document, then spool it for delivery."""
    from agent.spool import Spool

    doc, code = _accepted_document(source)
    if doc is None:
        return code
    spool = Spool(settings.state_dir / "spool", settings.spool)
    raw = heartbeat.dumps(doc)
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        with spool:
            spool.put(doc["id"], raw)
    except SpoolError as exc:
        if exc.code != "locked":
            print(f"agent: spool error: {exc.code}", file=sys.stderr)
            return EX_FAIL
        # The daemon owns the spool: hand the document to it through incoming/,
        # which it takes in (scrubbing again) on its next tick.
        try:
            drop_incoming(settings.state_dir / "spool", doc["id"], raw)
        except OSError as error:
            print(f"agent: cannot write to {settings.state_dir}/spool/incoming ({error.strerror})", file=sys.stderr)
            return EX_FAIL
        print(f"handed {doc['id']} to the running daemon")
        return EX_OK
    except OSError as error:
        print(f"agent: cannot write to {settings.state_dir} ({error.strerror})", file=sys.stderr)
        return EX_FAIL
    print(f"spooled {doc['id']}")
    return EX_OK


def _readonly_spool(settings: Settings) -> Any:
    from agent.spool import Spool

    spool = Spool(settings.state_dir / "spool", settings.spool)
    spool.open(readonly=True)
    return spool


def export(settings: Settings, out: Path | None) -> int:
    """``agent export``: every pending heartbeat, oldest first, as JSON lines."""
    try:
        spool = _readonly_spool(settings)
    except SpoolError as exc:
        print(f"agent: spool error: {exc.code}", file=sys.stderr)
        return EX_FAIL
    try:
        handle: TextIO = out.open("w", encoding="utf-8") if out else sys.stdout
    except OSError as exc:
        print(f"agent: {out}: cannot write ({exc.strerror})", file=sys.stderr)
        return EX_FAIL
    count = 0
    try:
        for pending in spool.iter_pending():
            handle.write(pending.raw.decode() + "\n")
            count += 1
    finally:
        if out:
            handle.close()
        spool.close()
    if out:
        print(f"exported {count} heartbeats to {out}", file=sys.stderr)
    return EX_OK


def status(settings: Settings, *, as_json: bool) -> int:
    """``agent status``: the daemon's last word, and the spool as it is on disk now."""
    from agent.runner import STATUS_FILE
    from agent.state import read_json

    try:
        telemetry = "on" if telemetry_enabled(settings, edition()) else "off"
    except ConfigError:
        telemetry = "misconfigured"
    report: dict[str, Any] = {"edition": edition(), "version": __version__, "telemetry": telemetry}
    daemon = read_json(settings.state_dir / STATUS_FILE)
    try:
        spool = _readonly_spool(settings)
        stats = spool.stats()
        spool.close()
        report["spool"] = {
            "pending": stats.pending,
            "bytes": stats.bytes,
            "oldest_age_s": round(stats.oldest_age_s or 0.0, 3),
            "dropped_total": stats.dropped_total,
            "quarantined_total": stats.quarantined_total,
            "rejected_total": stats.rejected_total,
        }
    except SpoolError as exc:
        report["spool"] = {"error": exc.code}
    if daemon:
        report["daemon"] = {
            "updated_age_s": round(time.time() - float(daemon.get("updated", 0)), 1),
            "pid": daemon.get("pid"),
        }
        for key in ("sinks", "collectors", "health", "counters"):
            if key in daemon:
                report[key] = daemon[key]
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(_render_status(report))
    return EX_OK


def _render_status(report: dict[str, Any]) -> str:
    lines = [f"edition: {report['edition']}  version: {report['version']}  telemetry: {report['telemetry']}"]
    spool = report.get("spool", {})
    if "error" in spool:
        lines.append(f"spool: unreadable ({spool['error']})")
    else:
        lines.append(
            f"spool: {spool['pending']} pending, {spool['bytes']} bytes, oldest {spool['oldest_age_s']} s; "
            f"dropped {spool['dropped_total']}, quarantined {spool['quarantined_total']}, "
            f"rejected {spool['rejected_total']}"
        )
    daemon = report.get("daemon")
    lines.append(
        f"daemon: last status {daemon['updated_age_s']} s ago (pid {daemon['pid']})" if daemon else "daemon: no status"
    )
    for name, sink in report.get("sinks", {}).items():
        last_ack = sink.get("last_ack")
        ack = f"{round(time.time() - last_ack, 1)} s ago" if last_ack else "never"
        lines.append(
            f"sink {name}: last ack {ack}, consecutive failures {sink['consecutive_failures']}"
            + (f", failing: {sink['last_failure']}" if sink.get("last_failure") else "")
        )
    health = report.get("health")
    if health:
        lines.append("health: " + ", ".join(f"{k}={v}" for k, v in sorted(health.items())))
    for name, collector in report.get("collectors", {}).items():
        lines.append(f"collector {name}: {collector['status']} (errors {collector['errors_total']})")
    return "\n".join(lines)


def list_plugins(settings: Settings) -> int:
    """``agent collectors``: every collector and sink, where it comes from, whether it runs here."""
    disabled = set(settings.collectors.disabled)
    print("collectors:")
    for ref in collector_refs():
        try:
            cls = ref.load()
            configured = ref.name not in disabled and cls.from_settings(settings) is not None
            metrics = ", ".join(spec.name for spec in cls.metrics)
            state = "on" if configured else ("disabled" if ref.name in disabled else "not configured")
            implementation = getattr(cls, "implementation", None)  # optional: how this build does the work
            if implementation is not None:
                metrics += f" ({implementation()})"
        except ConfigError:
            state, metrics = "unavailable", ""
        print(f"  {ref.name:<12} {state:<15} {ref.origin:<10} {metrics}")
    print("sinks:")
    for ref in sink_refs():
        if not ref.available():
            state = "not installed"
        elif ref.name in BUILTIN_SINKS:
            state = "configured" if getattr(settings.sinks, ref.name).url else "not configured"
        else:
            state = "plugin"
        print(f"  {ref.name:<12} {state:<15} {ref.origin}")
    return EX_OK
