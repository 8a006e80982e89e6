"""Vaults: how many vault stores this POP holds, and nothing else about them.

Either a directory (``path``), counting the entries whose names match ``glob``
(names are matched, never kept; nothing is opened), or a SQLite database
(``sqlite``) opened read-only through a ``file:...?mode=ro`` URI with a short busy
timeout, running the configured ``query``, which must return one integer. The
connection is opened and closed every tick, and ``query_only`` is set, so the
agent never writes and never holds a lock between ticks.

``sqlite3`` is imported only where a database is counted: loading libsqlite3
costs 0.8 MiB of resident memory, which an agent counting a directory, or no
vaults at all, would carry for nothing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from agent.errors import CollectorError
from agent.plugin_api import PluginContext, PluginSettings
from agent.sample import MetricKind, MetricSpec, Sample

BUSY_TIMEOUT_S = 1.0


class VaultsSettings(PluginSettings):
    """Where to count vault stores: a directory (``path`` + ``glob``) or a SQLite database."""

    path: Path | None = Field(None, description="Directory holding one vault store per entry.")
    glob: str = Field("*", description="Pattern of vault store names inside path.")
    sqlite: Path | None = Field(None, description="SQLite database to count vaults in (opened read-only).")
    query: str = Field("SELECT count(*) FROM vaults", description="Count query; must return one number.")


def count_dir(path: Path, pattern: str) -> int:
    """Entries of ``path`` whose names match ``pattern`` (hidden entries only if it asks for them)."""
    compiled = re.compile(fnmatch.translate(pattern))
    hidden = pattern.startswith(".")
    with os.scandir(path) as entries:
        return sum(1 for entry in entries if compiled.match(entry.name) and (hidden or entry.name[0] != "."))


def count_sqlite(path: Path, query: str, *, busy_timeout: float = BUSY_TIMEOUT_S) -> int:
    """The single integer ``query`` returns from the database at ``path``, opened read-only."""
    import sqlite3  # only here: see the module's docstring

    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA query_only = ON")
        rows = connection.execute(query).fetchmany(2)
    finally:
        connection.close()
    if len(rows) != 1 or len(rows[0]) != 1:
        raise CollectorError("count query must return one value", code="bad_query")
    value = rows[0][0]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CollectorError("count query must return a non-negative integer", code="bad_query")
    return value


def count_database(path: Path, query: str) -> int:
    """:func:`count_sqlite`, with SQLite's errors as collector errors that carry no SQLite text."""
    import sqlite3  # only here: see the module's docstring

    try:
        return count_sqlite(path, query)
    except sqlite3.OperationalError as exc:
        code = "locked" if "locked" in str(exc) or "busy" in str(exc) else "sqlite"
        raise CollectorError("vault database not readable", code=code) from None
    except sqlite3.Error:
        raise CollectorError("vault database not readable", code="sqlite") from None


class VaultsCollector:
    """``vault_count`` from a directory of stores or a SQLite count query."""

    name: ClassVar[str] = "vaults"
    settings_model: ClassVar[type[VaultsSettings]] = VaultsSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("vault_count", MetricKind.GAUGE, "Vault stores held by this POP."),
    )

    def __init__(self, cfg: VaultsSettings) -> None:
        if cfg.path is None and cfg.sqlite is None:
            raise ValueError("vaults needs a path or a sqlite database")
        self._cfg = cfg

    @classmethod
    def from_settings(cls, cfg: VaultsSettings, context: PluginContext) -> VaultsCollector | None:
        """A collector if a vault directory or database is configured, else ``None``."""
        return None if cfg.path is None and cfg.sqlite is None else cls(cfg)

    async def collect(self) -> Sequence[Sample]:
        """Count the vault stores."""
        return [Sample("vault_count", await asyncio.to_thread(self._count))]

    def _count(self) -> int:
        cfg = self._cfg
        try:
            if cfg.sqlite is not None:
                return count_database(cfg.sqlite, cfg.query)
            assert cfg.path is not None
            return count_dir(cfg.path, cfg.glob)
        except CollectorError:
            raise
        except FileNotFoundError:
            raise CollectorError("vault store not found", code="missing") from None
        except PermissionError:
            raise CollectorError("vault store not readable", code="permission") from None
        except OSError:
            raise CollectorError("vault store not readable", code="io") from None
