"""Heartbeats read by their learned shape give exactly what parsing and mapping them whole gives."""

from __future__ import annotations

import contextlib
import json
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.sample import Pending
from sinks.remote_write_body import COLUMNAR_MIN, BodyEncoder, Prepared, Preparer
from sinks.shapes import MISSES_PER_LEARNING, Shapes, learn
from tests.sinks.realprocs import heartbeat, iso
from tests.sinks.rwdecode import decode_body

BASE_TS = 1_790_000_000.0
FAILURES = (ValueError, TypeError, KeyError, AttributeError)  # what the sink rejects as "malformed"

numbers = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(),  # NaN and infinities: json writes them as NaN / Infinity
    st.integers(2**53, 10**400),
    st.sampled_from([0, 0.0, -0.0, 1e308, 5e-324, 2**63]),
)
values = st.one_of(numbers, numbers, st.booleans(), st.none(), st.sampled_from(["ok", "1.5", ""]))
names = st.sampled_from(
    ["cpu_percent", "load1", "requests_total", "disk_used_percent", "bad-name", "pop_agent_info", "job", "x" * 3]
)
labels = st.dictionaries(
    st.sampled_from(["mount", "class", "job", "__x", "log"]), st.sampled_from(["/", "/srv", "é", 1])
)
series_items = st.fixed_dictionaries(
    {"name": names, "value": values},
    optional={"labels": st.one_of(labels, st.none(), st.just([]))},
)
timestamps = st.one_of(
    st.floats(0, 4e9).map(iso),
    st.sampled_from(["2026-12-06T01:45:46Z", "2026-02-31T23:59:60.123456789+00:00", "2026-13-01T00:00:00Z", "", "x"]),
)
documents = st.fixed_dictionaries(
    {
        "schema": st.just("pop-heartbeat/1"),
        "id": st.uuids().map(str),
        "pop": st.one_of(st.sampled_from(["ams1", "fra-2", "é1", ""]), st.integers()),
        "ts": timestamps,
        "seq": st.one_of(st.integers(0, 10**12), st.floats(0, 10), st.booleans(), st.none()),
        "metrics": st.dictionaries(names, values, max_size=6),
    },
    optional={
        "edition": st.sampled_from(["community", "commercial"]),
        "agent_version": st.just("0.1.0"),
        "series": st.lists(series_items, max_size=4),
        "collectors": st.dictionaries(st.sampled_from(["cpu", "disk"]), st.sampled_from(["ok", "error", 3])),
        "interval_s": numbers,
    },
)


def renumbered(doc: Any, draw: Callable[[Any], Any]) -> Any:
    """``doc`` with every number replaced by a freshly drawn one: the same shape, other values."""
    if type(doc) in (int, float):
        return draw(numbers)
    if isinstance(doc, dict):
        return {key: renumbered(value, draw) for key, value in doc.items()}
    if isinstance(doc, list):
        return [renumbered(value, draw) for value in doc]
    return doc


def spooled(doc: dict[str, Any], style: int) -> Pending:
    """``doc`` as a spool file holds it: compact (as the agent writes it), spaced, or ASCII-escaped."""
    if style == 0:
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    elif style == 1:
        raw = json.dumps(doc).encode()
    else:
        raw = json.dumps(doc, indent=1, ensure_ascii=True).encode()
    return Pending(str(doc.get("id")), raw)


def outcome(prepare: Callable[[Pending], Prepared], item: Pending) -> Any:
    """What the sink gets of ``item``: its fields and the exact bits of every value, or the kind of failure."""
    try:
        prepared = prepare(item)
    except FAILURES:
        return "malformed"
    return (
        prepared.id,
        prepared.ts_ms,
        prepared.pop,
        prepared.keys,
        prepared.seq,
        list(map(bits, prepared.series_values())),
    )


def bits(value: float | int) -> bytes | str:
    """The double a value is sent as, bit for bit; "overflow" for one no double holds."""
    try:
        return struct.pack("<d", value)
    except (OverflowError, struct.error):
        return "overflow"


