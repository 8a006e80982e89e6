"""The health state machine, its persisted alarms, and the hooks it drives."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.sample import MetricKind
from agent.settings import AlertsSettings, SpoolSettings
from alerts.events import AlarmKind, Failing, HealthEvent, HealthState, OutageEnded, OutageStarted, PushStatus, Restored
from alerts.health import HEALTH_METRICS, Health
from alerts.hooks import AlertHooks
from alerts.kuma import KumaHook
from alerts.ntfy import NtfyHook

WALL0 = 1_700_000_000.0
OUTAGE_AFTER = 300.0
TICK = 10.0
DELIVERY = AlarmKind.DELIVERY


class FakeClock:
    """Wall and monotonic clocks moved by hand; a restart gives the monotonic clock a new origin."""

    def __init__(self, wall: float = WALL0, mono: float = 1_000.0) -> None:
        self._wall = wall
        self._mono = mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def jump_wall(self, seconds: float) -> None:
        self._wall += seconds

    def reboot(self, mono: float = 7.0) -> None:
        self._mono = mono


def make_health(clock: FakeClock, state_dir: Path | None, *, max_files: int = 1000) -> Health:
    return Health(
        AlertsSettings(outage_after=OUTAGE_AFTER),
        SpoolSettings(max_files=max_files, max_bytes=10_000_000),
        pop_id="ams1",
        state_dir=state_dir,
        clock=clock,
    )


def run_delivery(
    health: Health, clock: FakeClock, results: Sequence[bool], *, backlog: Callable[[int], int] = lambda i: i
) -> list[HealthEvent]:
    """One delivery observation per tick, TICK seconds apart, starting now."""
    events: list[HealthEvent] = []
    for i, ok in enumerate(results):
        if i:
            clock.advance(TICK)
        events += health.observe_delivery(ok=ok, backlog=backlog(i), failure=None if ok else "timeout", latency_ms=8.0)
    return events


def outages(events: Sequence[HealthEvent]) -> list[OutageStarted | OutageEnded]:
    return [event for event in events if isinstance(event, OutageStarted | OutageEnded)]


def test_outage_of_given_length_gives_one_outage_and_one_recovery(tmp_path: Path) -> None:
    """Ten minutes of failed delivery give one failing, one outage start at outage_after, one end on success."""
    clock = FakeClock()
    health = make_health(clock, tmp_path)
    events = run_delivery(health, clock, [False] * 61 + [True], backlog=lambda i: 100 - i if i == 61 else 100 + i)
    expected = [
        Failing(DELIVERY, WALL0, "timeout"),
        OutageStarted(DELIVERY, "ams1", at=WALL0 + 300, since=WALL0, failure="timeout", backlog=130),
        OutageEnded(DELIVERY, "ams1", at=WALL0 + 610, duration_s=610.0, backlog=39, drain_per_s=12.1),
    ]
    assert expected == events
    assert health.state == HealthState.HEALTHY


def test_state_and_metrics_follow_the_outage(tmp_path: Path) -> None:
    """State goes healthy, failing, outage, healthy; the metrics count failures and the outage's length."""
    clock = FakeClock()
    health = make_health(clock, tmp_path)
    seen = []
    for ok in [True, False, *([False] * 35), True]:
        health.observe_delivery(ok=ok, backlog=1, failure="http_503")
        seen.append(health.state)
        clock.advance(TICK)
        if health.state is HealthState.OUTAGE and len(seen) == 36:
            expected = {
                "delivery_failures_consecutive": 35,
                "outage_active": 1,
                "outage_seconds": 350.0,
                "alerts_sent_total": 0,
                "alert_hook_failures_total": 0,
            }
            assert expected == {sample.name: sample.value for sample in health.samples()}
    expected_states = [HealthState.HEALTHY, *[HealthState.FAILING] * 30, *[HealthState.OUTAGE] * 6]
    assert [*expected_states, HealthState.HEALTHY] == seen
    assert {sample.name: sample.value for sample in health.samples()[:3]} == {
        "delivery_failures_consecutive": 0,
        "outage_active": 0,
        "outage_seconds": 0,
    }


def test_health_metrics_are_declared_with_the_counter_naming_rule() -> None:
    """Every sample has a MetricSpec; counters are exactly the names ending in _total."""
    health = make_health(FakeClock(), None)
    assert [spec.name for spec in HEALTH_METRICS] == [sample.name for sample in health.samples()]
    for spec in HEALTH_METRICS:
        assert (spec.kind is MetricKind.COUNTER) == spec.name.endswith("_total")


