"""Requests: rates and unique client counts from the web server's access log (and a tarpit log).

The parts, each in its own module:

- :mod:`collectors.logformats`: the ``combined`` and ``json`` lines, read a chunk at a time;
- :mod:`collectors.logrates`: per-second counts by log time, for ``requests_per_s``;
- :mod:`collectors.uniques`: the 1-hour and 24-hour HyperLogLog windows, and the sketch key;
- :mod:`collectors.logcounter`: one followed log, read into the three above;
- this module: the collector, its samples, its saved state and its thread.

Windows follow the log's own timestamps, not arrival time. All of it is pure
Python and its standard library: the per-line work is done by C-level built-ins
(``re.findall`` over a chunk, ``set``, ``Counter``, ``map``), so Python code runs
per chunk and per distinct address, not per line.

Addresses never outlive the chunk of lines they were read in (a line still being
written is left in the file, and only parsed time stamps are remembered); what is
saved across restarts is offsets, counters, per-second counts and sketch
registers, never an address or a reversible hash (:mod:`collectors.uniques`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from agent.errors import CollectorError
from agent.plugin_api import PluginContext, PluginSettings
from agent.sample import JsonObject, MetricKind, MetricSpec, Sample
from collectors import hll
from collectors.logcounter import LogCounter
from collectors.logrates import CLASSES
from collectors.uniques import KEY_FILE, load_or_create_key

STATE_VERSION = 1


class RequestsSettings(PluginSettings):
    """The web server's access log, and an optional tarpit/scanner log."""

    access_log: Path | None = Field(None, description="Access log to follow.")
    format: Literal["combined", "json"] = Field("combined", description="Access log format.")
    tarpit_log: Path | None = Field(None, description="Tarpit/scanner log; unique addresses are counted.")
    tarpit_format: Literal["combined", "json"] = Field("combined", description="Tarpit log format.")
    max_lines_per_tick: int = Field(200_000, ge=1000, description="Bound on lines read per tick.")


