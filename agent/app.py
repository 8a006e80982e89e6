"""What each command does, on top of the runner and the spool. The CLI only parses and dispatches."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from agent import heartbeat, jsondoc, threads
from agent.deadline import Deadline
from agent.edition import edition
from agent.errors import ConfigError, ScrubRejected, SpoolError
from agent.exits import EX_CONFIG, EX_FAIL, EX_OK, EX_TEMPFAIL, EX_USAGE
from agent.plugins import PluginSet, collector_refs, sink_refs
from agent.preflight import ERROR, Finding, Wiring, prepare_state_dir, wire
from agent.sample import MetricSpec
from agent.scrubber import Allowlist, describe, scrub
from agent.settings import Settings
from agent.state import drop_incoming
from agent.version import __version__
from agent.wiring import AGENT_METRICS, build_collector, sink_configured, telemetry_enabled

if TYPE_CHECKING:
    from agent.runner import Runner

log = structlog.get_logger("agent")

UPLOAD_DEADLINE = 300.0  # seconds an explicit `agent upload` may take


def _runner(settings: Settings, *, with_sinks: bool) -> Runner:
    from agent.runner import Runner

    wiring = wire(settings, edition(), with_sinks=with_sinks, extra_metrics=_extra_metrics())
    if wiring.errors:
        problems = [finding.text for finding in wiring.errors]
        raise ConfigError("; ".join(problems), problems=problems)
    return Runner(
        settings,
        edition=edition(),
        version=__version__,
        telemetry=wiring.telemetry,
        collectors=wiring.collectors,
        allowed=wiring.allowed,
        backlog_allowed=declared_metrics(settings.plugins),
        sinks=wiring.sinks,
    )


def _rewire(settings: Settings) -> tuple[Settings, Wiring]:
    """New settings and the parts built from them, through the same wiring as at start-up (for a reload)."""
    return settings, wire(settings, edition(), extra_metrics=_extra_metrics())


def check(settings: Settings) -> int:
    """``agent check``: every validation ``agent run`` does, without running; one line per finding."""
    wiring = wire(settings, edition(), extra_metrics=_extra_metrics())
    findings = list(wiring.findings)
    try:
        prepare_state_dir(settings.state_dir, keep=False)
    except ConfigError as exc:
        findings.append(Finding(ERROR, str(exc)))
    for finding in findings:
        print(f"{finding.level}: {finding.text}")
    if any(finding.level == ERROR for finding in findings):
        return EX_CONFIG
    print(
        f"ok: pop_id {settings.pop_id}, state_dir {settings.state_dir}, "
        f"telemetry {'on' if wiring.telemetry else 'off'}, "
        f"collectors {', '.join(slot.name for slot in wiring.collectors) or 'none'}, "
        f"sinks {', '.join(sink.name for sink in wiring.sinks) or 'none'}"
    )
    return EX_OK


def _extra_metrics() -> tuple[MetricSpec, ...]:
    from alerts.health import HEALTH_METRICS

    return tuple(HEALTH_METRICS)


def declared_metrics(plugins: PluginSet | None = None) -> Allowlist:
    """The allowlist for foreign documents: every metric and collector this build has registered.

    A foreign document (``agent scrub``, ``enqueue``, a spooled file this process did
    not write) may come from any configuration of this build, so it is held to every
    installed collector's name and declarations rather than to those running now.
    """
    specs: list[MetricSpec] = [*AGENT_METRICS, *_extra_metrics()]
    names: list[str] = []
    for ref in collector_refs(plugins):
        try:
            plugin = ref.load()
            specs.extend(plugin.metrics)
        except (ConfigError, ImportError, AttributeError):
            continue
        names.append(getattr(plugin, "name", ref.name))
    return Allowlist(specs, collectors=names)


def run_daemon(settings: Settings, load: Callable[[], Settings] | None = None) -> int:
    """``agent run``: tick until SIGTERM/SIGINT, then stop cleanly; on SIGHUP, ``load`` the settings again."""
    from agent.service import install_signal_handlers

    runner = _runner(settings, with_sinks=True)
    prepare_state_dir(settings.state_dir)
    if load is not None:
        runner.reloads.rebuild = lambda: _rewire(load())

    async def main() -> None:
        install_signal_handlers(stop=runner.request_stop, reload=runner.reloads.request)
        await runner.run()

    try:
        threads.run(main())
    except SpoolError as exc:
        from agent.logs import error_line

        if exc.code == "locked":
            error_line(f"agent: another agent is running on {settings.state_dir}")
            return EX_TEMPFAIL
        error_line(f"agent: cannot open the spool in {settings.state_dir}: {exc.code}")
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
    # The slot's own status: "missing" for a configured path that is not there, where the heartbeat says "error".
    failed = sorted((slot.name, slot.stats.status) for slot in runner.collectors if statuses[slot.name] != "ok")
    for name, status_ in failed:
        print(f"agent: collector {name}: {status_}", file=sys.stderr)
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
    prepare_state_dir(settings.state_dir)

    async def main() -> bool:
        await runner.start()
        try:
            if tick_first and await runner.tick() is None:
                return False
            deadline = Deadline(UPLOAD_DEADLINE)
            drained = await asyncio.gather(*(runner.delivery.drain(sink.name, deadline) for sink in runner.sinks))
            left = runner.spool.stats().pending  # before aclose, which closes the spool
        finally:
            await runner.aclose()
        for name, state in runner.delivery.states.items():
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
    """The JSON document in ``source`` (a path or ``-``), or an error line.

    A path must be a regular file, opened without blocking (a FIFO with no writer
    cannot hang the command); at most :data:`agent.intake.MAX_DOCUMENT_BYTES` are
    read from either.
    """
    from agent.intake import MAX_DOCUMENT_BYTES, read_regular  # brings the spool: only for scrub and enqueue

    try:
        if source == "-":
            raw = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
            if len(raw) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
        else:
            raw = read_regular(Path(source), follow_links=True)
    except FileNotFoundError:
        return None, f"{source}: no such file"
    except OSError as exc:
        return None, f"{source}: cannot read ({exc.strerror})"
    except ValueError as exc:  # one of read_regular's fixed reasons
        return None, f"{source}: {exc}"
    try:
        return jsondoc.loads(raw), None
    except UnicodeDecodeError:
        return None, f"{source}: not UTF-8 text"
    except ValueError as exc:
        # The decoder's message names a position only, never content.
        return None, f"{source}: not JSON: {str(exc).split(':', 1)[-1].strip()}"
    except RecursionError:
        return None, f"{source}: not JSON: nested too deeply"


def _accepted_document(settings: Settings, source: str) -> tuple[Any, int]:
    """The document in ``source`` if the scrubber accepts it, else ``None`` and the exit code."""
    doc, error = _read_document(source)
    if error:
        print(f"agent: {error}", file=sys.stderr)
        return None, EX_USAGE
    try:
        scrub(doc, declared_metrics(settings.plugins))
    except ScrubRejected as rejected:
        for line in describe(rejected.findings):
            print(line, file=sys.stderr)
        return None, EX_FAIL
    return doc, EX_OK


def scrub_document(settings: Settings, source: str) -> int:
    """``agent scrub``: 0 and the document if accepted, 1 with findings if rejected, 2 if unreadable."""
    doc, code = _accepted_document(settings, source)
    if doc is not None:
        print(json.dumps(doc, indent=2))
    return code


def enqueue(settings: Settings, source: str) -> int:
    """``agent enqueue``: scrub a document, then spool it for delivery."""
    from agent.spool import Spool

    prepare_state_dir(settings.state_dir)
    doc, code = _accepted_document(settings, source)
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
    """``agent status``: whether the daemon runs, its last word, and the spool as it is on disk now."""
    from agent import status_report
    from agent.status_file import spool_fields

    try:
        telemetry = "on" if telemetry_enabled(settings, edition()) else "off"
    except ConfigError:
        telemetry = "misconfigured"
    base: dict[str, Any] = {"edition": edition(), "version": __version__, "telemetry": telemetry}
    daemon = status_report.inspect(settings.state_dir)
    if daemon.state != "never started":
        try:
            spool = _readonly_spool(settings)
            stats = spool.stats()
            spool.close()
            base["spool"] = spool_fields(stats)
        except SpoolError as exc:
            base["spool"] = {"error": exc.code}
    report = status_report.report(daemon, settings.state_dir, base)
    print(status_report.render(report, as_json))
    return status_report.exit_code(daemon)


def list_plugins(settings: Settings) -> int:
    """``agent collectors``: every collector and sink, where it comes from, whether it runs here."""
    disabled = set(settings.collectors.disabled)
    print("collectors:")
    for ref in collector_refs(settings.plugins):
        try:
            metrics = ", ".join(spec.name for spec in ref.load().metrics)
            configured = ref.name not in disabled and build_collector(ref, settings) is not None
            state = "on" if configured else ("disabled" if ref.name in disabled else "not configured")
        except ConfigError:
            state, metrics = "unavailable", ""
        print(f"  {ref.name:<12} {state:<15} {ref.origin:<10} {metrics}")
    print("sinks:")
    for sink in sink_refs(settings.plugins):
        if not sink.available():
            state = "not installed"
        elif sink.builtin:
            state = "configured" if sink_configured(settings, sink) else "not configured"
        else:
            state = "plugin"
        print(f"  {sink.name:<12} {state:<15} {sink.origin}")
    return EX_OK