@pytest.mark.parametrize("restart_at", [5, 15, 29, 30, 31, 45, 60])
def test_restart_sends_nothing_extra(tmp_path: Path, restart_at: int) -> None:
    """A restart (new Health on the same state dir, new monotonic origin) anywhere in the outage changes no event."""
    results = [False] * 61 + [True]
    clock = FakeClock()
    unbroken = run_delivery(make_health(clock, tmp_path / "a"), clock, results, backlog=lambda i: 5)
    clock = FakeClock()
    first = make_health(clock, tmp_path / "b")
    events = run_delivery(first, clock, results[:restart_at], backlog=lambda i: 5)
    clock.advance(TICK)
    clock.reboot()
    second = make_health(clock, tmp_path / "b")
    events += run_delivery(second, clock, results[restart_at:], backlog=lambda i: 5)
    assert [dataclasses.replace(e, drain_per_s=None) if isinstance(e, OutageEnded) else e for e in unbroken] == [
        dataclasses.replace(e, drain_per_s=None) if isinstance(e, OutageEnded) else e for e in events
    ]


def test_state_file_is_written_atomically_on_transitions_only(tmp_path: Path) -> None:
    """alerts.json holds the alarms after each transition and no temporary file is left behind."""
    clock = FakeClock()
    health = make_health(clock, tmp_path)
    health.observe_delivery(ok=True, backlog=0)
    assert list(tmp_path.iterdir()) == []
    run_delivery(health, clock, [False] * 31)
    assert [path.name for path in tmp_path.iterdir()] == ["alerts.json"]
    saved = json.loads((tmp_path / "alerts.json").read_text())
    expected = {"bad_since": WALL0, "active": True, "cleared_at": None, "failure": "timeout", "sink": ""}
    assert expected == saved["alarms"]["delivery"]


def test_unreadable_state_file_starts_fresh(tmp_path: Path) -> None:
    """A corrupt alerts.json is logged by a fixed event and the agent starts healthy."""
    (tmp_path / "alerts.json").write_text('{"version": 1, "alarms": ')
    with capture_logs() as logs:
        health = make_health(FakeClock(), tmp_path)
    assert logs == [{"event": "health_state_unreadable", "log_level": "warning"}]
    assert health.state == HealthState.HEALTHY


