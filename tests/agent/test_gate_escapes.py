"""The gate's known escapes, each tried in every position a heartbeat allows, with generated variants.

Non-ASCII digits, addresses written with underscores or dashes, unknown collector
names, echoed keys, repeated JSON keys, vendor tokens, and look-alike or invisible
characters inside an address.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent import heartbeat, jsondoc
from agent.backlog import BacklogScrubber
from agent.errors import ScrubRejected
from agent.heartbeat import COLLECTOR_NAME, Heartbeat
from agent.sample import MetricKind, MetricSpec, Pending, Sample
from agent.scrubber import Allowlist, check, describe, scrub
from agent.settings import SpoolSettings
from agent.spool import Spool
from agent.token_prefixes import TOKEN_PREFIXES
from tests.conftest import RunAgent

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "heartbeat.schema.json").read_text())
ALLOWED = Allowlist(
    [
        MetricSpec("cpu_percent", MetricKind.GAUGE, "CPU"),
        MetricSpec("load1", MetricKind.GAUGE, "Load"),
        MetricSpec("disk_used_percent", MetricKind.GAUGE, "Disk", labels=("mount",)),
    ],
    collectors=["cpu", "disk"],
)
SENSITIVE = {"ip_address", "email_address", "secret_token"}
NON_ASCII_DIGITS = [chr(c) for c in range(128, 0x110000) if unicodedata.category(chr(c)) == "Nd"]
_settings = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def clean_doc() -> dict[str, Any]:
    return heartbeat.build(
        pop="ams1",
        seq=3,
        edition="community",
        version="1.4.2",
        interval=10.0,
        samples=[Sample("cpu_percent", 1.5), Sample("load1", 0.5), Sample.of("disk_used_percent", 5.0, mount="/srv")],
        collectors={"cpu": "ok", "disk": "ok"},
        now_ns=1_795_000_000_123_000_000,
    )


Setter = Callable[[dict[str, Any], str], None]

# Every place a string can sit in a heartbeat: each field, each key, inside an unknown object.
POSITIONS: dict[str, Setter] = {
    "pop": lambda d, v: d.update(pop=v),
    "id": lambda d, v: d.update(id=v),
    "ts": lambda d, v: d.update(ts=v),
    "agent_version": lambda d, v: d.update(agent_version=v),
    "edition": lambda d, v: d.update(edition=v),
    "schema": lambda d, v: d.update(schema=v),
    "metric name": lambda d, v: d["metrics"].update({v: 1}),
    "metric value": lambda d, v: d["metrics"].update(cpu_percent=v),
    "series name": lambda d, v: d["series"][0].update(name=v),
    "label value": lambda d, v: d["series"][0]["labels"].update(mount=v),
    "label key": lambda d, v: d["series"][0]["labels"].update({v: "/"}),
    "collector key": lambda d, v: d["collectors"].update({v: "ok"}),
    "collector value": lambda d, v: d["collectors"].update(cpu=v),
    "top-level key": lambda d, v: d.update({v: 1}),
    "nested value": lambda d, v: d.update(extra={"nested": [{"deep": v}]}),
    "nested key": lambda d, v: d.update(extra={"nested": [{v: 1}]}),
}
KEY_POSITIONS = ["metric name", "label key", "collector key", "top-level key", "nested key"]


def paths_name_only_declared_keys(findings: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> bool:
    """Whether every path is made of declared names and positions only, so it repeats nothing rejected."""
    names = "|".join(re.escape(name) for name in sorted(ALLOWED.printable, key=len, reverse=True))
    grammar = re.compile(rf"\$(?:\.(?:{names})|\[[0-9]+\]|\[key\])*")
    return all(grammar.fullmatch(path) for path, _ in findings)


def rejected(doc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    with pytest.raises(ScrubRejected) as caught:
        scrub(doc, ALLOWED)
    return caught.value.findings


def schema_accepts(doc: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)


def model_accepts(doc: dict[str, Any]) -> bool:
    try:
        Heartbeat.model_validate(doc)
    except ValidationError:
        return False
    return True


# -- 1. digits from other scripts ---------------------------------------------------------

# Each patterned string with a digit in it, and where it goes.
_DIGIT_FIELDS: dict[str, tuple[str, Setter]] = {
    "ts": ("2026-11-22T07:00:00.123Z", POSITIONS["ts"]),
    "agent_version": ("1.4.2", POSITIONS["agent_version"]),
    "pop": ("ams1", POSITIONS["pop"]),
    "id": ("01900000-0000-7000-8000-000000000000", POSITIONS["id"]),
    "metric name": ("load1", lambda d, v: d["metrics"].update({v: d["metrics"].pop("load1")})),
    "series name": ("disk1", POSITIONS["series name"]),
    "label value": ("/srv/data-01", POSITIONS["label value"]),
    "collector key": ("cpu2", POSITIONS["collector key"]),
}


@st.composite
def _respelt_digit(draw: st.DrawFn) -> tuple[str, str, Setter]:
    name = draw(st.sampled_from(sorted(_DIGIT_FIELDS)))
    value, setter = _DIGIT_FIELDS[name]
    places = [i for i, char in enumerate(value) if char.isdigit()]
    place = draw(st.sampled_from(places))
    digit = draw(st.sampled_from([d for d in NON_ASCII_DIGITS if unicodedata.decimal(d) == int(value[place])]))
    return name, value[:place] + digit + value[place + 1 :], setter


@_settings
@given(_respelt_digit())
def test_digits_of_other_scripts_are_refused_by_model_schema_and_scrubber(case: tuple[str, str, Setter]) -> None:
    """One digit written in another script makes the model, the published schema and the scrubber all refuse."""
    _, value, setter = case
    doc = clean_doc()
    setter(doc, value)
    assert (False, False) == (model_accepts(doc), schema_accepts(doc))
    assert paths_name_only_declared_keys(rejected(doc))


_PATTERN_TEXT = st.text(st.sampled_from([*"0123456789az-._+:TZ/", *NON_ASCII_DIGITS[:40], "\uff10", "\u0660"]))


@_settings
@given(field=st.sampled_from(["ts", "agent_version", "pop", "id", "label value"]), value=_PATTERN_TEXT)
def test_model_and_published_schema_agree_on_every_patterned_string(field: str, value: str) -> None:
    """Whatever string a patterned field holds, the model and the published schema give the same verdict."""
    doc = clean_doc()
    POSITIONS[field](doc, value)
    assert model_accepts(doc) == schema_accepts(doc)


def test_no_pattern_in_the_schema_uses_a_unicode_class() -> None:
    """The published patterns spell their classes out ([0-9]), since \\d, \\w and \\s differ between engines."""
    patterns = re.findall(r'"pattern": "([^"]*)"', json.dumps(SCHEMA))
    assert patterns
    assert [] == [pattern for pattern in patterns if re.search(r"\\\\[dDwWsSbB]", pattern)]


# -- 2 and 7. addresses written with underscores or dashes --------------------------------


def _respelt_v4(address: ipaddress.IPv4Address, separator: str) -> str:
    return separator.join(str(octet) for octet in address.packed)


def _respelt_v6(address: ipaddress.IPv6Address, separator: str, compressed: bool) -> str:
    if not compressed:
        return address.exploded.replace(":", separator)
    text = str(address)
    if "." in text or len([group for group in text.split(":") if group]) < 2:
        # "::" and "::1" written "--" and "--1" are indistinguishable from a word's dashes.
        return address.exploded.replace(":", separator)
    return text.replace(":", separator)


_RESPELT_ADDRESSES = st.one_of(
    st.builds(_respelt_v4, st.ip_addresses(v=4), st.sampled_from(["_", "-", "/", "_.", "-_"]).map(lambda s: s[-1])),
    st.builds(
        lambda a, seps: "".join(
            part + (seps[i % len(seps)] if i < 3 else "") for i, part in enumerate(str(a).split("."))
        ),
        st.ip_addresses(v=4),
        st.sampled_from(["._-", "_.", "-.", "/_", "_-"]),
    ),
    st.builds(_respelt_v6, st.ip_addresses(v=6), st.sampled_from(["_", "-"]), st.booleans()),
    st.ip_addresses(v=6).map(lambda a: a.exploded.replace(":", "-") + ".ipv6-literal.net"),
)
_WRAPPINGS = st.sampled_from(["{}", "ip_{}", "node_{}_export", "/mnt/{}", "hosts.{}.cpu", "x-{}", "{}-1"])


@_settings
@given(address=_RESPELT_ADDRESSES, wrapping=_WRAPPINGS, where=st.sampled_from(sorted(POSITIONS)))
# "node_" ends in hex letters: "de__" once took the doubled underscore the address starts with.
@example(address="__ffff_0_0", wrapping="node_{}_export", where="agent_version")
def test_addresses_with_underscores_or_dashes_are_refused_anywhere(address: str, wrapping: str, where: str) -> None:
    """IPv4 and IPv6 written with underscores, dashes, slashes or a mix are refused in every position."""
    doc = clean_doc()
    POSITIONS[where](doc, wrapping.format(address))
    findings = rejected(doc)
    assert "ip_address" in {code for _, code in findings}
    assert paths_name_only_declared_keys(findings)


# -- 3. collector names ---------------------------------------------------------------------


@_settings
@given(name=st.from_regex(COLLECTOR_NAME, fullmatch=True).filter(lambda n: n not in ALLOWED.collectors))
@example(name="id")  # a word the schema declares, found once by chance
def test_collector_names_must_be_the_builds(name: str) -> None:
    """A `collectors` key that is not a collector of this build is refused, by position unless the schema names it."""
    doc = clean_doc()
    doc["collectors"][name] = "ok"
    # A word the schema declares (`id`, `ts`, ...) may be printed; any other key only by its position.
    path = f"$.collectors.{name}" if name in ALLOWED.printable else "$.collectors[2]"
    assert [(path, "unknown_collector")] == [f for f in rejected(doc) if f[1] == "unknown_collector"]


# -- 4. findings never echo a rejected key ---------------------------------------------------


@_settings
@given(
    key=st.text(min_size=1, max_size=40).filter(lambda k: k not in ALLOWED.printable),
    where=st.sampled_from(KEY_POSITIONS),
)
def test_findings_name_undeclared_keys_by_position_only(key: str, where: str) -> None:
    """Any undeclared key, in any key position, appears in findings as a position, never as text."""
    doc = clean_doc()
    POSITIONS[where](doc, key)
    findings = rejected(doc)
    assert paths_name_only_declared_keys(findings)
    assert all(re.fullmatch(r"[a-z_]+", code) for _, code in findings)


def test_declared_names_are_printed_as_they_are() -> None:
    """Keys the build declared stay readable in a finding."""
    doc = clean_doc()
    doc["metrics"]["cpu_percent"] = "high"
    doc["collectors"]["disk"] = "exploded"
    assert {("$.metrics.cpu_percent", "not_a_number"), ("$.collectors.disk", "value_not_allowed")} <= set(rejected(doc))


# -- 5. repeated JSON keys --------------------------------------------------------------------

_OBJECTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "$": lambda d: d,
    "$.metrics": lambda d: d["metrics"],
    "$.series[0]": lambda d: d["series"][0],
    "$.series[0].labels": lambda d: d["series"][0]["labels"],
    "$.collectors": lambda d: d["collectors"],
}
_FIRST_VALUES = st.sampled_from(["10.0.0.7", "10_0_0_7", "alice@example.com", "oops", 1, None, {"deep": "x"}])


def text_with_repeated_key(doc: dict[str, Any], where: str, key: str, first: Any) -> str:
    """``doc`` as JSON in which the object at ``where`` holds ``key`` twice: ``first``, then its own value."""
    target = _OBJECTS[where](doc)
    inner = json.dumps(target)[1:]
    crafted = "{" + json.dumps(key) + ": " + json.dumps(first) + ", " + inner
    if where == "$":
        return crafted
    holder = copy.deepcopy(doc)
    placeholder = "@@repeated@@"
    parent_path, _, last = where.rpartition(".")
    parent = _OBJECTS[parent_path](holder) if parent_path in _OBJECTS else holder
    if last == "series[0]":
        holder["series"][0] = placeholder
    else:
        parent[last] = placeholder
    return json.dumps(holder).replace(json.dumps(placeholder), crafted)


@_settings
@given(data=st.data(), where=st.sampled_from(sorted(_OBJECTS)), first=_FIRST_VALUES)
def test_a_repeated_key_anywhere_is_refused(data: st.DataObject, where: str, first: Any) -> None:
    """An object holding one key twice is refused whatever the values, at the object's own path."""
    doc = clean_doc()
    key = data.draw(st.sampled_from(sorted(_OBJECTS[where](doc))))
    text = text_with_repeated_key(doc, where, key, first)
    parsed = jsondoc.loads(text)
    assert parsed == doc  # the parser kept the last value, as json does...
    assert (where, "duplicate_key") in set(check(parsed, ALLOWED))  # ...and the gate saw the first


