"""The scrubber: the one gate every heartbeat passes before it is printed, spooled or sent.

Privacy by construction. The allowlist is the main control: a heartbeat may hold
only the fields the ``pop-heartbeat/1`` model declares, metric names some
collector declared, numbers as metric values and a few tightly patterned strings.
On top of that a tripwire checks every string in the document, keys included,
for an IP address, an e-mail address or a secret-looking token. A document that
fails anything is rejected whole, never masked and passed on; the findings name
JSON paths and fixed reason codes only, never the offending value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from agent.errors import ScrubRejected
from agent.heartbeat import HEARTBEAT_ID, METRIC_NAME, TIMESTAMP, Heartbeat
from agent.privacy import find_sensitive
from agent.sample import MetricSpec

Finding = tuple[str, str]  # (JSON path, reason code)

_SAFE_KEY = re.compile(METRIC_NAME)
# Ids and timestamps are new in every heartbeat, so the verdict cache below never
# helps them; their fixed shapes hold no dots, colons, @ or long runs, so the
# tripwire has nothing to find in them (a number hidden in their digits is what
# only the allowlist's typing can make harmless, for them as for any number).
_FIXED_SHAPES = re.compile(f"(?:{HEARTBEAT_ID[1:-1]})|(?:{TIMESTAMP[1:-1]})")
_CLEAN_CACHE_SIZE = 4096
_clean: set[str] = set()  # strings the tripwire passed: metric names, mounts, codes recur every tick
_PYDANTIC_CODES = {
    "extra_forbidden": "unknown_field",
    "missing": "missing_field",
    "string_pattern_mismatch": "pattern_mismatch",
    "literal_error": "value_not_allowed",
    "finite_number": "not_finite",
    "too_long": "too_many_items",
    "model_type": "not_an_object",
    "dict_type": "not_an_object",
    "list_type": "not_a_list",
    "string_type": "not_a_string",
    "int_type": "not_a_number",
    "float_type": "not_a_number",
}


def scrub(doc: Any, allowed: Mapping[str, MetricSpec]) -> dict[str, Any]:
    """Return ``doc`` unchanged if it may leave the POP, else raise :class:`ScrubRejected`.

    ``allowed`` maps every declared metric name to its declaration.
    """
    findings = sorted(set(check(doc, allowed)))
    if findings:
        raise ScrubRejected(tuple(findings))
    accepted: dict[str, Any] = doc
    return accepted


def check(doc: Any, allowed: Mapping[str, MetricSpec]) -> Iterator[Finding]:
    """Every finding against ``doc``: tripwire hits, schema violations, undeclared metrics."""
    if not isinstance(doc, dict):
        yield ("$", "not_an_object")
        return
    yield from _tripwire(doc, "$")
    try:
        Heartbeat.model_validate(doc)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False, include_context=False):
            yield (_path(doc, error["loc"]), _PYDANTIC_CODES.get(error["type"], error["type"]))
    yield from _undeclared(doc, allowed)


def sensitive(text: str) -> str | None:
    """The tripwire's verdict on one string, remembering clean ones (never a sensitive one)."""
    if text in _clean or _FIXED_SHAPES.fullmatch(text):
        return None
    reason = find_sensitive(text)
    if reason is None and len(text) <= 256:
        if len(_clean) >= _CLEAN_CACHE_SIZE:
            _clean.clear()
        _clean.add(text)
    return reason


def _tripwire(value: Any, path: str) -> Iterator[Finding]:
    if isinstance(value, str):
        reason = sensitive(value)
        if reason:
            yield (path, reason)
    elif isinstance(value, dict):
        for index, (key, item) in enumerate(value.items()):
            key_path = _join(path, key, index)
            if isinstance(key, str) and (reason := sensitive(key)):
                yield (key_path, reason)
            yield from _tripwire(item, key_path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _tripwire(item, f"{path}[{index}]")


def _undeclared(doc: dict[str, Any], allowed: Mapping[str, MetricSpec]) -> Iterator[Finding]:
    metrics = doc.get("metrics")
    if isinstance(metrics, dict):
        for index, name in enumerate(metrics):
            spec = allowed.get(name) if isinstance(name, str) else None
            if spec is None or spec.labels:
                yield (_join("$.metrics", name, index), "undeclared_metric")
    series = doc.get("series")
    if isinstance(series, list):
        for index, item in enumerate(series):
            if not isinstance(item, dict):
                continue
            name, labels = item.get("name"), item.get("labels")
            spec = allowed.get(name) if isinstance(name, str) else None
            if spec is None:
                yield (f"$.series[{index}].name", "undeclared_metric")
            elif isinstance(labels, dict) and not set(labels) <= set(spec.labels):
                yield (f"$.series[{index}].labels", "undeclared_label")


def _join(path: str, key: Any, index: int) -> str:
    """Append a key to a JSON path, by position when the key itself is not safe to print."""
    if isinstance(key, str) and _SAFE_KEY.match(key) and sensitive(key) is None:
        return f"{path}.{key}"
    return f"{path}{{#{index}}}"


def _path(doc: Any, loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a JSON path, walking ``doc`` to index unsafe keys."""
    path, node = "$", doc
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        if part == "[key]":
            path += "[key]"
            continue
        if part == "schema_":
            part = "schema"
        if part == "class_":
            part = "class"
        if isinstance(node, dict):
            keys = list(node)
            index = keys.index(part) if part in node else len(keys)
            path = _join(path, part, index)
            node = node.get(part)
        else:
            path = _join(path, part, 0)
            node = None
    return path


def describe(findings: tuple[Finding, ...]) -> list[str]:
    """Findings as ``path: reason`` lines, safe to print and log."""
    return [f"{path}: {reason}" for path, reason in findings]