def test_unwritable_state_dir_is_logged_once_and_changes_no_event(tmp_path: Path) -> None:
    """When alerts.json cannot be written, events still come and the failure is logged once."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    clock = FakeClock()
    health = make_health(clock, blocker / "state")
    with capture_logs() as logs:
        events = run_delivery(health, clock, [False] * 31 + [True])
    assert [Failing, OutageStarted, OutageEnded] == [type(event) for event in events]
    assert logs == [{"event": "health_state_save_failed", "log_level": "warning"}]


def test_alternating_success_and_failure_never_makes_an_outage() -> None:
    """A central that fails every other tick for many outage_after periods raises no outage."""
    clock = FakeClock()
    health = make_health(clock, None)
    events = run_delivery(health, clock, [i % 2 == 0 for i in range(300)])
    assert outages(events) == []
    assert {Failing, Restored} == {type(event) for event in events}


def test_flapping_outages_are_at_most_one_pair_per_outage_after() -> None:
    """Outages broken by single successes give start/end pairs whose starts are over outage_after apart."""
    clock = FakeClock()
    health = make_health(clock, None)
    pattern = ([False] * 31 + [True]) * 6
    events = outages(run_delivery(health, clock, pattern))
    starts = [event.at for event in events if isinstance(event, OutageStarted)]
    assert [OutageStarted, OutageEnded] * 6 == [type(event) for event in events]
    assert all(later - earlier > OUTAGE_AFTER for earlier, later in itertools.pairwise(starts))


@pytest.mark.parametrize("jump", [86_400.0, -3_600.0])
def test_wall_clock_jump_neither_starts_nor_delays_an_outage(jump: float) -> None:
    """An outage starts after outage_after seconds of monotonic time whatever the wall clock does."""
    clock = FakeClock()
    health = make_health(clock, None)
    events = run_delivery(health, clock, [False] * 5)
    clock.jump_wall(jump)
    events += run_delivery(health, clock, [False] * 27)
    started = [event for event in events if isinstance(event, OutageStarted)]
    assert [WALL0 + 300 + jump] == [event.at for event in started]
    assert [event.at - event.since for event in started] == [300.0]


def test_wall_clock_set_back_across_a_restart_does_not_date_the_failure_in_the_future(tmp_path: Path) -> None:
    """After a restart with the wall clock set back, the failure counts as just begun, not as negative time."""
    clock = FakeClock()
    run_delivery(make_health(clock, tmp_path), clock, [False] * 10)
    clock.jump_wall(-3_600)
    clock.reboot()
    health = make_health(clock, tmp_path)
    events = run_delivery(health, clock, [False] * 31)
    assert [clock.wall()] == [event.at for event in events if isinstance(event, OutageStarted)]


def test_spool_near_full_alerts_at_once_and_clears_below_the_low_mark() -> None:
    """90 % of max_files raises a spool outage at once; it ends only below 80 %."""
    clock = FakeClock()
    health = make_health(clock, None, max_files=100)
    events: list[HealthEvent] = []
    for pending in [50, 89, 90, 95, 85, 81, 79]:
        events += health.observe_spool(pending_files=pending, pending_bytes=0, dropped_total=0)
        clock.advance(TICK)
    expected = [
        OutageStarted(AlarmKind.SPOOL, "ams1", at=WALL0 + 20, since=WALL0 + 20, failure="spool_near_full", backlog=90),
        OutageEnded(AlarmKind.SPOOL, "ams1", at=WALL0 + 60, duration_s=40.0, backlog=79, drain_per_s=None),
    ]
    assert expected == events


def test_spool_drops_alert_and_repeat_only_after_outage_after() -> None:
    """Dropped heartbeats raise a spool outage; after it ends, new drops alert again only outage_after later."""
    clock = FakeClock()
    health = make_health(clock, None, max_files=100)
    events: list[HealthEvent] = []
    dropped = 0
    for tick in range(60):
        dropped += 1 if tick in (3, 6, 7, 8, 9, 10, 11, 45) else 0
        events += health.observe_spool(pending_files=10, pending_bytes=0, dropped_total=dropped)
        clock.advance(TICK)
    kinds = [(type(event).__name__, event.at - WALL0) for event in events]
    expected = [
        ("OutageStarted", 30.0),
        ("OutageEnded", 40.0),
        ("Failing", 60.0),
        ("Restored", 120.0),
        ("OutageStarted", 450.0),
        ("OutageEnded", 460.0),
    ]
    assert expected == kinds


def test_spool_drop_counter_that_goes_down_is_a_restart_not_drops() -> None:
    """A smaller drop counter (a restarted spool) is a new baseline, not an alert."""
    health = make_health(FakeClock(), None)
    events = [*health.observe_spool(pending_files=1, pending_bytes=0, dropped_total=40)]
    events += health.observe_spool(pending_files=1, pending_bytes=0, dropped_total=0)
    assert events == []


def test_all_collectors_failing_for_outage_after_is_an_outage() -> None:
    """Every collector failing for outage_after gives one outage; one collector failing gives none."""
    clock = FakeClock()
    health = make_health(clock, None)
    events: list[HealthEvent] = []
    for tick in range(40):
        failed = 1 if tick < 5 else (3 if tick < 38 else 0)
        events += health.observe_collectors(failed=failed, total=3)
        clock.advance(TICK)
    assert [(type(event).__name__, event.at - WALL0) for event in events] == [
        ("Failing", 50.0),
        ("OutageStarted", 350.0),
        ("OutageEnded", 380.0),
    ]


def test_push_status_is_down_during_any_outage() -> None:
    """Kuma sees up with the last delivery's ms while healthy, no stale ms once failing, down in an outage."""
    clock = FakeClock()
    health = make_health(clock, None)
    health.observe_delivery(ok=True, backlog=0, latency_ms=42.0)
    assert PushStatus("up", "healthy", 42.0) == health.push_status()
    run_delivery(health, clock, [False] * 2)
    assert PushStatus("up", "failing", None) == health.push_status()
    run_delivery(health, clock, [False] * 30)
    assert PushStatus("down", "outage_delivery", None) == health.push_status()
    health.observe_delivery(ok=True, backlog=0, latency_ms=7.0)
    assert PushStatus("up", "healthy", 7.0) == health.push_status()


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[int, bool, bool]]:
    """Steps of (seconds since the previous one, delivery ok, restart before it)."""
    steps = st.tuples(st.integers(1, 200), st.booleans(), st.booleans().map(lambda b: b and draw(st.booleans())))
    return draw(st.lists(steps, max_size=40))