def test_a_spooled_file_with_a_repeated_key_is_refused_by_the_second_scrub() -> None:
    """A foreign heartbeat in the spool whose bytes repeat a key is refused when it is scrubbed again."""
    doc = clean_doc()
    raw = text_with_repeated_key(doc, "$", "pop", "10.0.0.7").encode()
    scrubber = BacklogScrubber(ALLOWED)  # nothing vouched for: every spooled heartbeat is foreign
    passed, refused = scrubber.check([Pending(doc["id"], raw)])
    assert ([], {doc["id"]: "scrub_duplicate_key"}) == (passed, refused)


def test_a_file_with_a_repeated_key_dropped_into_the_spool_is_never_handed_to_a_sink(tmp_path: Path) -> None:
    """A foreign file in spool/pending whose bytes repeat a key reaches the second scrub and is refused there."""
    doc = clean_doc()
    raw = text_with_repeated_key(doc, "$.collectors", "cpu", "10.0.0.7").encode()
    with Spool(tmp_path / "spool", SpoolSettings(), sinks=["central"]) as spool:
        spool.put(doc["id"], raw)  # as another process, or a hand, would leave it
    scrubber = BacklogScrubber(ALLOWED)
    with Spool(tmp_path / "spool", SpoolSettings(), sinks=["central"]) as spool:
        batch = spool.batch("central", 100, 1 << 20)
        passed, refused = scrubber.check(batch)
    assert ([doc["id"]], [], {doc["id"]: "scrub_duplicate_key"}) == ([p.id for p in batch], passed, refused)


