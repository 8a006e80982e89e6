"""10,000 malformed documents into ``agent enqueue`` beside the running daemon.

Twenty-four go through real ``agent enqueue`` processes; the other 9,976 through the
same function those processes run (:func:`agent.app.enqueue`), called in a loop by
two worker processes (one per core of a CI machine: the call is CPU-bound, and in
a thread of this process it would also hold the GIL the central under test needs),
so the test stays well under a minute. Every one must be refused with exit 1 or
2, leave the spool alone, and never echo the offending value; the daemon ticks
on throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import multiprocessing
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from agent.app import enqueue
from agent.settings import load_settings
from tests.heartbeats import make_heartbeat
from tests.reliability.harness import (
    Central,
    assert_delivered,
    assert_keeps_rhythm,
    events,
    run_agent,
    start_central,
    ticks,
    wait_for,
)

TOTAL = 10_000
REAL_PROCESSES = 24
WORKERS = 2
# Values that must never be echoed back when a document holding them is refused.
LEAKS = ("203.0.113.77", "2001:db8::4242", "alice@example.com", "ghp_" + "A1b2C3d4" * 5)


def valid_doc(seq: int) -> dict[str, Any]:
    return make_heartbeat(seq)


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], bytes]:
    def mutate(doc: dict[str, Any]) -> bytes:
        target = doc
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
        return json.dumps(doc).encode()

    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], bytes]:
    def mutate(doc: dict[str, Any]) -> bytes:
        del doc[key]
        return json.dumps(doc).encode()

    return mutate


MUTATIONS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "empty": lambda doc: b"",
    "truncated": lambda doc: json.dumps(doc).encode()[: len(json.dumps(doc)) // 2],
    "not_utf8": lambda doc: b'{"schema": "\xff\xfe"}',
    "binary": lambda doc: bytes(range(256)),
    "array": lambda doc: json.dumps([doc]).encode(),
    "string": lambda doc: b'"pop-heartbeat/1"',
    "null": lambda doc: b"null",
    "nan": lambda doc: json.dumps(doc).encode().replace(b'"metrics": {}', b'"metrics": {"cpu_percent": NaN}'),
    "deep": lambda doc: b'{"metrics": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
    "deep_parseable": lambda doc: json.dumps({**doc, "metrics": _nest(900)}).encode(),
    "no_id": _drop("id"),
    "no_schema": _drop("schema"),
    "no_seq": _drop("seq"),
    "no_ts": _drop("ts"),
    "id_traversal": _set(("id",), "../../../etc/passwd"),
    "id_number": _set(("id",), 42),
    "seq_string": _set(("seq",), "42"),
    "seq_negative": _set(("seq",), -1),
    "schema_next": _set(("schema",), "pop-heartbeat/2"),
    "ts_garbage": _set(("ts",), "yesterday"),
    "pop_ip": _set(("pop",), LEAKS[0]),
    "label_ip6": _set(("series",), [{"name": "disk_used_percent", "labels": {"mount": f"/{LEAKS[1]}"}, "value": 1}]),
    "status_email": _set(("collectors", "cpu"), LEAKS[2]),
    "secret_token": _set(("edition",), LEAKS[3]),
    "undeclared_metric": _set(("metrics", "vault_passwords_total"), 1),
    "bad_metric_name": _set(("metrics", "CPU%"), 1),
    "metric_string": _set(("metrics", "cpu_percent"), "12"),
    "metric_bool": _set(("metrics", "cpu_percent"), True),
    "extra_field": _set(("user",), "someone"),
    "metrics_list": _set(("metrics",), [1, 2]),
    "huge_string": _set(("agent_version",), "9" * 100_000),
}


def malformed(start: int, stop: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Documents ``start`` to ``stop``, each broken in one way, cycling through every kind of breakage."""
    kinds = sorted(MUTATIONS)
    for index in range(start, stop):
        kind = kinds[index % len(kinds)]
        yield kind, MUTATIONS[kind](valid_doc(random.Random(seed * TOTAL + index).randrange(1_000_000)))


