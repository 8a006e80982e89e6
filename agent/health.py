"""Delivery health and outage alerting: a state machine fed once per tick.

Three alarms share one rule set. Each is *bad* or not at every observation:

- ``delivery``: the tick's delivery to central failed;
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
``<state_dir>/alerts.json`` (written atomically, on transitions only), so that a
restart during an outage sends no second outage message.

:class:`AlertHooks` does the wiring the runner needs: it logs every event once and
fires the ntfy and Kuma hooks as background tasks that never delay a tick.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import structlog

from agent.sample import MetricKind, MetricSpec, Sample
from agent.state import write_atomic

if TYPE_CHECKING:
    from agent.settings import AlertsSettings, Settings, SpoolSettings

STATE_FILE = "alerts.json"
STATE_VERSION = 1
# Drops are imminent above the high mark; the alarm clears only below the low mark,
# so a spool that hovers at its bound does not raise and clear every tick.
SPOOL_HIGH = 0.9
SPOOL_LOW = 0.8

_CODE = re.compile(r"[a-z0-9][a-z0-9_]{0,31}", re.ASCII)  # a code has at least one letter or digit

log = structlog.get_logger()


class AlarmKind(StrEnum):
    """What an outage is about."""

    DELIVERY = "delivery"
    COLLECTORS = "collectors"
    SPOOL = "spool"


class HealthState(StrEnum):
    """Delivery health as ``agent status`` shows it."""

    HEALTHY = "healthy"
    FAILING = "failing"
    OUTAGE = "outage"


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


@dataclass(frozen=True, slots=True)
class Failing:
    """An alarm turned bad (not yet an outage). ``failure`` is a fixed code."""

    kind: AlarmKind
    at: float  # wall clock
    failure: str

    event: ClassVar[str] = "health_failing"


@dataclass(frozen=True, slots=True)
class Restored:
    """An alarm turned good again before it became an outage."""

    kind: AlarmKind
    at: float
    failed_for_s: float

    event: ClassVar[str] = "health_restored"


@dataclass(frozen=True, slots=True)
class OutageStarted:
    """An outage began: the alarm has been bad for its whole ``raise_after``.

    ``since`` is when it turned bad (wall clock); ``backlog`` is the number of
    heartbeats waiting in the spool.
    """

    kind: AlarmKind
    pop: str
    at: float
    since: float
    failure: str
    backlog: int

    event: ClassVar[str] = "outage_started"


@dataclass(frozen=True, slots=True)
class OutageEnded:
    """An outage ended. ``duration_s`` counts from when the alarm turned bad.

    ``drain_per_s`` is how fast the backlog shrank over the last tick (heartbeats
    per second), ``None`` when unknown.
    """

    kind: AlarmKind
    pop: str
    at: float
    duration_s: float
    backlog: int
    drain_per_s: float | None

    event: ClassVar[str] = "outage_ended"


OutageEvent = OutageStarted | OutageEnded
HealthEvent = Failing | Restored | OutageStarted | OutageEnded


def event_fields(event: HealthEvent) -> dict[str, Any]:
    """The event as log fields: fixed codes and numbers only."""
    fields: dict[str, Any] = {"kind": str(event.kind)}
    if isinstance(event, Failing):
        fields["failure"] = event.failure
    elif isinstance(event, Restored):
        fields["failed_for_s"] = round(event.failed_for_s, 1)
    elif isinstance(event, OutageStarted):
        fields.update(failure=event.failure, backlog=event.backlog, failing_for_s=round(event.at - event.since, 1))
    else:
        fields.update(duration_s=round(event.duration_s, 1), backlog=event.backlog)
        if event.drain_per_s is not None:
            fields["drain_per_s"] = round(event.drain_per_s, 2)
    return fields


def fixed_code(value: str | None, default: str = "other") -> str:
    """``value`` if it is a short lower-case code, else ``default``: free text never reaches an alert."""
    return value if value is not None and _CODE.fullmatch(value) else default


HEALTH_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("delivery_failures_consecutive", MetricKind.GAUGE, "Deliveries to central failed in a row."),
    MetricSpec("outage_active", MetricKind.GAUGE, "1 while an outage (delivery, collectors or spool) is on."),
    MetricSpec("outage_seconds", MetricKind.GAUGE, "Length so far of the longest outage under way.", "seconds"),
    MetricSpec("alerts_sent_total", MetricKind.COUNTER, "Outage and recovery messages the alert hook accepted."),
    MetricSpec("alert_hook_failures_total", MetricKind.COUNTER, "Alert hook calls (ntfy, Kuma) that failed."),
)


@dataclass(frozen=True, slots=True)
class PushStatus:
    """What to push to Uptime Kuma this tick: status, a fixed message, ms of the last good delivery."""

    status: Literal["up", "down"]
    msg: str
    ping_ms: float | None


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

    def step(self, bad: bool, failure: str, now: float) -> tuple[str, float] | None:
        """Advance; return ``(transition, bad_for_s)`` or ``None``."""
        if bad:
            fresh = self.bad_since is None
            if self.bad_since is None:
                self.bad_since, self.failure = now, failure
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
    ) -> None:
        self._clock: Clock = clock or SystemClock()
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
    def from_settings(cls, settings: Settings, *, clock: Clock | None = None) -> Health:
        """A health machine persisting in ``settings.state_dir``."""
        return cls(settings.alerts, settings.spool, pop_id=settings.pop_id, state_dir=settings.state_dir, clock=clock)

    # -- observations -------------------------------------------------------

    def observe_delivery(
        self, *, ok: bool, backlog: int, failure: str | None = None, latency_ms: float | None = None
    ) -> tuple[HealthEvent, ...]:
        """One delivery attempt: ``ok`` if central took the batch, ``failure`` its fixed code if not.

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
        return self._step(AlarmKind.DELIVERY, not ok, fixed_code(failure), now, drain)

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
            return PushStatus("down", f"outage_{active[0]}", ping)
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
        self, kind: AlarmKind, bad: bool, failure: str, now: float, drain: float | None
    ) -> tuple[HealthEvent, ...]:
        alarm = self._alarms[kind]
        transition = alarm.step(bad, failure, now)
        if transition is None:
            return ()
        name, bad_for = transition
        wall = self._clock.wall()
        backlog = self._backlog
        event: HealthEvent
        if name == "failing":
            event = Failing(kind, wall, alarm.failure)
        elif name == "restored":
            event = Restored(kind, wall, bad_for)
        elif name == "started":
            event = OutageStarted(kind, self._pop, wall, wall - bad_for, alarm.failure, backlog)
        else:
            event = OutageEnded(kind, self._pop, wall, bad_for, backlog, drain)
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
        try:
            _write_state(self._path, json.dumps(doc, sort_keys=True).encode())
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
    write_atomic(path, data)


