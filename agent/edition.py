"""The build's edition, baked into the artifact at build time.

A wheel built with ``EDITION=commercial`` carries ``agent/_build.py``; a source
checkout has none and behaves as the community edition with the upload code present.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

Edition = Literal["community", "commercial"]
UPLOAD_SINKS = ("sinks.central", "sinks.pushgateway", "sinks.loki", "sinks.remote_write")


def edition() -> Edition:
    """``"commercial"`` or ``"community"`` (the default)."""
    try:
        from agent._build import EDITION  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return "community"
    return "commercial" if EDITION == "commercial" else "community"


def upload_installed() -> bool:
    """Whether the upload sinks exist in this installation at all."""
    return importlib.util.find_spec("sinks.central") is not None