@settings(max_examples=60)
@given(history=histories())
def test_outage_invariants_hold_and_restarts_change_nothing(history: list[tuple[int, bool, bool]]) -> None:
    """Over any history, outages alternate, starts are over outage_after apart, and restarts change nothing."""
    with tempfile.TemporaryDirectory() as unbroken_dir, tempfile.TemporaryDirectory() as restarted_dir:
        clock_a, clock_b = FakeClock(), FakeClock()
        unbroken, restarted = make_health(clock_a, Path(unbroken_dir)), make_health(clock_b, Path(restarted_dir))
        seen_a: list[HealthEvent] = []
        seen_b: list[HealthEvent] = []
        for step, (dt, ok, restart) in enumerate(history):
            clock_a.advance(dt)
            clock_b.advance(dt)
            if restart:
                clock_b.reboot(mono=float(step))
                restarted = make_health(clock_b, Path(restarted_dir))
            seen_a += unbroken.observe_delivery(ok=ok, backlog=step, failure="connect")
            seen_b += restarted.observe_delivery(ok=ok, backlog=step, failure="connect")
    events = outages(seen_a)
    started = [event for event in events if isinstance(event, OutageStarted)]
    ended = [event for event in events if isinstance(event, OutageEnded)]
    assert len(ended) <= len(started) <= len(ended) + 1
    assert [OutageStarted, OutageEnded] * len(ended) + [OutageStarted] * (len(started) - len(ended)) == [
        type(event) for event in events
    ]
    assert all(event.at - event.since >= OUTAGE_AFTER for event in started)
    assert all(later.at - earlier.at > OUTAGE_AFTER for earlier, later in itertools.pairwise(started))
    assert all(start.at - end.at >= OUTAGE_AFTER for end, start in zip(ended, started[1:], strict=False))
    assert all(end.duration_s == end.at - start.since for start, end in zip(started, ended, strict=False))

    def comparable(event: HealthEvent) -> HealthEvent:
        return dataclasses.replace(event, drain_per_s=None) if isinstance(event, OutageEnded) else event

    assert [comparable(event) for event in seen_a] == [comparable(event) for event in seen_b]


# -- the hooks, against real servers ---------------------------------------------------

NTFY_TOKEN = "tk_healthTESTtoken987654"
KUMA_TOKEN = "kumaHEALTHpush123"


class Receivers:
    """Stand-ins for ntfy (POST /<topic>) and Kuma (GET /api/push/<token>) that record what they got."""

    def __init__(self) -> None:
        self.ntfy: list[tuple[dict[str, str], str]] = []
        self.kuma: list[dict[str, str]] = []

    def app(self) -> web.Application:
        async def publish(request: web.Request) -> web.Response:
            self.ntfy.append((dict(request.headers), await request.text()))
            return web.json_response({"id": "x", "event": "message"})

        async def push(request: web.Request) -> web.Response:
            if request.match_info["token"] != KUMA_TOKEN:
                return web.json_response({"ok": False, "msg": "Monitor not found or not active."}, status=404)
            self.kuma.append(dict(request.query))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/{topic}", publish)
        app.router.add_get("/api/push/{token}", push)
        return app


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def run_ticks(
    health: Health, hooks: AlertHooks, clock: FakeClock, results: Sequence[bool], *, first: bool = True
) -> None:
    """Ticks as the runner does them: observe, dispatch, push; here each tick also waits for its hooks."""
    for i, ok in enumerate(results):
        if i or not first:
            clock.advance(TICK)
        hooks.dispatch(health.observe_delivery(ok=ok, backlog=7, failure="http_503", latency_ms=3.0))
        hooks.push()
        assert await hooks.flush(30)


def collapse(statuses: Sequence[str]) -> list[str]:
    return [status for i, status in enumerate(statuses) if i == 0 or statuses[i - 1] != status]


