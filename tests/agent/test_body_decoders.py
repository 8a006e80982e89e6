"""Kept bodies decoded as their sinks encoded them, and --verify's second scrub over them."""

from __future__ import annotations

import gzip
import json
import struct
import time
from pathlib import Path

from agent.audit import verify
from agent.body_decoders import decode_central, decode_remote_write, snappy_block
from agent.ledger import Ledger, read_ledger
from agent.ledger_record import SentRecord, sha256_hex
from tests.heartbeats import make_heartbeat


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def sample(value: float, ms: int) -> bytes:
    return field(2, varint(1 << 3 | 1) + struct.pack("<d", value) + varint(2 << 3) + varint(ms))


def write_request(series: list[tuple[dict[str, str], int]]) -> bytes:
    """A remote write 1.0 WriteRequest: each series with its labels and that many samples."""
    body = b""
    for labels, samples in series:
        message = b"".join(field(1, field(1, k.encode()) + field(2, v.encode())) for k, v in labels.items())
        message += b"".join(sample(float(i), 1_800_000_000_000 + i) for i in range(samples))
        body += field(1, message)
    return body


def snappy_literal(data: bytes) -> bytes:
    """``data`` in snappy's block format as literals only (what any decoder must read)."""
    out = varint(len(data))
    for start in range(0, len(data), 60):
        chunk = data[start : start + 60]
        out += bytes([(len(chunk) - 1) << 2]) + chunk
    return out


def test_snappy_copies_overlap_what_they_produce() -> None:
    """A literal then a one-byte-offset copy longer than its offset repeats the literal."""
    assert b"abcabcabc" == snappy_block(bytes([9, 2 << 2]) + b"abc" + bytes([(6 - 4) << 2 | 1, 3]))


def test_remote_write_labels_and_heartbeats_are_read() -> None:
    """Every label name and value comes out as a string; the heartbeats are the samples of the last-heartbeat series."""
    last = "pop_agent_last_heartbeat_timestamp_seconds"
    body = snappy_literal(write_request([({"__name__": last, "pop": "ams1"}, 3), ({"__name__": "pop_up"}, 5)]))
    contents = decode_remote_write(body)

    assert (["__name__", last, "pop", "ams1", "__name__", "pop_up"], 3) == (
        contents.texts,
        contents.heartbeats,
    )


def test_central_bodies_are_read_gzip_or_plain() -> None:
    """Both encodings central accepts give the same heartbeats."""
    doc = make_heartbeat()
    plain = json.dumps({"heartbeats": [doc]}).encode()

    assert [doc] == decode_central(plain).docs == decode_central(gzip.compress(plain)).docs


def _kept(directory: Path, sink: str, body: bytes, ids: tuple[str, ...] = ()) -> None:
    ledger = Ledger(directory, max_age=86_400, max_bytes=1 << 20, keep_bodies=True, bodies_max_bytes=1 << 20)
    record = SentRecord(
        time.time(), sink, "POST", "https://rw.example:443/api/v1/write", len(body), sha256_hex(body), 204, ids=ids
    )
    ledger.append([(record, body)])
    ledger.close()


def test_verify_finds_an_address_in_a_remote_write_label(tmp_path: Path) -> None:
    """A label value holding an address is a finding that names the record, not the value."""
    _kept(tmp_path, "remote_write", snappy_literal(write_request([({"__name__": "x", "mount": "/var"}, 1)])))
    _kept(tmp_path, "remote_write", snappy_literal(write_request([({"__name__": "x", "mount": "10.0.0.7"}, 1)])))
    verdict = verify(read_ledger(tmp_path).records, tmp_path)

    assert 1 <= len(verdict.findings)
    assert all(finding.startswith("record 2 (") and "10.0.0.7" not in finding for finding in verdict.findings)


def test_verify_passes_clean_bodies_and_counts_their_heartbeats(tmp_path: Path) -> None:
    """Clean central and remote-write bodies give no finding; their heartbeats are counted."""
    _kept(tmp_path, "central", gzip.compress(json.dumps({"heartbeats": [make_heartbeat(), make_heartbeat()]}).encode()))
    last = {"__name__": "pop_agent_last_heartbeat_timestamp_seconds", "pop": "ams1"}
    _kept(
        tmp_path, "remote_write", snappy_literal(write_request([(last, 1), ({"__name__": "pop_up", "pop": "ams1"}, 1)]))
    )
    verdict = verify(read_ledger(tmp_path).records, tmp_path)

    assert ([], 2, 3) == (verdict.findings, verdict.requests, verdict.heartbeats)


def test_verify_flags_a_body_whose_heartbeats_are_not_the_records_ids(tmp_path: Path) -> None:
    """A central body holding another heartbeat than the record lists is a finding."""
    doc = make_heartbeat()
    _kept(tmp_path, "central", json.dumps({"heartbeats": [doc]}).encode(), ids=("someone-else",))
    verdict = verify(read_ledger(tmp_path).records, tmp_path)

    assert ["the heartbeats in the body are not the ids the record lists"] == [
        finding.split("): ", 1)[1] for finding in verdict.findings
    ]
