"""The HyperLogLog sketch: error bounds, address normalisation, merging and persistence."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors import hll


def sketch_of(hashes: list[int]) -> bytearray:
    registers = bytearray(hll.M)
    for h in hashes:
        hll.add_hash(registers, h)
    return registers


def test_empty_sketch_counts_zero() -> None:
    """A sketch with nothing added estimates zero."""
    assert 0.0 == hll.estimate(bytearray(hll.M))


@pytest.mark.parametrize("n", [1, 2, 10, 50, 100, 200])
def test_small_sets_are_counted_exactly_or_off_by_one(n: int) -> None:
    """Below a few hundred distinct values the rounded estimate is exact or off by one."""
    rng = random.Random(n)
    for _ in range(5):
        assert abs(round(hll.estimate(sketch_of([rng.getrandbits(64) for _ in range(n)]))) - n) <= 1


def test_a_thousand_is_near_exact() -> None:
    """At a thousand distinct values the estimate is within 1.5% (linear counting range)."""
    rng = random.Random(1000)
    for _ in range(5):
        assert abs(hll.estimate(sketch_of([rng.getrandbits(64) for _ in range(1000)])) - 1000) <= 15


def test_a_million_is_within_two_percent() -> None:
    """At a million distinct values the estimate is within the documented 2%."""
    rng = random.Random(42)
    registers = bytearray(hll.M)
    add = hll.add_hash
    for _ in range(1_000_000):
        add(registers, rng.getrandbits(64))
    assert abs(hll.estimate(registers) - 1_000_000) <= 20_000
    packed = hll.Sketch.of(registers)
    assert registers == packed.registers()
    assert packed.nbytes <= hll.SKETCH_BYTES + 64


def test_duplicates_do_not_count() -> None:
    """Adding the same values again leaves the registers unchanged."""
    rng = random.Random(3)
    hashes = [rng.getrandbits(64) for _ in range(5000)]
    once = sketch_of(hashes)
    assert once == sketch_of(hashes * 3)


def test_merge_is_the_sketch_of_the_union() -> None:
    """The register-wise maximum of two sketches equals the sketch of both sets."""
    rng = random.Random(4)
    a = [rng.getrandbits(64) for _ in range(3000)]
    b = [rng.getrandbits(64) for _ in range(3000)]
    assert bytes(sketch_of(a + b)) == hll.merge([sketch_of(a), sketch_of(b)])


def test_encode_round_trips_and_decode_rejects_garbage() -> None:
    """Encoded registers decode to the same bytes; anything else is refused."""
    registers = sketch_of([random.Random(5).getrandbits(64) for _ in range(100)])
    assert registers == hll.decode(hll.encode(registers))
    for bad in ("", "not base64!", hll.encode(bytes(10)), hll.encode(bytes([200]) * hll.M)):
        with pytest.raises(ValueError):
            hll.decode(bad)


@given(st.ip_addresses(v=4))
def test_ipv4_and_its_mapped_forms_are_one_client(address: ipaddress.IPv4Address) -> None:
    """Plain, IPv4-mapped, bracketed, with a port: one IPv4 client, one packed form."""
    forms = [str(address), f"::ffff:{address}", f"::FFFF:{address}", f"[::ffff:{address}]:443", f"{address}:8080"]
    assert {address.packed} == {hll.packed_address(form) for form in forms}


@given(st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None))
def test_ipv6_spellings_are_one_client(address: ipaddress.IPv6Address) -> None:
    """Compressed, exploded, upper case, bracketed with a port or a zone id: one packed form."""
    forms = [str(address), address.exploded, address.exploded.upper(), f"[{address}]:443", f"{address}%eth0"]
    assert {address.packed} == {hll.packed_address(form.encode()) for form in forms}


@pytest.mark.parametrize(
    "token", ["-", "", "example.org", "1.2.3", "300.1.1.1", "[::1", "01.2.3.4", "::g", "1.2.3.4\x00", "::1\x00"]
)
def test_non_addresses_are_refused(token: str) -> None:
    """Tokens that are not IP addresses give no client."""
    assert hll.packed_address(token) is None


def test_keyed_hash_depends_on_the_key() -> None:
    """The same address gives different register updates under different keys, the same under one."""
    packed = ipaddress.ip_address("192.0.2.1").packed
    one, other = hll.KeyedHasher(b"a" * 32), hll.KeyedHasher(b"b" * 32)
    assert one.update_of(packed) == hll.KeyedHasher(b"a" * 32).update_of(packed)
    assert one.update_of(packed) != other.update_of(packed)
    assert one.key_id() != other.key_id()


_TOKENS = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:443"),
    st.sampled_from(["-", "example.org", "1.2.3", "01.2.3.4", "::g", "\xff"]),
)


@given(st.lists(_TOKENS, max_size=30))
def test_a_batch_of_tokens_gets_the_updates_one_by_one_would(tokens: list[str]) -> None:
    """updates_of gives each token what update_of gives its packed form, and 0 to a token that is no address."""
    hasher = hll.KeyedHasher(b"batch-test-key" * 2)
    learnt, updates = hasher.updates_of([t.encode("utf-8", "surrogateescape") for t in tokens])
    expected = [0 if (packed := hll.packed_address(t)) is None else hasher.update_of(packed) for t in learnt]
    assert (sorted(t.encode("utf-8", "surrogateescape") for t in tokens), expected) == (sorted(learnt), updates)


def test_windowed_sketch_slides_and_persists() -> None:
    """A ring counts the buckets inside its window only, and the same after save and load."""
    ring = hll.WindowedSketch(3600, 600)
    rng = random.Random(6)
    for bucket in range(10):
        ring.absorb(bucket, sketch_of([rng.getrandbits(64) for _ in range(100)]))
    now = 10 * 600 - 1  # inside bucket 9: buckets 3..9 overlap the last hour
    counted = ring.count(now)
    assert abs(counted - 700) <= 10
    restored = hll.WindowedSketch(3600, 600)
    restored.load(ring.save())
    assert counted == restored.count(now)
    assert 0 == round(ring.count(now + 2 * 3600))


@given(st.integers(0, 2**32), st.integers(0, hll.Q + 1))
def test_packed_registers_round_trip(seed: int, base: int) -> None:
    """Registers packed 4 bits above a base, overflow included, unpack to the same bytes."""
    rng = random.Random(seed)
    top = hll.Q + 1
    registers = bytearray(min(top, base + rng.choice([0, 3, 15, 16, 40])) for _ in range(hll.M))
    for _ in range(rng.randrange(50)):
        registers[rng.randrange(hll.M)] = rng.randrange(base, top + 1)
    registers[rng.randrange(hll.M)] = base  # the smallest register sets the base
    sketch = hll.Sketch.of(registers)
    assert registers == sketch.registers()


def test_a_day_window_is_within_two_percent_at_a_million_in_64_kib() -> None:
    """A million distinct hashes spread over a 24-hour ring count within 2%, in at most 64 KiB."""
    ring = hll.WindowedSketch(86_400, 14_400)
    rng = random.Random(7)
    for bucket in range(7):  # 7 buckets overlap the window ending inside the last one
        ring.add(bucket, [hll.update_of_hash(rng.getrandbits(64)) for _ in range(1_000_000 // 7)])
    now = 7 * 14_400 - 1
    assert abs(ring.count(now) - 1_000_000 // 7 * 7) <= 20_000
    assert 7 == len(ring.buckets)
    assert ring.memory_bytes() <= 64 * 1024