class RequestsCollector:
    """Request counts and rates from the access log; unique clients from it and the tarpit log."""

    name: ClassVar[str] = "requests"
    settings_model: ClassVar[type[RequestsSettings]] = RequestsSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("requests_total", MetricKind.COUNTER, "Requests in the access log since the agent began counting."),
        MetricSpec(
            "requests_per_s", MetricKind.GAUGE, "Requests per second over the last interval, by log time.", "1/s"
        ),
        MetricSpec(
            "requests_class_per_s", MetricKind.GAUGE, "Requests per second by status class.", "1/s", labels=("class",)
        ),
        MetricSpec("unique_ips_1h", MetricKind.GAUGE, "Distinct client addresses in the last hour (HyperLogLog)."),
        MetricSpec("unique_ips_24h", MetricKind.GAUGE, "Distinct client addresses in the last 24 hours (HyperLogLog)."),
        MetricSpec("tarpit_unique_ips_1h", MetricKind.GAUGE, "Distinct addresses in the tarpit log, last hour."),
        MetricSpec("tarpit_unique_ips_24h", MetricKind.GAUGE, "Distinct addresses in the tarpit log, last 24 hours."),
        MetricSpec(
            "log_lines_malformed_total", MetricKind.COUNTER, "Log lines that could not be parsed.", labels=("log",)
        ),
    )

    def __init__(
        self,
        cfg: RequestsSettings,
        *,
        interval: float,
        state_dir: Path | None = None,
        sketch_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._interval = interval
        self._state_dir = state_dir
        self._key = sketch_key
        self._clock = clock
        self.logs: dict[str, LogCounter] = {}
        if cfg.access_log is not None:
            self.logs["access"] = LogCounter(cfg.access_log, cfg.format, clock=clock, max_lines=cfg.max_lines_per_tick)
        if cfg.tarpit_log is not None:
            self.logs["tarpit"] = LogCounter(
                cfg.tarpit_log, cfg.tarpit_format, clock=clock, max_lines=cfg.max_lines_per_tick
            )
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._last_state: JsonObject = {}
        self._key_id: str | None = None

    @classmethod
    def from_settings(cls, cfg: RequestsSettings, context: PluginContext) -> RequestsCollector | None:
        """A collector for the configured logs, or ``None`` when no log is configured."""
        if cfg.access_log is None and cfg.tarpit_log is None:
            return None
        return cls(cfg, interval=context.interval, state_dir=context.state_dir)

    async def collect(self) -> Sequence[Sample]:
        """Read what is new in the logs (bounded) and report counts, rates and uniques."""
        return await asyncio.to_thread(self.collect_blocking)

    def collect_blocking(self) -> list[Sample]:
        """:meth:`collect`'s work, in the calling thread."""
        if not self._lock.acquire(blocking=False):
            raise CollectorError("previous read still running", code="busy")
        try:
            self._ready()
            now = self._clock()
            try:
                for log in self.logs.values():
                    log.step(now)
            except PermissionError:
                raise CollectorError("log not readable", code="permission") from None
            except OSError:
                raise CollectorError("log read failed", code="io") from None
            return self._samples(now)
        finally:
            self._lock.release()

    def _samples(self, now: float) -> list[Sample]:
        samples: list[Sample] = []
        access = self.logs.get("access")
        if access is not None:
            per_s, by_class = access.rates.rates(now, self._interval)
            one, day = access.uniques.counts(now)
            samples += [
                Sample("requests_total", access.total),
                Sample("requests_per_s", per_s),
                *(
                    Sample.of("requests_class_per_s", rate, **{"class": cls})
                    for cls, rate in zip(CLASSES, by_class, strict=True)
                ),
                Sample("unique_ips_1h", one),
                Sample("unique_ips_24h", day),
            ]
        tarpit = self.logs.get("tarpit")
        if tarpit is not None:
            one, day = tarpit.uniques.counts(now)
            samples += [Sample("tarpit_unique_ips_1h", one), Sample("tarpit_unique_ips_24h", day)]
        for name, log in self.logs.items():
            samples.append(Sample.of("log_lines_malformed_total", log.malformed, log=name))
        return samples

    def _ready(self) -> None:
        """Load the sketch key and apply restored state, once, in the worker thread."""
        if self._key_id is not None:
            return
        key = self._key
        if key is None and self._state_dir is not None:
            with contextlib.suppress(OSError):
                key = load_or_create_key(self._state_dir / KEY_FILE)
        # Without a durable key, counts are right within this process but restart afresh.
        hasher = hll.KeyedHasher(key if key is not None else os.urandom(32))
        self._key_id = hasher.key_id()
        for log in self.logs.values():
            log.uniques.hasher = hasher
        if self._pending is not None:
            self._apply_state(self._pending)
            self._pending = None

    def _apply_state(self, state: dict[str, Any]) -> None:
        same_key = state.get("key_id") == self._key_id
        logs = state.get("logs")
        if not isinstance(logs, dict):
            return
        for name, log in self.logs.items():
            saved = logs.get(name)
            if isinstance(saved, dict):
                log.load(saved, sketches=same_key)

    def save_state(self) -> JsonObject:
        """Offsets, counters and sketches: no address, no reversible hash."""
        if not self._lock.acquire(blocking=False):
            return self._last_state  # a read is running (this is called on the loop): the previous snapshot will do
        try:
            if self._key_id is None:
                return dict(self._pending) if self._pending is not None else {}
            self._last_state = {
                "v": STATE_VERSION,
                "key_id": self._key_id,
                "logs": {name: log.save() for name, log in self.logs.items()},
            }
            return self._last_state
        finally:
            self._lock.release()

    def load_state(self, state: JsonObject) -> None:
        """Take saved state back; it is applied before the first read."""
        if state.get("v") != STATE_VERSION:
            return
        with self._lock:
            if self._key_id is None:
                self._pending = dict(state)
            else:
                self._apply_state(dict(state))

    async def aclose(self) -> None:
        """Close the followed files."""
        for log in self.logs.values():
            log.follower.close()
