"""A heartbeat in the Prometheus text exposition format (version 0.0.4), for the Pushgateway.

The series are those of :mod:`sinks.series`, the mapping every Prometheus path
shares; the Pushgateway adds the ``job`` and ``pop`` grouping labels.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from sinks.series import COLLECTOR_UP, INFO, LAST_HEARTBEAT, families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def grouping_path(labels: Iterable[tuple[str, str]]) -> str:
    """The Pushgateway URL path of a group, e.g. ``/metrics/job/pop_agent/pop/ams1``.

    A value holding ``/`` (or an empty one) uses the ``@base64`` form, as the
    Pushgateway's API asks; anything else is percent-encoded.
    """
    parts = ["/metrics"]
    for key, value in labels:
        if value == "":
            parts.append(f"{key}@base64/=")
        elif "/" in value:
            parts.append(f"{key}@base64/{base64.urlsafe_b64encode(value.encode()).decode()}")
        else:
            parts.append(f"{key}/{quote(value, safe='')}")
    return "/".join(parts)


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text escaped for the text format: backslash and line feed."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int) -> str:
    """A sample value as the text format spells it (``NaN``, ``+Inf``, shortest round-trip floats)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def metric_type(name: str) -> str:
    """``counter`` for names ending in ``_total`` (the heartbeat's rule), else ``gauge``."""
    return "counter" if name.endswith("_total") else "gauge"


_HELP = {
    LAST_HEARTBEAT: "When the POP's last heartbeat was taken (Unix seconds); an old value means the POP went silent.",
    INFO: "The POP agent's edition and version (always 1).",
    COLLECTOR_UP: "Whether each collector succeeded in the POP's last heartbeat (1) or not (0).",
}


def render(doc: Mapping[str, Any]) -> bytes:
    """One heartbeat as a text-format body: HELP and TYPE per family, LF after every line, no timestamps."""
    lines: list[str] = []
    for name, samples in sorted(families(doc).items()):
        help_text = _HELP.get(name, f"{name} as reported by the POP agent's heartbeat.")
        lines.append(f"# HELP {name} {escape_help(help_text)}")
        lines.append(f"# TYPE {name} {metric_type(name)}")
        for labels, value in sorted(samples.items()):
            if labels:
                inner = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels)
                lines.append(f"{name}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{name} {format_value(value)}")
    return "".join(line + "\n" for line in lines).encode()