# -- hooks --------------------------------------------------------------------


class HookStatus:
    """A hook's up/down state: its failures are logged once when they start and once when they end.

    The log names the hook by a fixed label and the failure by a fixed code, never
    by its URL (which may hold a token) or by exception text.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.failing = False
        self.sent_total = 0
        self.failures_total = 0

    def succeeded(self) -> bool:
        """Count a success; log the recovery if the hook was failing. Returns ``True``."""
        self.sent_total += 1
        if self.failing:
            self.failing = False
            log.info("alert_hook_recovered", hook=self.label)
        return True

    def failed(self, code: str) -> bool:
        """Count a failure; log it if the hook was fine until now. Returns ``False``."""
        self.failures_total += 1
        if not self.failing:
            self.failing = True
            log.warning("alert_hook_failing", hook=self.label, failure=fixed_code(code))
        return False


class Notifier(Protocol):
    """An outage/recovery message sender (ntfy). Never raises; ``False`` when it failed."""

    async def notify(self, event: OutageEvent) -> bool: ...


class Pusher(Protocol):
    """A per-tick status push (Uptime Kuma). Never raises; ``False`` when it failed."""

    async def push(self, status: Literal["up", "down"], msg: str, ping_ms: float | None) -> bool: ...


class AlertHooks:
    """Logs health events once and fires the hooks in the background.

    :meth:`dispatch` and :meth:`push` return at once; the hooks run as tasks whose
    results are counted in ``health``. A Kuma push still under way when the next
    tick comes is not doubled. :meth:`aclose` gives what is left a grace period,
    then cancels it.
    """

    def __init__(self, health: Health, *, notifier: Notifier | None = None, pusher: Pusher | None = None) -> None:
        self._health = health
        self._notifier = notifier
        self._pusher = pusher
        self._tasks: set[asyncio.Task[None]] = set()
        self._push_task: asyncio.Task[None] | None = None

    def dispatch(self, events: Iterable[HealthEvent]) -> None:
        """Log each event once; send outage starts and ends to the notifier."""
        for event in events:
            if isinstance(event, OutageStarted):
                log.error(event.event, **event_fields(event))
            elif isinstance(event, Failing):
                log.warning(event.event, **event_fields(event))
            else:
                log.info(event.event, **event_fields(event))
            if self._notifier is not None and isinstance(event, OutageStarted | OutageEnded):
                self._spawn(self._notify(self._notifier, event))

    def push(self) -> None:
        """Push the current status to Kuma, unless the previous push is still under way."""
        if self._pusher is None or (self._push_task is not None and not self._push_task.done()):
            return
        status = self._health.push_status()
        self._push_task = self._spawn(self._push(self._pusher, status))

    async def flush(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the hooks under way; ``True`` if none is left."""
        tasks = set(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, grace))
        return not self._tasks

    async def aclose(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the hooks under way, then cancel the rest."""
        if await self.flush(grace):
            return
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _notify(self, notifier: Notifier, event: OutageEvent) -> None:
        self._health.record_alert(await _never_raise(notifier.notify(event)))

    async def _push(self, pusher: Pusher, status: PushStatus) -> None:
        self._health.record_push(await _never_raise(pusher.push(status.status, status.msg, status.ping_ms)))


async def _never_raise(call: Any) -> bool:
    # Hooks promise not to raise; a third-party one that does still must not kill the task quietly.
    try:
        return bool(await call)
    except Exception:
        log.warning("alert_hook_raised")
        return False
