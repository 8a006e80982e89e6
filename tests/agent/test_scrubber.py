"""The scrubber at document level: allowlist first, tripwire everywhere, findings that never leak."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import heartbeat
from agent.errors import ScrubRejected
from agent.identity import pop_id_problem
from agent.sample import MetricKind, MetricSpec, Sample
from agent.scrubber import Allowlist, check, describe, scrub
from collectors.disk import representable

ALLOWED = Allowlist(
    [
        MetricSpec("cpu_percent", MetricKind.GAUGE, "CPU"),
        MetricSpec("requests_total", MetricKind.COUNTER, "Requests"),
        MetricSpec("disk_used_percent", MetricKind.GAUGE, "Disk", labels=("mount",)),
    ],
    collectors=["cpu", "disk"],
)


def clean_doc(**overrides: Any) -> dict[str, Any]:
    doc = heartbeat.build(
        pop="ams1",
        seq=3,
        edition="community",
        version="0.1.0",
        interval=10.0,
        samples=[
            Sample("cpu_percent", 1.5),
            Sample("requests_total", 10),
            Sample.of("disk_used_percent", 5.0, mount="/"),
        ],
        collectors={"cpu": "ok", "disk": "ok"},
    )
    doc.update(overrides)
    return doc


def codes(doc: Any) -> set[str]:
    return {code for _, code in check(doc, ALLOWED)}


def test_clean_heartbeat_is_accepted_unchanged() -> None:
    """A heartbeat built by the agent passes and comes back as it went in."""
    doc = clean_doc()
    assert scrub(copy.deepcopy(doc), ALLOWED) == doc


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(note="hello"), ("$[11]", "unknown_field")),
        (lambda d: d["metrics"].update(vault_names=3), ("$.metrics[2]", "undeclared_metric")),
        (lambda d: d["collectors"].update(shell="ok"), ("$.collectors[2]", "unknown_collector")),
        (lambda d: d["metrics"].update(cpu_percent="12"), ("$.metrics.cpu_percent", "not_a_number")),
        (lambda d: d["metrics"].update(cpu_percent=True), ("$.metrics.cpu_percent", "not_a_number")),
        (lambda d: d["metrics"].update(cpu_percent=float("nan")), ("$.metrics.cpu_percent", "not_finite")),
        (lambda d: d.update(pop="Ams 1"), ("$.pop", "pattern_mismatch")),
        (lambda d: d.pop("seq"), ("$.seq", "missing_field")),
        (lambda d: d.update(edition="enterprise"), ("$.edition", "value_not_allowed")),
        (lambda d: d["series"][0]["labels"].update(user="bob"), ("$.series[0].labels[1]", "unknown_field")),
        (lambda d: d["series"][0].update(name="cpu_percent"), ("$.series[0].labels", "undeclared_label")),
        (lambda d: d["collectors"].update(cpu="exploded"), ("$.collectors.cpu", "value_not_allowed")),
    ],
)
def test_allowlist_findings(mutate: Any, expected: tuple[str, str]) -> None:
    """Anything the schema or the collectors did not declare is a finding with a JSON path and a code."""
    doc = clean_doc()
    mutate(doc)
    with pytest.raises(ScrubRejected) as caught:
        scrub(doc, ALLOWED)
    assert expected in caught.value.findings


def test_a_plain_mapping_of_metrics_allows_no_collector() -> None:
    """Without an :class:`Allowlist` no collector name is known, so every one is refused."""
    expected = [("$.collectors[0]", "unknown_collector"), ("$.collectors[1]", "unknown_collector")]
    assert expected == [finding for finding in check(clean_doc(), dict(ALLOWED)) if finding[1] == "unknown_collector"]


def test_not_an_object() -> None:
    """A document that is not a JSON object is rejected at the root."""
    assert list(check([1, 2], ALLOWED)) == [("$", "not_an_object")]


# -- the tripwire, in every position of the document ---------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
renderings = st.one_of(
    ipv4,
    ipv4.map(lambda a: f"{a}:443"),
    ipv4.map(lambda a: ".".join(f"{int(o):03d}" for o in a.split("."))),
    ipv6,
    ipv6.map(str.upper),
    ipv6.map(lambda a: f"[{a}]:8443"),
    ipv6.map(lambda a: f"http://[{a}]/vault"),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.just("fe80::1%eth0"),
    st.just("X-Forwarded-For: 203.0.113.9, 198.51.100.2"),
    st.just("client alice@example.com logged in"),
    st.just("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    st.just("-----BEGIN PRIVATE KEY-----"),
    st.just("token 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
)

POSITIONS = [
    lambda d, v: d.update(pop=v),
    lambda d, v: d.update(id=v),
    lambda d, v: d.update(ts=v),
    lambda d, v: d.update(agent_version=v),
    lambda d, v: d.update(edition=v),
    lambda d, v: d.update(schema=v),
    lambda d, v: d["metrics"].update({v: 1}),
    lambda d, v: d["metrics"].update(cpu_percent=v),
    lambda d, v: d["series"][0]["labels"].update(mount=v),
    lambda d, v: d["series"][0].update(name=v),
    lambda d, v: d["collectors"].update({v: "ok"}),
    lambda d, v: d["collectors"].update(cpu=v),
    lambda d, v: d.update({v: 1}),
    lambda d, v: d.update(extra={"nested": [{"deep": v}]}),
    lambda d, v: d["series"].append({"name": "disk_used_percent", "labels": {"mount": "/"}, "value": v}),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=renderings, where=st.sampled_from(range(len(POSITIONS))), prefix=st.sampled_from(["", "x ", "/"]))
def test_sensitive_value_anywhere_is_rejected_and_never_echoed(value: str, where: int, prefix: str) -> None:
    """An address, e-mail or token in any position rejects the whole document, and no finding repeats it."""
    doc = clean_doc()
    POSITIONS[where](doc, prefix + value)
    with pytest.raises(ScrubRejected) as caught:
        scrub(doc, ALLOWED)
    found = {code for _, code in caught.value.findings}
    assert found & {"ip_address", "email_address", "secret_token"}
    rendered = json.dumps(describe(caught.value.findings))
    for part in (value, value.upper(), value.lower()):
        assert part not in rendered


@settings(max_examples=200)
@given(
    cpu=st.floats(min_value=0, max_value=100),
    requests=st.integers(min_value=0, max_value=2**53),
    # The disk collector skips mounts that would trip the tripwire (/10/0/0/7), so they are not its output.
    mount=st.from_regex(r"\A/([a-z0-9_-]{1,12}(/[a-z0-9._-]{1,12}){0,3})?\Z").filter(representable),
    # The settings refuse a pop id the tripwire trips ("0--0" reads as "0::0"), so it is not the agent's output.
    pop=st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z").filter(lambda pop: pop_id_problem(pop) is None),
    seq=st.integers(min_value=0, max_value=2**40),
    now_ns=st.integers(min_value=0, max_value=4_000_000_000 * 10**9),
)
def test_agent_heartbeats_are_never_rejected(
    cpu: float, requests: int, mount: str, pop: str, seq: int, now_ns: int
) -> None:
    """No false positives on the agent's own output: ids, timestamps, versions, pop ids, mounts, numbers."""
    doc = heartbeat.build(
        pop=pop,
        seq=seq,
        edition="commercial",
        version="0.1.0",
        interval=0.1,
        samples=[
            Sample("cpu_percent", cpu),
            Sample("requests_total", requests),
            Sample.of("disk_used_percent", cpu, mount=mount),
        ],
        collectors={"cpu": "ok", "disk": "busy"},
        now_ns=now_ns,
    )
    assert codes(doc) == set()
