"""The vault counter: a directory by glob, or a read-only SQLite count that never writes or blocks."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import CollectorError
from agent.plugin_api import PluginContext
from collectors.vaults import VaultsCollector, VaultsSettings, count_sqlite


def make_db(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE vaults (id INTEGER PRIMARY KEY, secret TEXT)")
        db.executemany("INSERT INTO vaults (secret) VALUES (?)", [("s3cret",)] * rows)
    db.close()


async def test_directory_entries_are_counted_by_glob(tmp_path: Path) -> None:
    """Only entries whose names match the glob count, hidden ones not."""
    for name in ("a.db", "b.db", "c.db", "notes.txt", ".hidden.db"):
        (tmp_path / name).write_text("x")
    (tmp_path / "d.db").mkdir()
    samples = await VaultsCollector(VaultsSettings(path=tmp_path, glob="*.db")).collect()
    assert [("vault_count", 4)] == [(s.name, s.value) for s in samples]


async def test_sqlite_count_is_read_only(tmp_path: Path) -> None:
    """The count comes from the query; the database file is left byte for byte unchanged."""
    db = tmp_path / "vaults.db"
    make_db(db, 7)
    before = db.read_bytes()
    samples = await VaultsCollector(VaultsSettings(sqlite=db)).collect()
    assert 7 == samples[0].value
    assert before == db.read_bytes()
    assert ["vaults.db"] == sorted(p.name for p in tmp_path.iterdir())


def test_a_writing_query_is_refused(tmp_path: Path) -> None:
    """A query that would write fails: the connection is read-only."""
    db = tmp_path / "vaults.db"
    make_db(db, 1)
    with pytest.raises(sqlite3.OperationalError):
        count_sqlite(db, "DELETE FROM vaults RETURNING 1")
    assert 1 == count_sqlite(db, "SELECT count(*) FROM vaults")


@pytest.mark.parametrize(
    "query", ["SELECT id, secret FROM vaults", "SELECT secret FROM vaults LIMIT 1", "SELECT id FROM vaults"]
)
async def test_query_must_return_one_integer(tmp_path: Path, query: str) -> None:
    """Anything but a single integer is a bad_query error, never a value."""
    db = tmp_path / "vaults.db"
    make_db(db, 2)
    with pytest.raises(CollectorError) as caught:
        await VaultsCollector(VaultsSettings(sqlite=db, query=query)).collect()
    assert "bad_query" == caught.value.code
    assert "s3cret" not in str(caught.value)


async def test_missing_store_is_an_error_code(tmp_path: Path) -> None:
    """A missing directory or database is reported by a fixed code."""
    for cfg in (VaultsSettings(path=tmp_path / "nope"), VaultsSettings(sqlite=tmp_path / "nope.db")):
        with pytest.raises(CollectorError) as caught:
            await VaultsCollector(cfg).collect()
        assert caught.value.code in {"missing", "sqlite"}
    assert [] == list(tmp_path.iterdir())  # read-only open never creates the database


def test_a_locked_database_times_out_instead_of_blocking(tmp_path: Path) -> None:
    """While a writer holds an exclusive lock, the count fails fast with a code and takes no lock."""
    db = tmp_path / "vaults.db"
    make_db(db, 3)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError):
            count_sqlite(db, "SELECT count(*) FROM vaults", busy_timeout=0.05)
        writer.execute("INSERT INTO vaults (secret) VALUES ('x')")
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert 4 == count_sqlite(db, "SELECT count(*) FROM vaults")


def test_from_settings_needs_a_source(tmp_path: Path) -> None:
    """Without a path or a database the collector is not configured."""
    context = PluginContext(interval=10.0, state_dir=tmp_path, collector_timeout=5.0)
    assert VaultsCollector.from_settings(VaultsSettings(), context) is None
    configured = VaultsCollector.from_settings(VaultsSettings(path=tmp_path), context)
    assert isinstance(configured, VaultsCollector)


def test_sqlite_is_loaded_only_to_count_a_database() -> None:
    """Every built-in plugin loaded leaves libsqlite3 out of the process (0.8 MiB resident)."""
    code = (
        "import sys\n"
        "from agent.plugins import discover\n"
        "plugins = discover(third_party=False)\n"
        "for ref in plugins.collectors + plugins.sinks:\n"
        "    ref.load()\n"
        "print('sqlite3' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == result.stdout.strip()
