"""``agent egress``: every destination, whether the code is here, and whether telemetry lets it go."""

from __future__ import annotations

from tests.conftest import RunAgent

URL = "https://pop:CANARYPASS@central.example/ingest/v1/heartbeats?key=CANARYQUERY"
KUMA = "https://kuma.example/api/push/CANARYKUMA?status=up"


def test_egress_lists_masked_destinations_and_what_telemetry_allows(run_agent: RunAgent) -> None:
    """Telemetry off: central is listed without credentials or query, and not allowed; the hook is allowed."""
    done = run_agent(
        "egress", POP_AGENT_SINKS__CENTRAL__URL=URL, POP_AGENT_SINKS__CENTRAL__TOKEN="CANARYTOKEN", KUMA_PUSH_URL=KUMA
    )
    lines = done.stdout.splitlines()
    central = lines.index("central      upload sink  https://central.example:443/ingest/v1/heartbeats")

    assert 0 == done.returncode
    assert "             code: present; allowed: no: telemetry is off" == lines[central + 1]
    assert "kuma         alert hook   https://kuma.example:443/api/push/********" in lines
    assert "CANARY" not in done.stdout + done.stderr


def test_egress_with_telemetry_on_allows_the_configured_sink(run_agent: RunAgent) -> None:
    """Telemetry on with the upload code present: central is allowed, unconfigured sinks are not."""
    done = run_agent(
        "egress", "--telemetry", "on", POP_AGENT_SINKS__CENTRAL__URL=URL, POP_AGENT_SINKS__CENTRAL__TOKEN="t0ken"
    )
    lines = done.stdout.splitlines()
    central = lines.index("central      upload sink  https://central.example:443/ingest/v1/heartbeats")

    assert "             code: present; allowed: yes" == lines[central + 1]
    assert "pushgateway  upload sink  not configured" in lines