@pytest.mark.parametrize("restart_at", [None, 40])
async def test_outage_reaches_ntfy_once_each_way_and_kuma_goes_up_down_up(
    aiohttp_server: Callable[..., Any], session: aiohttp.ClientSession, tmp_path: Path, restart_at: int | None
) -> None:
    """An outage gives ntfy one outage and one recovery message, even across a restart; Kuma sees up, down, up."""
    receivers = Receivers()
    server = await aiohttp_server(receivers.app())
    ntfy = NtfyHook(str(server.make_url("/pop-alerts")), NTFY_TOKEN, session=session, timeout=5)
    kuma = KumaHook(str(server.make_url(f"/api/push/{KUMA_TOKEN}?status=up&msg=OK&ping=")), session=session, timeout=5)
    results = [True] * 3 + [False] * 50 + [True] * 3
    clock = FakeClock()
    health = make_health(clock, tmp_path)
    split = len(results) if restart_at is None else restart_at
    await run_ticks(health, AlertHooks(health, notifier=ntfy, pusher=kuma), clock, results[:split])
    if restart_at is not None:
        clock.reboot()
        health = make_health(clock, tmp_path)
        await run_ticks(health, AlertHooks(health, notifier=ntfy, pusher=kuma), clock, results[split:], first=False)
    assert [headers["Priority"] for headers, _ in receivers.ntfy] == ["high", "default"]
    assert [f"Bearer {NTFY_TOKEN}"] * 2 == [headers["Authorization"] for headers, _ in receivers.ntfy]
    assert collapse([query["status"] for query in receivers.kuma]) == ["up", "down", "up"]
    assert len(results) == len(receivers.kuma)
    assert next(query["msg"] for query in receivers.kuma if query["status"] == "down") == "outage_delivery"
    for headers, body in receivers.ntfy:
        for text in (body, headers["Title"], headers["Tags"]):
            assert NTFY_TOKEN not in text and KUMA_TOKEN not in text and "127.0.0.1" not in text
    assert "7 heartbeats held in the spool" in receivers.ntfy[0][1]
    assert "after an outage of 8m 20s" in receivers.ntfy[1][1]
    if restart_at is None:
        assert (health.alerts_sent_total, health.hook_failures_total) == (2, 0)


async def test_dead_hooks_never_block_and_are_counted(session: aiohttp.ClientSession) -> None:
    """With ntfy and Kuma refusing connections, ticks run on, each failure is counted and logged once per hook."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ntfy = NtfyHook(f"http://127.0.0.1:{port}/t", NTFY_TOKEN, session=session, timeout=5)
    kuma = KumaHook(f"http://127.0.0.1:{port}/api/push/{KUMA_TOKEN}", session=session, timeout=5)
    clock = FakeClock()
    health = make_health(clock, None)
    with capture_logs() as logs:
        await run_ticks(health, AlertHooks(health, notifier=ntfy, pusher=kuma), clock, [False] * 31 + [True])
    assert (health.alerts_sent_total, health.hook_failures_total) == (0, 2 + 32)
    hook_logs = [(entry["event"], entry["hook"]) for entry in logs if "hook" in entry]
    assert sorted(hook_logs, reverse=True) == [("alert_hook_failing", "ntfy"), ("alert_hook_failing", "kuma")]
    assert str(port) not in repr(logs) and KUMA_TOKEN not in repr(logs) and NTFY_TOKEN not in repr(logs)


async def test_hanging_hooks_do_not_pile_up_and_are_cancelled_at_close(
    aiohttp_server: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    """A Kuma that never answers gets one push at a time, not one per tick, and aclose cancels it."""
    release = asyncio.Event()
    requests: list[str] = []

    async def hang(request: web.Request) -> web.Response:
        requests.append(request.path)
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    server = await aiohttp_server(app)
    ntfy = NtfyHook(str(server.make_url("/t")), None, session=session, timeout=3600)
    kuma = KumaHook(str(server.make_url(f"/api/push/{KUMA_TOKEN}")), session=session, timeout=3600)
    clock = FakeClock()
    health = make_health(clock, None)
    hooks = AlertHooks(health, notifier=ntfy, pusher=kuma)
    try:
        for ok in [False] * 40:
            hooks.dispatch(health.observe_delivery(ok=ok, backlog=1, failure="timeout"))
            hooks.push()
            clock.advance(TICK)
            await asyncio.sleep(0.01)
        while len(requests) < 2:  # both requests reach the server; no timing is asserted
            await asyncio.sleep(0.01)
        assert await hooks.flush(0) is False
        await hooks.aclose(grace=0)
        assert await hooks.flush(0) is True
        assert [f"/api/push/{KUMA_TOKEN}", "/t"] == sorted(requests)
    finally:
        release.set()
