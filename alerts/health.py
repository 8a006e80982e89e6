"""Delivery health and outage alerting: a state machine fed once per tick.

Three alarms share one rule set. Each is *bad* or not at every observation:

- ``delivery``: the last delivery pass of some sink failed (the event names that sink);
- ``collectors``: every collector failed this tick;
- ``spool``: the spool is about to overflow (90 % of ``max_files`` or ``max_bytes``;
  it stays bad until below 80 %) or heartbeats were just dropped.

An alarm that has been bad without a break for its ``raise_after`` (``outage_after``
for delivery and collectors, zero for the spool, whose drops cannot wait) becomes an
outage: :class:`OutageStarted`. The first good observation ends it:
:class:`OutageEnded`. A new outage of the same kind needs ``outage_after`` seconds
since the last one ended, so a flapping receiver produces at most one pair of alerts
per ``outage_after``. Bad spells that end before an outage give :class:`Failing` and
:class:`Restored`, for the log only.

Elapsed times come from the monotonic clock, so a wall-clock jump neither starts
nor stretches an outage; the wall clock is used only to persist the alarms in
``<state_dir>/alerts.json`` (written atomically, on transitions only, by the
spool's thread in the daemon), so that a restart during an outage sends no
second outage message.

The hooks that act on the events (:mod:`alerts.hooks`, :mod:`alerts.ntfy`,
:mod:`alerts.kuma`) are fed by this machine, never by the spool or the sinks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent import atomic_file
from agent.sample import MetricKind, MetricSpec, Sample
from alerts.events import (
    SINK_NAME,
    AlarmKind,
    Failing,
    HealthEvent,
    HealthState,
    OutageEnded,
    OutageStarted,
    PushStatus,
    Restored,
    fixed_code,
)

if TYPE_CHECKING:
    from agent.settings import AlertsSettings, Settings, SpoolSettings

STATE_FILE = "alerts.json"
STATE_VERSION = 1
# Drops are imminent above the high mark; the alarm clears only below the low mark,
# so a spool that hovers at its bound does not raise and clear every tick.
SPOOL_HIGH = 0.9
SPOOL_LOW = 0.8

log = structlog.get_logger()

HEALTH_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("delivery_failures_consecutive", MetricKind.GAUGE, "Delivery passes that failed in a row (any sink)."),
    MetricSpec("outage_active", MetricKind.GAUGE, "1 while an outage (delivery, collectors or spool) is on."),
    MetricSpec("outage_seconds", MetricKind.GAUGE, "Length so far of the longest outage under way.", "seconds"),
    MetricSpec("alerts_sent_total", MetricKind.COUNTER, "Outage and recovery messages the alert hook accepted."),
    MetricSpec("alert_hook_failures_total", MetricKind.COUNTER, "Alert hook calls (ntfy, Kuma) that failed."),
)

# Runs a blocking write somewhere: at once by default, on the spool's thread in the daemon.
Defer = Callable[..., None]


def _now(func: Callable[..., None], *args: Any) -> None:
    func(*args)


class Clock(Protocol):
    """The two clocks the state machine reads: wall time to persist, monotonic time to measure."""

    def wall(self) -> float: ...

    def mono(self) -> float: ...


class SystemClock:
    """``time.time`` and ``time.monotonic``."""

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()


class _Alarm:
    """One alarm's state; times on the monotonic clock."""

    def __init__(self, kind: AlarmKind, raise_after: float, gap: float) -> None:
        self.kind = kind
        self.raise_after = raise_after
        self.gap = gap
        self.bad_since: float | None = None
        self.active = False
        self.cleared_at: float | None = None
        self.failure = ""
        self.sink = ""

    def step(self, bad: bool, failure: str, now: float, sink: str = "") -> tuple[str, float] | None:
        """Advance; return ``(transition, bad_for_s)`` or ``None``. The spell keeps its first failure and sink."""
        if bad:
            fresh = self.bad_since is None
            if self.bad_since is None:
                self.bad_since, self.failure, self.sink = now, failure, sink
            bad_for = now - self.bad_since
            ready = self.cleared_at is None or now - self.cleared_at >= self.gap
            if not self.active and bad_for >= self.raise_after and ready:
                self.active = True
                return "started", bad_for
            return ("failing", 0.0) if fresh else None
        if self.bad_since is None:
            return None
        bad_for = now - self.bad_since
        self.bad_since = None
        if self.active:
            self.active, self.cleared_at = False, now
            return "ended", bad_for
        return "restored", bad_for

    def dump(self, wall: float, mono: float) -> dict[str, Any]:
        def to_wall(at: float | None) -> float | None:
            return None if at is None else wall - (mono - at)

        return {
            "bad_since": to_wall(self.bad_since),
            "active": self.active,
            "cleared_at": to_wall(self.cleared_at),
            "failure": self.failure,
            "sink": self.sink,
        }

    def load(self, data: dict[str, Any], wall: float, mono: float) -> None:
        def to_mono(at: Any) -> float | None:
            if not isinstance(at, int | float) or isinstance(at, bool):
                return None
            # A wall clock set back since the save must not put the past in the future.
            return mono - max(0.0, wall - float(at))

        self.bad_since = to_mono(data.get("bad_since"))
        self.active = data.get("active") is True and self.bad_since is not None
        self.cleared_at = to_mono(data.get("cleared_at"))
        self.failure = fixed_code(data.get("failure") if isinstance(data.get("failure"), str) else None)
        sink = data.get("sink")
        self.sink = sink if isinstance(sink, str) and SINK_NAME.fullmatch(sink) else ""