def full(item: Pending) -> Prepared:
    return Prepared.of(Pending(item.id, item.raw))  # a fresh Pending: parsed from its bytes, as the sink would


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), documents, st.integers(0, 2))
def test_a_heartbeat_read_by_a_learned_shape_is_what_the_full_path_makes_of_it(
    data: st.DataObject, first: dict[str, Any], style: int
) -> None:
    """Whatever a learned shape makes of a heartbeat of the same shape, or of any other, the full path makes too."""
    preparer = Preparer()
    with contextlib.suppress(*FAILURES):
        preparer.prepare(spooled(first, style))  # learns its shape, if it has one
    same_shape = renumbered(first, data.draw) | {"ts": data.draw(timestamps), "id": data.draw(st.uuids()).hex}
    other = data.draw(documents)
    for doc in (same_shape, other, first):
        item = spooled(doc, style)
        assert outcome(full, item) == outcome(preparer.prepare, item)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), documents, st.integers(0, 2))
def test_a_run_read_by_its_shape_encodes_to_the_same_body_as_the_full_path(
    data: st.DataObject, first: dict[str, Any], style: int
) -> None:
    """A run of same-shaped heartbeats, read by their shape, encodes byte for byte as the full path's."""
    run = [first] + [
        renumbered(first, data.draw) | {"ts": iso(BASE_TS + 10 * index)} for index in range(1, COLUMNAR_MIN + 2)
    ]
    items = [spooled(doc, style) for doc in run]
    preparer = Preparer()
    by_shape, by_parse = [], []
    for item in items:
        try:
            by_parse.append(full(item))
        except FAILURES:
            continue
        by_shape.append(preparer.prepare(item))
    try:
        expected = BodyEncoder("pop_agent").encode(by_parse)
    except (OverflowError, struct.error):
        with pytest.raises((OverflowError, struct.error)):
            BodyEncoder("pop_agent").encode(by_shape)
        return
    assert expected == BodyEncoder("pop_agent").encode(by_shape)


def test_a_backlog_of_one_pop_is_read_by_its_shape_and_encodes_one_series_each() -> None:
    """After the first heartbeat of a POP, the rest are read by its shape; each series carries all their samples."""
    items = [
        heartbeat("ams1", seq=i, ts=BASE_TS + 10 * i, metrics={"cpu_percent": i / 2, "load1": i}) for i in range(50)
    ]
    preparer = Preparer()

    prepared = [preparer.prepare(item) for item in items]
    decoded = decode_body(BodyEncoder("pop_agent").encode(prepared))

    assert (49, 1) == (preparer.shapes.hits - 1, preparer.shapes.misses)  # the first is read again once learned
    cpu = [samples for labels, samples in decoded if labels["__name__"] == "cpu_percent"]
    assert [[(int((BASE_TS + 10 * i) * 1000), i / 2) for i in range(50)]] == cpu
    assert len({tuple(sorted(labels.items())) for labels, _ in decoded}) == len(decoded)


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda raw: raw.replace(b'"load1"', b'"load5"'), "a metric name"),
        (lambda raw: raw.replace(b'"mount": "/"', b'"mount": "/srv"'), "a label value"),
        (lambda raw: raw.replace(b'"cpu": "ok"', b'"cpu": "error"'), "a collector's state"),
        (lambda raw: raw.replace(b'"load1": 2', b'"load1": true'), "a number turned boolean"),
        (lambda raw: raw.replace(b'"load1": 2', b'"load1": 02'), "a leading zero"),
        (lambda raw: raw.replace(b'"load1": 2', b'"load1": +2'), "a plus sign"),
        (lambda raw: raw.replace(b'"load1": 2', b'"load1": 2.'), "a point without digits"),
        (lambda raw: raw.replace(b'"load1": 2', b'"load1": 2e'), "an exponent without digits"),
        (lambda raw: raw.replace(b'"load1": 2', b'"load1": 2-1'), "two numbers run together"),
        (lambda raw: raw.replace(b'"load1": 2', b'"load1": NaN'), "NaN"),
        (lambda raw: raw.replace(b'"pop": "ams1"', b'"pop": "am\\u0073"'), "an escaped POP"),
        (lambda raw: raw.replace(b'"pop": "ams1"', b'"pop": ""'), "an empty POP"),
        (lambda raw: raw + b" {}", "a second document after it"),
    ],
)
def test_a_heartbeat_differing_in_more_than_its_numbers_does_not_match(
    edit: Callable[[bytes], bytes], why: str
) -> None:
    """A shape matches only its own keys, strings and value kinds; anything else goes the full path."""
    item = heartbeat("ams1", seq=3, ts=BASE_TS, metrics={"cpu_percent": 1.5, "load1": 2})
    shape = learn(item.raw)
    assert shape is not None

    assert shape.read(item.raw) is not None
    assert None is shape.read(edit(item.raw)), why


