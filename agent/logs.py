"""Logging: structlog configured once, by the CLI.

JSON lines on stderr when stderr is not a terminal (journald, files), readable
console output when it is. Stdout is left to command output (``agent --once``
prints the heartbeat there). A masking processor is the second line of defence:
callers never log secrets on purpose, and whatever slips through is masked.

Under systemd, when stderr is the journal (``$JOURNAL_STREAM`` names stderr's
device and inode), every line starts with its syslog priority as ``<N>``, which
journald reads by default (``SyslogLevelPrefix=yes``), so ``journalctl -p err``
filters; the journal stamps each entry itself, so the lines carry no timestamp.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

MASK = "**********"

_PATTERNS = (
    # Authorization: Bearer <token> (and Basic/Token schemes).
    re.compile(r"(?i)\b(bearer|basic|token)(\s+|=|:\s*)[A-Za-z0-9._~+/=-]{6,}"),
    # Credentials in a URL: scheme://user:password@host
    re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]+(:[^\s/@]*)?@"),
    # Uptime Kuma push URL: /api/push/<token>
    re.compile(r"(/api/push/)[^\s/?#\"']+"),
    # Query parameters that carry secrets.
    re.compile(r"(?i)([?&](?:token|auth|key|password|secret|access_token)=)[^&\s#\"']+"),
)


def _mask_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _PATTERNS[2].sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _PATTERNS[3].sub(lambda m: f"{m.group(1)}{MASK}", text)


class MaskSecrets:
    """structlog processor: mask known secret values and anything shaped like a credential."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = self._mask(value)
        return event_dict

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            return _mask_text(value, self._secrets)
        if isinstance(value, dict):
            return {k: self._mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._mask(v) for v in value]
        return value


# syslog(3) priorities by structlog method name.
PRIORITIES = {"debug": 7, "info": 6, "msg": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}


def to_journal(stream: TextIO | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` (stderr by default) is connected to the journal, as ``$JOURNAL_STREAM`` says.

    systemd sets it to ``<device>:<inode>`` of the stream it connected; a unit that
    redirects stderr to a file keeps the variable but not the stream, and gets no prefixes.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def _priority_prefix(logger: Any, method: str, rendered: str) -> str:
    return f"<{PRIORITIES.get(method, 6)}>{rendered}"


def error_line(text: str, stream: TextIO | None = None) -> None:
    """Print one error line for the operator on stderr, with priority 3 when stderr is the journal."""
    stream = stream or sys.stderr
    print(f"<3>{text}" if to_journal(stream) else text, file=stream)


def configure(*, secrets: Iterable[str] = (), stream: TextIO | None = None, level: str = "info") -> None:
    """Configure structlog for this process. Called once, by the CLI."""
    stream = stream or sys.stderr
    journal = to_journal(stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        *([] if journal else [structlog.processors.TimeStamper(fmt="iso", utc=True)]),
        MaskSecrets(secrets),
    ]
    renderer: list[Any]
    if journal:
        renderer = [structlog.processors.JSONRenderer(), _priority_prefix]
    elif stream.isatty():
        renderer = [structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)]
    else:
        renderer = [structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