def enqueue_in_process(state_dir: Path, config: Path, docs: Iterable[tuple[str, bytes]], scratch: Path) -> Counter[int]:
    """Run ``agent.app.enqueue`` on each document; exit codes counted. Fails on any leaked value."""
    settings = load_settings(config, state_dir=state_dir, pop_id="test-pop")
    codes: Counter[int] = Counter()
    path = scratch / "doc.json"
    for kind, raw in docs:
        path.write_bytes(raw)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = enqueue(settings, str(path))
        codes[code] += 1
        assert code in (1, 2), (kind, code, err.getvalue()[:200])
        for leak in LEAKS:
            assert leak not in err.getvalue() + out.getvalue(), kind
    return codes


def enqueue_range(state_dir: Path, config: Path, start: int, stop: int, scratch: Path) -> Counter[int]:
    """:func:`enqueue_in_process` on malformed documents ``start`` to ``stop``, in a scratch directory of their own."""
    own = scratch / f"{start}-{stop}"
    own.mkdir()
    return enqueue_in_process(state_dir, config, malformed(start, stop, seed=8), own)


def split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into ``parts`` consecutive ranges of nearly equal length."""
    bounds = [start + (stop - start) * part // parts for part in range(parts + 1)]
    return list(itertools.pairwise(bounds))


async def test_ten_thousand_malformed_documents(aiohttp_server: Any, make_daemon: Any, tmp_path: Path) -> None:
    """Every malformed document is refused (exit 1 or 2) without a trace of its content; the daemon ticks on."""
    central = Central()
    daemon = make_daemon(await start_central(aiohttp_server, central))
    await daemon.start()
    await wait_for(lambda: len(central.acked) >= 3)
    real = list(malformed(0, REAL_PROCESSES, seed=8))
    scratch = tmp_path / "docs"
    scratch.mkdir()

    async def real_enqueue(index: int, kind: str, raw: bytes) -> int:
        path = scratch / f"{index}.json"
        path.write_bytes(raw)
        result = await run_agent(daemon, "enqueue", str(path))
        for leak in LEAKS:
            assert leak.encode() not in result.stdout + result.stderr, kind
        assert b"Traceback" not in result.stderr, kind
        return result.returncode

    async def real_batch() -> Counter[int]:
        codes: Counter[int] = Counter()
        for start in range(0, len(real), 2):
            pair = real[start : start + 2]
            results = await asyncio.gather(*(real_enqueue(start + i, k, r) for i, (k, r) in enumerate(pair)))
            codes.update(results)
        return codes

    config = Path(daemon.env["POP_AGENT_CONFIG"])
    loop = asyncio.get_running_loop()
    # spawn, not fork: this process runs an event loop and threads that a forked child would copy mid-flight.
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as workers:
        in_process = [
            loop.run_in_executor(workers, enqueue_range, daemon.state_dir, config, start, stop, scratch)
            for start, stop in split(REAL_PROCESSES, TOTAL, WORKERS)
        ]
        real_codes = await real_batch()
        await assert_keeps_rhythm(daemon)
        in_process_codes = sum(await asyncio.gather(*in_process), Counter())
    assert set(real_codes) <= {1, 2}
    good = [valid_doc(900_000 + i) for i in range(3)]  # beside the flood, well-formed drops still get through
    for doc in good:
        path = scratch / f"good-{doc['seq']}.json"
        path.write_bytes(json.dumps(doc).encode())
        assert 0 == (await run_agent(daemon, "enqueue", str(path))).returncode
    await wait_for(lambda: {doc["id"] for doc in good} <= central.acked_ids)
    assert TOTAL == sum(real_codes.values()) + sum(in_process_codes.values())
    await wait_for(lambda: not daemon.pending())
    assert 0 == await daemon.stop()
    assert_delivered(daemon, central)
    assert {"test-pop"} == {doc["pop"] for doc in central.received}  # nothing enqueued slipped through
    assert {doc["seq"] for doc in central.acked} == set(ticks(daemon)) | {doc["seq"] for doc in good}
    assert events(daemon, "tick_failed") == []
