"""The shipped Prometheus rules: promtool accepts them, their unit tests pass, and the real engines load them."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.central.engines import (
    PROMETHEUS,
    PROMTOOL,
    RULE_FILES,
    RULE_TESTS,
    VMALERT,
    missing,
    prometheus,
    rules,
)
from tests.conftest import REPO
from tests.sinks.realprocs import binary, poll

# An alert_rule_test that expects the alert to fire: its exp_alerts is a list or an alias, not [].
FIRING_TEST = re.compile(r"alertname: (\w+)\n\s+exp_alerts:(?! \[\])")


def needs(*programs: str) -> None:
    absent = missing(*programs)
    if absent:
        pytest.skip(f"{' and '.join(absent)} not installed (.ci/run installs Debian's packages)")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def loaded_rules() -> Iterator[list[dict[str, Any]]]:
    """Every shipped rule as a real Prometheus reports it after evaluating each at least once."""
    needs(PROMETHEUS)
    with prometheus(rule_files=RULE_FILES) as base:
        yield poll(
            lambda: rules(base),
            until=lambda found: found and all(rule["lastEvaluation"] > "2000" for rule in found),
            timeout=30,
        )


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=[path.name for path in RULE_FILES])
def test_promtool_check_rules_accepts_each_rule_file(rule_file: Path) -> None:
    """``promtool check rules`` (with its duplicate-rule lint made fatal) accepts the file."""
    needs(PROMTOOL)
    result = run(str(binary(PROMTOOL)), "check", "rules", "--lint=all", "--lint-fatal", str(rule_file))
    assert 0 == result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=[path.name for path in RULE_TESTS])
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    """``promtool test rules`` passes the unit tests of ``central/tests``."""
    needs(PROMTOOL)
    result = run(str(binary(PROMTOOL)), "test", "rules", str(test_file))
    assert 0 == result.returncode, result.stdout + result.stderr


def test_vmalert_accepts_the_rule_files() -> None:
    """vmalert (VictoriaMetrics' rule engine) parses every rule file and expression in a dry run."""
    needs(VMALERT)
    result = run(str(binary(VMALERT)), "-dryRun", *(f"-rule={path}" for path in RULE_FILES))
    assert 0 == result.returncode, result.stdout + result.stderr


def test_every_rule_evaluates_without_error_in_prometheus(loaded_rules: list[dict[str, Any]]) -> None:
    """Prometheus 2.42 loads every rule and evaluates each one without an error."""
    assert [] == [(rule["name"], rule.get("lastError")) for rule in loaded_rules if rule["health"] != "ok"]


def test_every_alert_has_a_severity_a_summary_and_a_description(loaded_rules: list[dict[str, Any]]) -> None:
    """Each alert carries a ``severity`` label (critical or warning) and both annotations."""
    alerts = [rule for rule in loaded_rules if rule["type"] == "alerting"]
    assert len(alerts) >= 6
    assert [] == [
        rule["name"]
        for rule in alerts
        if rule["labels"].get("severity") not in {"critical", "warning"}
        or not rule["annotations"].get("summary")
        or not rule["annotations"].get("description")
    ]


def test_the_required_alerts_are_shipped(loaded_rules: list[dict[str, Any]]) -> None:
    """A silent POP, a disk filling, a growing spool, failing delivery, scrub rejections and a collector down."""
    names = {rule["name"] for rule in loaded_rules if rule["type"] == "alerting"}
    required = {
        "PopSilent",
        "PopDiskFilling",
        "PopSpoolBacklogGrowing",
        "PopDeliveryFailing",
        "PopScrubRejections",
        "PopCollectorDown",
    }
    assert set() == required - names


def test_every_alert_has_a_unit_test_in_which_it_fires(loaded_rules: list[dict[str, Any]]) -> None:
    """Each alert appears in some ``central/tests`` file with an expectation that it fires."""
    tested = {name for path in RULE_TESTS for name in FIRING_TEST.findall(path.read_text())}
    alerts = {rule["name"] for rule in loaded_rules if rule["type"] == "alerting"}
    assert set() == alerts - tested


def test_docs_explain_every_alert() -> None:
    """docs/central.md has a section on each alert of the rule files (what it means, what to do)."""
    shipped = {name for path in RULE_FILES for name in re.findall(r"- alert: (\w+)", path.read_text())}
    headings = " ".join(re.findall(r"^### (.*)$", (REPO / "docs" / "central.md").read_text(), re.MULTILINE))
    assert len(shipped) >= 6
    assert [] == sorted(name for name in shipped if name not in headings)


def test_every_unit_test_file_loads_exactly_the_shipped_rule_files() -> None:
    """Each test file reads ``../rules/*.yaml``, every one of them, so a new rule file cannot go untested."""
    expected = [f"  - ../rules/{path.name}" for path in RULE_FILES]
    for path in RULE_TESTS:
        listed = re.search(r"^rule_files:\n((?:  - .*\n)+)", path.read_text(), re.MULTILINE)
        assert listed is not None, path.name
        assert expected == sorted(listed.group(1).splitlines()), path.name
