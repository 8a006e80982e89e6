"""The C module collectors._hllscan gives what collectors.hll gives, token by token and chunk by chunk."""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors import hll
from collectors.requests import bulk_expression

pytestmark = pytest.mark.skipif(
    not hll.native_available(), reason="collectors._hllscan is not built (no C compiler or Python headers)"
)

KEY = bytes(range(32))
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
T0 = 1_795_330_800  # 2026-11-22T04:20:00Z, the start of a 10-minute span


def scanner(key: bytes = KEY, **options: int) -> Any:
    from collectors import _hllscan

    return _hllscan.Scanner(key, **options)


def spelt(address: ipaddress.IPv4Address | ipaddress.IPv6Address, form: int) -> str:
    """One of the ways a log may write an address."""
    text = str(address)
    if address.version == 4:
        forms = [text, f"::ffff:{text}", f"::FFFF:{text}", f"{text}:8080", f"[::ffff:{text}]:443", f" {text}\t"]
    else:
        forms = [text, address.exploded.upper(), f"[{text}]:443", f"{text}%eth0", f"[{text}%25]", f"[{text}]x"]
    return forms[form % 6]


# Addresses in every spelling, near-misses, and arbitrary bytes: NULs, non-ASCII, brackets, ports, zones.
TOKENS = st.one_of(
    st.builds(lambda a, f: spelt(a, f).encode(), st.ip_addresses(), st.integers(0, 5)),
    st.text(alphabet="0123456789abcdefABCDEF:.%[] \t\x00\x1cx", max_size=48).map(str.encode),
    st.binary(max_size=48),
    st.sampled_from([b"-", b"", b"1.2.3", b"01.2.3.4", b"300.1.1.1", b"[::1", b"::g", b"1.2.3.4\x00", b"[::1]\x00"]),
)


def python_update(key: bytes, token: bytes) -> int:
    packed = hll.packed_address(token)
    return -1 if packed is None else hll.KeyedHasher(key, native=False).update_of(packed)


@given(TOKENS, st.binary(min_size=16, max_size=64))
def test_one_token_gives_the_update_python_gives(token: bytes, key: bytes) -> None:
    """Normalisation, keyed BLAKE2b and the register update agree for any token under any key."""
    assert python_update(key, token) == scanner(key, slots=1).update_of(token)


@given(st.lists(TOKENS, max_size=60))
def test_apply_sets_the_registers_python_sets(tokens: list[bytes]) -> None:
    """A batch of tokens sets the same registers either way."""
    in_c, in_python = bytearray(hll.M), bytearray(hll.M)
    hll.KeyedHasher(KEY).add_tokens(in_c, tokens)
    hll.KeyedHasher(KEY, native=False).add_tokens(in_python, tokens)
    assert in_python == in_c


def test_a_cache_of_one_slot_evicts_without_miscounting() -> None:
    """Tokens evicting each other from the cache, and met again, still set exactly their own registers."""
    tokens = [f"198.51.100.{i}".encode() for i in range(200)] * 3 + [b"-", b"::ffff:198.51.100.7"]
    tiny, full = bytearray(hll.M), bytearray(hll.M)
    assert 601 == scanner(slots=1).apply(tiny, tokens)
    scanner().apply(full, tokens)
    in_python = bytearray(hll.M)
    hll.KeyedHasher(KEY, native=False).add_tokens(in_python, set(tokens))
    assert (in_python, in_python) == (tiny, full)


def test_each_key_has_its_own_cache() -> None:
    """Two keys over the same addresses set each its own registers, as Python does for each."""
    tokens = [f"192.0.2.{i}".encode() for i in range(50)]
    for key in (KEY, bytes(range(1, 33))):
        in_c, in_python = bytearray(hll.M), bytearray(hll.M)
        hasher = hll.KeyedHasher(key)
        hasher.add_tokens(in_c, tokens)
        hasher.add_tokens(in_c, tokens)  # the second pass comes from the cache
        hll.KeyedHasher(key, native=False).add_tokens(in_python, tokens)
        assert in_python == in_c


