"""The heartbeat document: the checked-in schema matches the model, and built heartbeats validate."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from agent import heartbeat
from agent.sample import Sample
from agent.state import Sequence

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "heartbeat.schema.json"


def test_checked_in_schema_matches_the_model() -> None:
    """docs/heartbeat.schema.json is exactly what the model generates (run `make schema` after a change)."""
    assert json.loads(SCHEMA_FILE.read_text()) == heartbeat.json_schema()


def test_built_heartbeat_validates() -> None:
    """A heartbeat with unlabelled and labelled samples validates against the published schema."""
    doc = heartbeat.build(
        pop="ams1",
        seq=7,
        edition="community",
        version="0.1.0",
        interval=10.0,
        samples=[Sample("cpu_percent", 12.5), Sample.of("disk_used_percent", 40.0, mount="/var")],
        collectors={"cpu": "ok", "disk": "timeout"},
    )
    jsonschema.validate(doc, json.loads(SCHEMA_FILE.read_text()))
    assert doc["metrics"] == {"cpu_percent": 12.5}
    assert doc["series"] == [{"name": "disk_used_percent", "labels": {"mount": "/var"}, "value": 40.0}]


def test_uuid7_is_time_ordered() -> None:
    """Ids made later sort later, even within one millisecond."""
    base = 1_795_000_000_000_000_000
    ids = [heartbeat.uuid7(base + step * 1000) for step in range(2000)]
    assert ids == sorted(ids)
    assert all(value[14] == "7" for value in ids)


def test_sequence_increases_across_restarts(tmp_path: Path) -> None:
    """seq never repeats after a restart, even one that skipped saving (a crash)."""
    path = tmp_path / "seq.json"
    first = Sequence(path, block=10)
    taken = [first.take() for _ in range(15)]
    second = Sequence(path, block=10)  # a crash: the first never saved again
    later = [second.take() for _ in range(3)]
    assert taken == list(range(15))
    assert min(later) > max(taken)
    assert later == sorted(set(later))


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"reserved": "9"}', b"\x00" * 64, None])
def test_sequence_survives_one_damaged_state_file(tmp_path: Path, damage: bytes | None) -> None:
    """A garbled, emptied or deleted seq file does not send seq back while its twin reads; both gone restart at 0."""
    path = tmp_path / "seq.json"
    first = Sequence(path, block=10)
    taken = [first.take() for _ in range(25)]
    for victim in (path, path.with_name("seq.json.1")):
        if damage is None:
            victim.unlink()
        else:
            victim.write_bytes(damage)
        after = Sequence(path, block=10).take()
        assert after > max(taken), victim.name
        Sequence(path, block=10)  # reading alone repairs nothing and breaks nothing
        first = Sequence(path, block=10)
        taken = [first.take() for _ in range(25)]  # both files are whole again
    path.write_bytes(b"garbage")
    path.with_name("seq.json.1").write_bytes(b"garbage")
    assert 0 == Sequence(path, block=10).take()


def test_peek_does_not_write(tmp_path: Path) -> None:
    """`--once` peeks at seq without creating or moving the state file."""
    path = tmp_path / "seq.json"
    assert Sequence(path).peek() == 0
    assert not path.exists()