class Health:
    """The health state machine. Synchronous; every ``observe_*`` returns the transitions it caused.

    Feed it once per tick: :meth:`observe_delivery` after each delivery attempt,
    :meth:`observe_collectors` after collecting, :meth:`observe_spool` after
    spooling. With ``state_dir`` set, the alarms are loaded from and saved to
    ``<state_dir>/alerts.json`` (on transitions only).
    """

    def __init__(
        self,
        alerts: AlertsSettings,
        spool: SpoolSettings,
        *,
        pop_id: str,
        state_dir: Path | None = None,
        clock: Clock | None = None,
        defer: Defer | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._defer: Defer = defer or _now
        self._pop = pop_id
        self._max_files = spool.max_files
        self._max_bytes = spool.max_bytes
        after = alerts.outage_after
        self._alarms = {
            AlarmKind.DELIVERY: _Alarm(AlarmKind.DELIVERY, after, after),
            AlarmKind.COLLECTORS: _Alarm(AlarmKind.COLLECTORS, after, after),
            AlarmKind.SPOOL: _Alarm(AlarmKind.SPOOL, 0.0, after),
        }
        self._path = None if state_dir is None else state_dir / STATE_FILE
        self._save_ok = True
        self.failures_consecutive = 0
        self.alerts_sent_total = 0
        self.hook_failures_total = 0
        self._ping_ms: float | None = None
        self._backlog = 0
        self._last_backlog: tuple[float, int] | None = None  # (mono, backlog) of the previous delivery
        self._dropped_total: int | None = None
        self._load()

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock | None = None, defer: Defer | None = None) -> Health:
        """A health machine persisting in ``settings.state_dir`` (through ``defer``, off the event loop)."""
        return cls(
            settings.alerts,
            settings.spool,
            pop_id=settings.pop_id,
            state_dir=settings.state_dir,
            clock=clock,
            defer=defer,
        )

    # -- observations -------------------------------------------------------

    def observe_delivery(
        self,
        *,
        ok: bool,
        backlog: int,
        failure: str | None = None,
        latency_ms: float | None = None,
        sink: str | None = None,
    ) -> tuple[HealthEvent, ...]:
        """One delivery attempt: ``ok`` if every sink delivers, else ``failure``, the fixed code of ``sink``'s failure.

        ``backlog`` is the spool's pending count after the attempt; ``latency_ms``
        how long the successful delivery took (Kuma's ``ping``).
        """
        now = self._clock.mono()
        drain: float | None = None
        if self._last_backlog is not None and now > self._last_backlog[0]:
            drain = max(0.0, (self._last_backlog[1] - backlog) / (now - self._last_backlog[0]))
        self._last_backlog = (now, backlog)
        self._backlog = max(0, backlog)
        if ok:
            self.failures_consecutive = 0
            if latency_ms is not None:
                self._ping_ms = max(0.0, latency_ms)
        else:
            self.failures_consecutive += 1
        name = sink if sink is not None and SINK_NAME.fullmatch(sink) else ""
        return self._step(AlarmKind.DELIVERY, not ok, fixed_code(failure), now, drain, name)

    def observe_collectors(self, *, failed: int, total: int) -> tuple[HealthEvent, ...]:
        """This tick's collector results; the alarm is bad when every one of them failed."""
        bad = total > 0 and failed >= total
        return self._step(AlarmKind.COLLECTORS, bad, "all_collectors_failed", self._clock.mono(), None)

    def observe_spool(self, *, pending_files: int, pending_bytes: int, dropped_total: int) -> tuple[HealthEvent, ...]:
        """The spool's depth and its drop counter (a counter that went down is taken as restarted)."""
        dropped = self._dropped_total is not None and dropped_total > self._dropped_total
        self._dropped_total = dropped_total
        self._backlog = max(0, pending_files)
        mark = SPOOL_LOW if self._alarms[AlarmKind.SPOOL].active else SPOOL_HIGH
        full = pending_files >= mark * self._max_files or pending_bytes >= mark * self._max_bytes
        failure = "spool_dropping" if dropped else "spool_near_full"
        return self._step(AlarmKind.SPOOL, full or dropped, failure, self._clock.mono(), None)

    def record_alert(self, ok: bool) -> None:
        """The result of one outage/recovery message (counted in the heartbeat metrics)."""
        if ok:
            self.alerts_sent_total += 1
        else:
            self.hook_failures_total += 1

    def record_push(self, ok: bool) -> None:
        """The result of one Kuma push."""
        if not ok:
            self.hook_failures_total += 1

    # -- read-outs ------------------------------------------------------------

    @property
    def state(self) -> HealthState:
        """Delivery health: healthy, failing (not yet an outage) or outage."""
        alarm = self._alarms[AlarmKind.DELIVERY]
        if alarm.active:
            return HealthState.OUTAGE
        return HealthState.HEALTHY if alarm.bad_since is None else HealthState.FAILING

    def active(self) -> tuple[AlarmKind, ...]:
        """The kinds of outage under way."""
        return tuple(kind for kind, alarm in self._alarms.items() if alarm.active)

    def outage_seconds(self) -> float:
        """Length so far of the longest outage under way (0 when none)."""
        now = self._clock.mono()
        spans = [now - a.bad_since for a in self._alarms.values() if a.active and a.bad_since is not None]
        return max(spans, default=0.0)

    def samples(self) -> tuple[Sample, ...]:
        """This tick's values of :data:`HEALTH_METRICS`."""
        return (
            Sample("delivery_failures_consecutive", self.failures_consecutive),
            Sample("outage_active", 1 if self.active() else 0),
            Sample("outage_seconds", round(self.outage_seconds(), 3)),
            Sample("alerts_sent_total", self.alerts_sent_total),
            Sample("alert_hook_failures_total", self.hook_failures_total),
        )

    def push_status(self) -> PushStatus:
        """What Kuma should see now: ``down`` with the outage's fixed code during an outage, else ``up``."""
        active = self.active()
        # The ping is the last delivery's only while that delivery succeeded: a stale one would read as a live link.
        ping = self._ping_ms if self.failures_consecutive == 0 else None
        if active:
            sink = self._alarms[active[0]].sink
            return PushStatus("down", f"outage_{active[0]}" + (f"_{sink}" if sink else ""), ping)
        return PushStatus("up", str(self.state), ping)

    def status(self) -> dict[str, Any]:
        """The state for ``agent status``: codes and numbers only."""
        return {
            "state": str(self.state),
            "delivery_failures_consecutive": self.failures_consecutive,
            "outages": [str(kind) for kind in self.active()],
            "outage_seconds": round(self.outage_seconds(), 1),
            "alerts_sent_total": self.alerts_sent_total,
            "alert_hook_failures_total": self.hook_failures_total,
        }

    # -- internals ------------------------------------------------------------

    def _step(
        self, kind: AlarmKind, bad: bool, failure: str, now: float, drain: float | None, sink: str = ""
    ) -> tuple[HealthEvent, ...]:
        alarm = self._alarms[kind]
        transition = alarm.step(bad, failure, now, sink)
        if transition is None:
            return ()
        name, bad_for = transition
        wall = self._clock.wall()
        backlog = self._backlog
        event: HealthEvent
        if name == "failing":
            event = Failing(kind, wall, alarm.failure, alarm.sink)
        elif name == "restored":
            event = Restored(kind, wall, bad_for)
        elif name == "started":
            event = OutageStarted(kind, self._pop, wall, wall - bad_for, alarm.failure, backlog, alarm.sink)
        else:
            event = OutageEnded(kind, self._pop, wall, bad_for, backlog, drain, alarm.sink)
        self._save()
        return (event,)

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            data = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            log.warning("health_state_unreadable")
            return
        alarms = data.get("alarms") if isinstance(data, dict) and data.get("version") == STATE_VERSION else None
        if not isinstance(alarms, dict):
            log.warning("health_state_unreadable")
            return
        wall, mono = self._clock.wall(), self._clock.mono()
        for kind, alarm in self._alarms.items():
            entry = alarms.get(str(kind))
            if isinstance(entry, dict):
                alarm.load(entry, wall, mono)

    def _save(self) -> None:
        if self._path is None:
            return
        wall, mono = self._clock.wall(), self._clock.mono()
        doc = {
            "version": STATE_VERSION,
            "saved_at": wall,
            "alarms": {str(kind): alarm.dump(wall, mono) for kind, alarm in self._alarms.items()},
        }
        # The document is built here, on the loop; the fsynced write goes where ``defer`` sends it.
        self._defer(self._write, self._path, json.dumps(doc, sort_keys=True).encode())

    def _write(self, path: Path, data: bytes) -> None:
        try:
            _write_state(path, data)
        except OSError:
            if self._save_ok:
                log.warning("health_state_save_failed")
            self._save_ok = False
            return
        if not self._save_ok:
            log.info("health_state_save_recovered")
        self._save_ok = True


def _write_state(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_file.replace(path, data)