def test_bad_arguments_are_refused() -> None:
    """Wrong sizes and types raise instead of writing out of bounds."""
    with pytest.raises(ValueError):
        scanner(b"short")
    with pytest.raises(ValueError):
        scanner(slots=3)
    with pytest.raises(ValueError):
        scanner().apply(bytearray(10), [b"1.2.3.4"])
    with pytest.raises(TypeError):
        scanner().apply(bytearray(hll.M), ["1.2.3.4"])
    with pytest.raises(TypeError):  # lines must be immutable bytes: they are read without the GIL
        scanner().scan_combined(bytearray(hll.M), bytearray(b"x\n"), b"p" * 16, b"s" * 6)


def test_a_scanner_serves_one_call_at_a_time() -> None:
    """While one thread scans without the GIL, another thread's call on the same scanner is refused, not mixed in."""
    stamp = stamp_of(T0).encode()
    lines = (line(f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}", T0 + i % 600) for i in range(400_000))
    chunk = "".join(text + "\n" for text in lines).encode()
    shared, scanning_registers = scanner(), bytearray(hll.M)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(shared.scan_combined(scanning_registers, chunk, stamp[:16], stamp[20:]))
    )
    refused = 0
    worker.start()
    while worker.is_alive():
        try:
            shared.apply(bytearray(hll.M), [b"192.0.2.1"])
        except RuntimeError:
            refused += 1
    worker.join()
    assert refused > 0
    expected = bytearray(hll.M)
    scanner().scan_combined(expected, chunk, stamp[:16], stamp[20:])
    assert ([400_000], expected) == (result, scanning_registers)


def stamp_of(t: int) -> str:
    g = time.gmtime(t)
    return f"{g.tm_mday:02d}/{MONTHS[g.tm_mon - 1]}/{g.tm_year}:{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000"


def line(address: str, t: int, status: str = "200", request: str = "GET /vault/1 HTTP/1.1", tail: str = " 512") -> str:
    return f'{address} - - [{stamp_of(t)}] "{request}" {status}{tail}'


# Lines of the span starting at T0 and lines just off it: the next span, bad statuses,
# broken brackets and quotes, CR endings, nothing after the status, garbage.
IN_SPAN = st.builds(lambda a, s: line(str(a), T0 + s), st.ip_addresses(), st.integers(0, 599))
LINES = st.one_of(
    IN_SPAN,
    st.builds(lambda s: line("192.0.2.1", T0 + s), st.sampled_from([-1, 600, 3600, 86_400])),
    st.builds(lambda s: line("192.0.2.2", T0, status=s), st.sampled_from(["600", "20", "2000", "x00", "099"])),
    st.builds(lambda t: line("192.0.2.3", T0, tail=t), st.sampled_from(["", "\r", " - \"x\"", "1", "\t"])),
    st.builds(lambda r: line("192.0.2.4", T0, request=r), st.sampled_from(["", "a\\b", "\\", "x\" 200 \"y"])),
    st.sampled_from(["", " ", "-", "garbage", "1.2.3.4 - - [", '1.2.3.4 - - [22/Nov/2026:04:2', "\x00", "é é"]),
    st.builds(lambda a: line(a, T0).replace(" - - ", " "), st.sampled_from(["h.example", "[::1]:80", "-"])),
)


@given(st.one_of(st.lists(IN_SPAN, min_size=1, max_size=30), st.lists(LINES, min_size=1, max_size=30)))
def test_scan_combined_takes_a_chunk_exactly_when_the_bulk_expression_does(lines: list[str]) -> None:
    """The C line scanner accepts a chunk when, and only when, the Python bulk expression matches every line;
    then it sets the registers of the addresses that expression finds."""
    chunk = "".join(text + "\n" for text in lines).encode()
    stamp = stamp_of(T0).encode()
    tokens = bulk_expression(stamp).findall(b"\n" + chunk)
    registers = bytearray(hll.M)
    got = scanner(slots=4).scan_combined(registers, chunk, stamp[:16], stamp[20:])
    if len(tokens) == len(lines):
        expected = bytearray(hll.M)
        hll.KeyedHasher(KEY, native=False).add_tokens(expected, tokens)
        assert (len(lines), expected) == (got, registers)
    else:
        assert -1 == got


def test_scan_combined_refuses_a_last_line_without_its_newline() -> None:
    """A chunk is whole lines; an unterminated one is not a line of the span."""
    stamp = stamp_of(T0).encode()
    chunk = (line("192.0.2.1", T0) + "\n" + line("192.0.2.2", T0)).encode()
    assert -1 == scanner().scan_combined(bytearray(hll.M), chunk, stamp[:16], stamp[20:])
