"""The scrubber: the one gate every heartbeat passes before it is printed, spooled or sent.

Privacy by construction. The allowlist is the main control: a heartbeat may hold
only the fields the ``pop-heartbeat/1`` model declares, metric names some
collector declared, the names of this build's collectors, numbers as metric
values and a few tightly patterned strings, and no object may repeat a key. On
top of that a tripwire checks every string in the document, keys included, for an
IP address, an e-mail address or a secret-looking token. A document that fails
anything is rejected whole, never masked and passed on; the findings hold JSON
paths and fixed reason codes only, and a path names a key only if the schema or
the build declared it (any other by its position), so nothing rejected is repeated.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.errors import ScrubRejected
from agent.heartbeat import HEARTBEAT_ID, TIMESTAMP, Heartbeat, Labels, Series
from agent.jsondoc import RepeatedKeys
from agent.privacy import find_sensitive
from agent.sample import MetricSpec

Finding = tuple[str, str]  # (JSON path, reason code)


def _field_names(*models: type[BaseModel]) -> frozenset[str]:
    return frozenset(field.alias or name for model in models for name, field in model.model_fields.items())


# The names the schema itself declares: a finding may print these as they are.
_SCHEMA_NAMES = _field_names(Heartbeat, Series, Labels)


class Allowlist(dict[str, MetricSpec]):
    """What a heartbeat may hold by name: declared metrics (this mapping) and collector names.

    ``collectors`` names the collectors whose results may appear under ``collectors``:
    for a heartbeat this process builds, the ones it runs; for a foreign document,
    every collector this build has registered. A plain mapping of metrics, without
    this class, allows no collector at all.
    """

    def __init__(self, metrics: Iterable[MetricSpec] = (), collectors: Collection[str] = ()) -> None:
        super().__init__((spec.name, spec) for spec in metrics)
        self.collectors = frozenset(collectors)
        # Names this build declared, and only those, may appear in a finding's path.
        self.printable = _SCHEMA_NAMES | self.keys() | self.collectors


# Ids and timestamps are new in every heartbeat, so the verdict cache below never
# helps them; their fixed shapes hold no dots, colons, @ or long runs, so the
# tripwire has nothing to find in them (a number hidden in their digits is what
# only the allowlist's typing can make harmless, for them as for any number).
_FIXED_SHAPES = re.compile(f"(?:{HEARTBEAT_ID[1:-1]})|(?:{TIMESTAMP[1:-1]})")
_SCALARS = (int, float, type(None))  # nothing for the tripwire in these (bool is an int)
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
    """Every finding against ``doc``: tripwire hits, repeated keys, schema violations, undeclared names.

    A path names a key only if the schema or this build declared it; any other key
    is given by its position among its object's keys (``$.metrics[3]``), so that no
    finding repeats any part of what it rejects.
    """
    if not isinstance(doc, dict):
        yield ("$", "not_an_object")
        return
    printable = allowed.printable if isinstance(allowed, Allowlist) else _SCHEMA_NAMES | allowed.keys()
    if not _clean_throughout(doc):
        yield from _tripwire(doc, "$", printable)  # the walk that names where: only for what it will find
    try:
        Heartbeat.model_validate(doc)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False, include_context=False):
            yield (_path(doc, error["loc"], printable), _PYDANTIC_CODES.get(error["type"], error["type"]))
    yield from _undeclared(doc, allowed, printable)


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


def _clean_throughout(value: Any) -> bool:
    """Whether the tripwire finds nothing anywhere in ``value``: the walk of every heartbeat, with no paths built.

    Iterative, and strings the tripwire already passed are skipped by set lookups (a
    whole object's keys at once), so a heartbeat of known names costs a few
    microseconds. ``False`` sends the document to the walk that names where.
    """
    clean = _clean
    stack = [value]
    while stack:
        node = stack.pop()
        children: Iterable[Any]
        if type(node) is dict:
            if not clean.issuperset(node) and not all(isinstance(key, str) and sensitive(key) is None for key in node):
                return False
            children = node.values()
        elif type(node) is list:
            children = node
        elif isinstance(node, str):
            if sensitive(node) is not None:
                return False
            continue
        elif isinstance(node, dict | list):  # a RepeatedKeys mark (or another subclass): the careful walk decides
            return False
        else:
            continue
        for item in children:
            if type(item) is str:
                if item not in clean and sensitive(item) is not None:
                    return False
            elif not isinstance(item, _SCALARS):
                stack.append(item)
    return True


def _tripwire(value: Any, path: str, printable: Collection[str]) -> Iterator[Finding]:
    if isinstance(value, str):
        reason = sensitive(value)
        if reason:
            yield (path, reason)
    elif isinstance(value, dict):
        if isinstance(value, RepeatedKeys):
            # The parser kept the last value only; what the document also holds was never judged.
            yield (path, "duplicate_key")
        for index, (key, item) in enumerate(value.items()):
            key_path = _join(path, key, index, printable)
            if isinstance(key, str) and (reason := sensitive(key)):
                yield (key_path, reason)
            yield from _tripwire(item, key_path, printable)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _tripwire(item, f"{path}[{index}]", printable)


def _undeclared(
    doc: dict[str, Any], allowed: Mapping[str, MetricSpec], printable: Collection[str]
) -> Iterator[Finding]:
    metrics = doc.get("metrics")
    if isinstance(metrics, dict):
        for index, name in enumerate(metrics):
            spec = allowed.get(name) if isinstance(name, str) else None
            if spec is None or spec.labels:
                yield (_join("$.metrics", name, index, printable), "undeclared_metric")
    collectors = doc.get("collectors")
    if isinstance(collectors, dict):
        running = allowed.collectors if isinstance(allowed, Allowlist) else frozenset()
        for index, name in enumerate(collectors):
            if name not in running:
                yield (_join("$.collectors", name, index, printable), "unknown_collector")
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


def _join(path: str, key: Any, index: int, printable: Collection[str]) -> str:
    """Append a key to a JSON path: by name if declared, else by its position among the object's keys."""
    if isinstance(key, str) and key in printable and sensitive(key) is None:
        return f"{path}.{key}"
    return f"{path}[{index}]"


def _path(doc: Any, loc: tuple[int | str, ...], printable: Collection[str]) -> str:
    """Render a pydantic error location as a JSON path, walking ``doc`` to index undeclared keys."""
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
            path = _join(path, part, index, printable)
            node = node.get(part)
        else:
            path = _join(path, part, 0, printable)
            node = None
    return path


def describe(findings: tuple[Finding, ...]) -> list[str]:
    """Findings as ``path: reason`` lines, safe to print and log."""
    return [f"{path}: {reason}" for path, reason in findings]