# -- 6. vendor tokens ---------------------------------------------------------------------------


@st.composite
def _vendor_tokens(draw: st.DrawFn) -> str:
    entry = draw(st.sampled_from(TOKEN_PREFIXES))
    tail = draw(st.from_regex(rf"[{entry.tail}]{{{entry.min_tail},{entry.min_tail + 30}}}", fullmatch=True))
    return entry.prefix + tail


@_settings
@given(token=_vendor_tokens(), where=st.sampled_from(sorted(POSITIONS)), glue=st.sampled_from(["{}", "x {}", "={}"]))
def test_vendor_tokens_are_refused_anywhere(token: str, where: str, glue: str) -> None:
    """A token of any well-known prefix is refused in every position, and never repeated."""
    doc = clean_doc()
    POSITIONS[where](doc, glue.format(token))
    findings = rejected(doc)
    assert {code for _, code in findings} & SENSITIVE
    assert token not in json.dumps(describe(findings))
    assert paths_name_only_declared_keys(findings)


# -- beyond the seven: what a reader takes for an address ---------------------------------------

_LOOKALIKES = [
    "10\u200b.0.0.7",  # zero-width space
    "10.0\u00ad.0.7",  # soft hyphen
    "10.0.0\u2060.7",  # word joiner
    "1\u03020.0.0.7",  # combining circumflex
    "\u0661\u0660.\u0660.\u0660.\u0667",  # Arabic-Indic digits
    "\u0967\u0966.\u0966.\u0966.\u096d",  # Devanagari digits
    "\uff11\uff10\uff0e\uff10\uff0e\uff10\uff0e\uff17",  # full width
    "10\u30020\u30020\u30027",  # ideographic full stop
    "10\u20130\u20130\u20137",  # en dash
    "10%2E0%2E0%2E7",  # percent-encoded dots
    "10%252E0%252E0%252E7",  # twice
    "2001\u02d0db8\u02d0\u02d01",  # modifier-letter colons
    "fe80\ufe13\ufe131",  # presentation-form colons
    "10.0\x00.0.7",  # a NUL inside
    "10.0.0.7\U000e0041",  # tag character after
]