def test_numbers_in_the_holes_are_the_values_json_reads() -> None:
    """-0, an exponent and an integer no double holds are read as json reads them: 0, a float, the integer."""
    item = heartbeat("ams1", seq=3, ts=BASE_TS, metrics={"cpu_percent": 1.5, "load1": 2, "vault_count": 4})
    shape = learn(item.raw)
    assert shape is not None
    odd = item.raw.replace(b'"load1": 2', b'"load1": -0').replace(b'"vault_count": 4', b'"vault_count": ' + b"9" * 320)
    odd = odd.replace(b'"cpu_percent": 1.5', b'"cpu_percent": -1E-2')

    read = shape.read(odd)

    assert read is not None
    assert (-0.01, 0, int("9" * 320)) == tuple(shape.values(read)[:3])
    assert "int" == type(shape.values(read)[1]).__name__


@pytest.mark.parametrize(
    "raw",
    [
        b'{"pop": "ams1", "ts": "2026-12-06T01:45:46Z", "metrics": {"a": 1, "a": 2}}',  # a repeated key
        b'{"pop": "ams1", "ts": "2026-12-06T01:45:46Z", "metrics": {"a\\u0062": 1}}',  # an escape
        b'{"pop": "ams1", "ts": "2026-12-06T01:45:46Z", "metrics": {"a": NaN}}',
        b'[{"pop": "ams1", "ts": "2026-12-06T01:45:46Z"}]',
        b'{"pop": "ams1", "metrics": {"a": 1}}',  # no ts
        b'{"pop": 7, "ts": "2026-12-06T01:45:46Z"}',
    ],
)
def test_a_document_its_shape_cannot_vouch_for_is_never_learned(raw: bytes) -> None:
    """Repeated keys, escapes, NaN, a top level that is no object, a missing ts or POP: no shape."""
    assert None is learn(raw)


def test_learning_stops_while_shapes_do_not_pay_for_themselves() -> None:
    """Heartbeats that never repeat a shape are learned from rarely: once, then once per MISSES_PER_LEARNING."""
    shapes = Shapes()
    rand = random.Random(5)
    count = 2 * MISSES_PER_LEARNING
    for index in range(count):
        metrics = {f"m{rand.randrange(10**9)}": 1.0, "cpu_percent": float(index)}
        item = heartbeat("ams1", seq=index, ts=BASE_TS + index, metrics=metrics)
        if shapes.read(item.raw) is None:
            shapes.learn(item.raw)

    assert (0, count, 3) == (shapes.hits, shapes.misses, shapes.learned)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), documents, st.integers(0, 2))
def test_a_chunk_read_at_once_is_read_as_each_heartbeat_alone(
    data: st.DataObject, first: dict[str, Any], style: int
) -> None:
    """Reading a request's heartbeats together (their numbers parsed in one go) gives what reading each alone gives."""
    docs = [
        first,
        *(renumbered(first, data.draw) | {"ts": data.draw(timestamps)} for _ in range(4)),
        data.draw(documents),
    ]
    items = [spooled(doc, style) for doc in data.draw(st.permutations(docs))]
    items.insert(2, Pending("bad-number", spooled(first, style).raw.replace(b": 0", b": 00").replace(b":0", b":00")))
    alone, together = Preparer(), Preparer()
    for item in items[:1]:  # both learn from the same first heartbeat
        outcome(alone.prepare, item)
        together.prepare_all([item])

    expected = [outcome(alone.prepare, item) for item in items]
    got = together.prepare_all(items)

    assert expected == [
        outcome(lambda _, p=prepared: _raise_none(p), item) for item, prepared in zip(items, got, strict=True)
    ]


def _raise_none(prepared: Prepared | None) -> Prepared:
    if prepared is None:
        raise ValueError("not preparable")
    return prepared


def test_a_capture_that_is_no_number_costs_only_its_own_heartbeat_in_a_chunk() -> None:
    """One heartbeat with a number json refuses, read with others at once: it alone is unpreparable."""
    items = [heartbeat("ams1", seq=i, ts=BASE_TS + 10 * i, metrics={"cpu_percent": 1.5, "load1": 2}) for i in range(4)]
    bad = Pending("bad", items[2].raw.replace(b'"load1": 2', b'"load1": 02'))
    preparer = Preparer()

    got = preparer.prepare_all([items[0], items[1], bad, items[3]])

    assert [True, True, False, True] == [prepared is not None for prepared in got]
    assert [item.id for item in (items[0], items[1], items[3])] == [p.id for p in got if p is not None]
    assert all(p.read is not None for p in got if p is not None)
