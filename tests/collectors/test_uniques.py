"""The unique-address windows: the same registers whatever the caches hold, and only addresses count."""

from __future__ import annotations

import ipaddress

from collectors import hll
from collectors.uniques import FINE_BUCKET, UniqueWindows

KEY = b"uniques-test-key" * 2
NOW = 1_795_330_800.0
BUCKET = int(NOW // FINE_BUCKET)


def clients(n: int) -> list[bytes]:
    """``n`` distinct clients, one in four IPv6."""
    return [(f"2001:db8::{i:x}" if i % 4 == 0 else f"192.0.{i // 250}.{i % 250 + 1}").encode() for i in range(n)]


def windows(chunks: list[list[bytes]], **caps: int) -> UniqueWindows:
    """Windows that read ``chunks`` (each one chunk's addresses) into the current 10-minute bucket."""
    uniques = UniqueWindows(**caps)
    uniques.hasher = hll.KeyedHasher(KEY)
    for tokens in chunks:
        uniques.add(tokens, BUCKET, NOW)
    uniques.flush(NOW)
    return uniques


def sketch_of(addresses: list[bytes]) -> bytearray:
    """The registers of exactly these addresses, hashed one by one."""
    hasher = hll.KeyedHasher(KEY)
    registers = bytearray(hll.M)
    hll.apply_updates(registers, (hasher.update_of(ipaddress.ip_address(a.decode()).packed) for a in addresses))
    return registers


def test_small_caches_give_the_registers_of_large_ones() -> None:
    """With caches far smaller than the clients, every address still reaches the registers, each as itself."""
    people = clients(3000)
    chunks = [people[i : i + 700] + people[: i // 10] for i in range(0, 3000, 500)]
    small = windows(chunks, cache_cap=64, seen_cap=100)
    assert sketch_of(people) == small.fine.registers(BUCKET)
    assert windows(chunks).fine.registers(BUCKET) == small.fine.registers(BUCKET)


def test_other_spellings_count_as_the_same_client() -> None:
    """IPv4-mapped, bracketed, with a port or in capitals, a client is counted once."""
    people = clients(40)
    spelt = [b"::ffff:" + a if b":" not in a else b"[" + a.upper() + b"]:443" for a in people]
    assert sketch_of(people) == windows([people, spelt], cache_cap=16).fine.registers(BUCKET)


def test_tokens_that_are_no_address_change_nothing() -> None:
    """A dash, a host name or garbage where the address belongs is a request without a client."""
    assert bytes(hll.M) == windows([[b"-", b"example.org", b"1.2.3", b"\xff\xfe", b"::g"]]).fine.registers(BUCKET)


def test_a_bucket_older_than_the_day_is_not_counted() -> None:
    """Addresses stamped before the 24-hour window are read but reach no sketch."""
    uniques = UniqueWindows()
    uniques.hasher = hll.KeyedHasher(KEY)
    uniques.add(clients(10), BUCKET - 200, NOW)
    uniques.flush(NOW)
    assert ({}, {}) == (uniques.fine.buckets, uniques.coarse.buckets)
