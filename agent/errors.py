"""One exception tree for the agent.

Library exceptions are translated into these at the boundary where they enter.
Every error carries a fixed ``code``: that code, never the exception text, is what
may reach a heartbeat, a status file or an alert.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    code: str = "agent_error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.code)
        if code is not None:
            self.code = code


class ConfigError(AgentError, ValueError):
    """The configuration cannot be used; the process exits 78 (EX_CONFIG).

    ``problems`` lists each problem on its own (``agent check`` prints one line
    each); the message joins them into the one line other commands print.
    """

    code = "config_error"

    def __init__(self, message: str = "", *, code: str | None = None, problems: list[str] | None = None) -> None:
        super().__init__(message, code=code)
        self.problems = tuple(problems) if problems else (message or self.code,)


class CollectorError(AgentError):
    """One collector failed for one tick; the others still report."""

    code = "collector_error"


class SinkError(AgentError):
    """A delivery attempt failed."""

    code = "sink_error"


class TransientSinkError(SinkError):
    """Keep the batch and retry later (timeouts, 408, 429, 5xx, connection errors)."""

    code = "transient"

    def __init__(self, message: str = "", *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """The receiver refused the batch for good; reject and count it."""

    code = "permanent"


class SpoolError(AgentError, OSError):
    """The spool could not store or read a heartbeat."""

    code = "spool_error"


class ScrubRejected(AgentError):
    """A document failed the scrubber. ``findings`` hold JSON paths and reason codes only."""

    code = "scrub_rejected"

    def __init__(self, findings: tuple[tuple[str, str], ...]) -> None:
        super().__init__(f"{len(findings)} finding(s)")
        self.findings = findings