@_settings
@given(value=st.sampled_from(_LOOKALIKES), where=st.sampled_from(sorted(POSITIONS)))
def test_lookalike_and_invisible_characters_do_not_hide_an_address(value: str, where: str) -> None:
    """Invisible characters, other scripts' digits and look-alike separators inside an address are seen through."""
    doc = clean_doc()
    POSITIONS[where](doc, value)
    findings = rejected(doc)
    assert "ip_address" in {code for _, code in findings}
    assert paths_name_only_declared_keys(findings)


# -- the command line, as an operator runs it --------------------------------------------------


def test_agent_scrub_never_echoes_a_rejected_key(run_agent: RunAgent, tmp_path: Path) -> None:
    """`agent scrub` refuses keys holding addresses and unknown collectors, and its stderr holds none of them."""
    doc = json.loads(run_agent("--once").stdout)
    doc["metrics"]["ip_10_0_0_7"] = 1
    doc["collectors"]["node_198_51_100_4"] = "ok"
    doc["collectors"]["shell"] = "ok"
    doc["note_2001_db8__7"] = 1
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    result = run_agent("scrub", str(path))
    assert 1 == result.returncode
    assert {"ip_address", "undeclared_metric", "unknown_collector", "unknown_field"} <= set(
        line.rsplit(": ", 1)[1] for line in result.stderr.splitlines()
    )
    for part in ("10_0_0_7", "ip_1", "198_51", "node", "shell", "note", "2001", "db8"):
        assert part not in result.stderr + result.stdout


def test_agent_scrub_and_enqueue_refuse_a_repeated_key(run_agent: RunAgent, tmp_path: Path) -> None:
    """A document whose `pop` appears twice, first as an address, is refused by `scrub` and by `enqueue`."""
    doc = json.loads(run_agent("--once").stdout)
    path = tmp_path / "doc.json"
    path.write_text('{"pop": "10.0.0.7", ' + json.dumps(doc)[1:])
    scrubbed = run_agent("scrub", str(path))
    enqueued = run_agent("enqueue", str(path))
    assert (1, 1) == (scrubbed.returncode, enqueued.returncode)
    assert "$: duplicate_key" in scrubbed.stderr
    assert "10.0.0.7" not in scrubbed.stderr + scrubbed.stdout + enqueued.stderr + enqueued.stdout
    assert "" == run_agent("export").stdout


def test_agent_scrub_accepts_every_collector_this_build_registers(run_agent: RunAgent) -> None:
    """The output of `agent --once`, every registered collector included, passes `agent scrub`."""
    once = run_agent("--once")
    assert 0 == run_agent("scrub", "-", input=once.stdout).returncode
