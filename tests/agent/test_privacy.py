"""Tests for the privacy tripwires: addresses and secrets are found, the agent's own strings are not."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import uuid
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.privacy import EMAIL_ADDRESS, IP_ADDRESS, SECRET_TOKEN, find_sensitive
from agent.token_prefixes import TOKEN_PREFIXES, TokenPrefix

# Neither digits, hex letters nor any separator an address or token is made of,
# so that surrounding text can neither form an address nor glue onto one.
_SAFE_ALPHABET = "ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ _,;!?()<>='\"\n\t"
_SURROUNDINGS = st.text(st.sampled_from(_SAFE_ALPHABET), max_size=40)
_ZONES = st.sampled_from(["eth0", "en0", "1", "wlan0"])
_PORTS = st.integers(min_value=0, max_value=65535)


def _octets(address: ipaddress.IPv4Address) -> list[int]:
    return list(address.packed)


def _v4_renderings(address: ipaddress.IPv4Address, port: int) -> list[str]:
    octets = _octets(address)
    return [
        str(address),
        f"{address}:{port}",
        ".".join(f"{octet:03d}" for octet in octets),
        ".".join(f"{octet:04d}" for octet in octets),
        ".".join(f"0{octet:o}" for octet in octets),
        ".".join(f"0x{octet:02X}" for octet in octets),
        "ip-" + "-".join(str(octet) for octet in octets) + ".ec2.internal",
        f"http://{address}:{port}/status?x=1",
        f"http://user@{address}/",
        f"X-Forwarded-For: {address}, 198.51.100.7",
        f"X-Real-IP: {address}",
        f"client {address} said hello.",
        f"[{address}]:{port}",
        f"%5B{address}%5D",
        f"q=%20{address}",
        f"{address}/24",
        "_".join(str(octet) for octet in octets),
        "ip_" + "_".join(str(octet) for octet in octets) + "_9100",
        "hosts." + "_".join(str(octet) for octet in octets) + ".cpu",
        "/srv/nfs/" + "/".join(str(octet) for octet in octets),
        "{}.{}-{}_{}".format(*octets),
        f"::ffff:{address}",
        f"64:ff9b::{address}",
        f"0:0:0:0:0:ffff:{address}",
        str(ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80))),
        ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80)).exploded,
        str(ipaddress.IPv6Address((0x64FF9B << 96) | int(address))),
        ipaddress.IPv6Address((0xFFFF << 32) | int(address)).exploded,
    ]


def _v6_renderings(address: ipaddress.IPv6Address, port: int, zone: str) -> list[str]:
    compressed, exploded = str(address), address.exploded
    return [
        compressed,
        exploded,
        compressed.upper(),
        exploded.upper(),
        f"{compressed}%{zone}",
        f"{exploded}%{zone}",
        f"[{compressed}]:{port}",
        f"[{exploded}]:{port}",
        f"http://[{compressed}]:{port}/status",
        f"https://[{compressed}%25{zone}]/",
        f"http://%5B{compressed}%5D:{port}/",
        f"http://%5B{exploded}%5D/",
        exploded.replace(":", "%3A"),
        f"X-Forwarded-For: 203.0.113.7, {compressed}",
        f'Forwarded: for="[{compressed}]:{port}"',
        f"client {compressed} connected.",
        f"face:{exploded}",
        f"{exploded}:{port}",
        f"{compressed}/64",
        exploded.replace(":", "-"),
        exploded.replace(":", "_"),
        "node_" + exploded.replace(":", "_") + "_9100",
        exploded.replace(":", "-") + ".ipv6-literal.net",
        *_dashed_compressed(compressed),
    ]


def _dashed_compressed(compressed: str) -> list[str]:
    """The compressed form with dashes and with underscores, where two groups or more remain."""
    if "." in compressed or len([group for group in compressed.split(":") if group]) < 2:
        return []  # "--" or "--1" alone reads as a word's dashes
    return [compressed.replace(":", "-"), compressed.replace(":", "_"), "x " + compressed.replace(":", "-") + " y"]


def _embedded(renderings: st.SearchStrategy[list[str]]) -> st.SearchStrategy[str]:
    """One of the renderings, at a random position in random safe text."""
    rendering = renderings.flatmap(st.sampled_from)
    return st.tuples(_SURROUNDINGS, rendering, _SURROUNDINGS).map("".join)


_V4_TEXT = _embedded(st.builds(_v4_renderings, st.ip_addresses(v=4), _PORTS))
_V6_TEXT = _embedded(st.builds(_v6_renderings, st.ip_addresses(v=6), _PORTS, _ZONES))


@given(_V4_TEXT)
def test_ipv4_is_found_in_any_rendering_anywhere(text: str) -> None:
    """An IPv4 address is found in every rendering, wherever it sits in a string."""
    assert IP_ADDRESS == find_sensitive(text)


@given(_V6_TEXT)
def test_ipv6_is_found_in_any_rendering_anywhere(text: str) -> None:
    """An IPv6 address is found in every rendering, wherever it sits in a string."""
    assert IP_ADDRESS == find_sensitive(text)


_ONE_V6 = "2001:db8:85a3::8a2e:370:7334"
_ONE_V6_EXPLODED = "2001:0db8:85a3:0000:0000:8a2e:0370:7334"
# Full-width forms sit at a fixed offset from ASCII.
_FULL_WIDTH = {ord(char): ord(char) + 0xFEE0 for char in "0123456789abcdef:"}

# Twenty-seven textual renderings of one address, in the spirit of the audit that
# found the usual IPv6 regexes keeping address bits in about half of them.
_RENDERINGS_OF_ONE_V6 = [
    _ONE_V6,
    _ONE_V6_EXPLODED,
    _ONE_V6.upper(),
    _ONE_V6_EXPLODED.upper(),
    "2001:db8:85a3:0:0:8a2e:370:7334",
    f"{_ONE_V6}%eth0",
    f"{_ONE_V6}%25eth0",
    f"[{_ONE_V6}]",
    f"[{_ONE_V6}]:443",
    f"http://[{_ONE_V6}]:8080/status",
    f"https://[{_ONE_V6}%25eth0]/",
    f"%5B{_ONE_V6}%5D",
    "http://%5B2001:db8:85a3:0:0:8a2e:370:7334%5D:80/",
    _ONE_V6.replace(":", "%3A"),
    f"X-Forwarded-For: 203.0.113.7, {_ONE_V6}",
    f'Forwarded: for="[{_ONE_V6}]:4711"',
    f"client {_ONE_V6} connected.",
    "face:2001:db8:85a3:0:0:8a2e:370:7334",
    "interface:2001:db8:85a3:0:0:8a2e:370:7334:",
    "cafe2001:db8:85a3:0:0:8a2e:370:7334beef",
    "2001:db8:85a3:0:0:8a2e:370:7334:443",
    "2001:db8:85a3:0:0:8a2e:3.112.115.52",
    "2001-db8-85a3--8a2e-370-7334.ipv6-literal.net",
    ".".join(reversed(_ONE_V6_EXPLODED.replace(":", ""))) + ".ip6.arpa",
    _ONE_V6.translate(_FULL_WIDTH),
    f"{_ONE_V6_EXPLODED}/64",
    json.dumps({"peer": _ONE_V6}),
]


@pytest.mark.parametrize("text", _RENDERINGS_OF_ONE_V6)
def test_every_rendering_of_one_ipv6_address_is_found(text: str) -> None:
    """Each of twenty-seven renderings of one IPv6 address is found."""
    assert IP_ADDRESS == find_sensitive(text)


# Addresses in local parts or domains are reported as addresses, which come first.
_IPISH = re.compile(r"[0-9][.:-]+[0-9]")


@given(st.tuples(_SURROUNDINGS, st.emails().filter(lambda email: not _IPISH.search(email)), _SURROUNDINGS))
def test_email_addresses_are_found(parts: tuple[str, str, str]) -> None:
    """An e-mail address anywhere in a string is found."""
    assert EMAIL_ADDRESS == find_sensitive("".join(parts))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_JSON_OBJECTS = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=16)), max_size=4)
_JWTS = st.builds(
    lambda alg, payload, signature: ".".join(
        [_b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode()), _b64url(json.dumps(payload).encode()), signature]
    ),
    st.sampled_from(["HS256", "RS256", "ES256", "none"]),
    _JSON_OBJECTS,
    st.one_of(st.just(""), st.binary(min_size=16, max_size=64).map(_b64url)),
)
_HEX_DIGESTS = st.binary(min_size=16, max_size=64).map(bytes.hex).flatmap(lambda h: st.sampled_from([h, h.upper()]))


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@st.composite
def _base64_secrets(draw: st.DrawFn) -> str:
    """Base64 text of at least 32 characters holding an upper-case letter, a lower-case one and a digit.

    It starts with a letter or digit: a run that starts with '/' is read as a path.
    """
    body = [draw(st.sampled_from(_ALNUM)), *draw(st.text(st.sampled_from(_ALNUM + "+/"), min_size=28, max_size=80))]
    for must in (draw(st.sampled_from("ABCXYZ")), draw(st.sampled_from("abcxyz")), draw(st.sampled_from("0379"))):
        body.insert(draw(st.integers(0, len(body))), must)
    return "".join(body)


_PEMS = st.sampled_from(["RSA PRIVATE KEY", "OPENSSH PRIVATE KEY", "PRIVATE KEY", "CERTIFICATE"]).map(
    lambda kind: f"-----BEGIN {kind}-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf\n-----END {kind}-----"
)
_VENDOR_TOKENS = st.one_of(
    st.tuples(st.sampled_from(["ghp_", "gho_", "ghs_"]), st.text(st.sampled_from(_ALNUM), min_size=36, max_size=36)),
    st.tuples(st.just("github_pat_"), st.text(st.sampled_from(_ALNUM + "_"), min_size=82, max_size=82)),
    st.tuples(
        st.sampled_from(["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-"]),
        st.from_regex(r"[0-9]{10,12}-[A-Za-z0-9]{24}", fullmatch=True),
    ),
    st.tuples(
        st.sampled_from(["AKIA", "ASIA"]),
        st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"), min_size=16, max_size=16),
    ),
    st.tuples(st.just("sk_live_"), st.text(st.sampled_from(_ALNUM), min_size=24, max_size=24)),
    st.tuples(
        st.sampled_from(["Bearer ", "bearer ", "Authorization: Bearer "]),
        st.text(st.sampled_from(_ALNUM + "_~+/"), min_size=8, max_size=40),
    ),
).map("".join)


@pytest.mark.parametrize(
    "tokens",
    [_JWTS, _HEX_DIGESTS, _base64_secrets(), _PEMS, _VENDOR_TOKENS],
    ids=["jwt", "hex", "base64", "pem", "vendor"],
)
@given(data=st.data())
def test_secret_tokens_are_found(tokens: st.SearchStrategy[str], data: st.DataObject) -> None:
    """Every kind of secret-looking token is found anywhere in a string."""
    text = data.draw(_SURROUNDINGS) + " " + data.draw(tokens) + " " + data.draw(_SURROUNDINGS)
    # Random base64url can spell a dashed IPv6 address ("AAAA--0"), which is found first.
    assert find_sensitive(text) in (SECRET_TOKEN, IP_ADDRESS)


@pytest.mark.parametrize("entry", TOKEN_PREFIXES, ids=lambda entry: f"{entry.vendor}:{entry.prefix}")
@settings(max_examples=10)
@given(data=st.data())
def test_every_listed_token_prefix_is_found(entry: TokenPrefix, data: st.DataObject) -> None:
    """Each vendor's token, as its documentation shapes it, is found anywhere in a string."""
    tail = data.draw(st.from_regex(rf"[{entry.tail}]{{{entry.min_tail},{entry.min_tail + 40}}}", fullmatch=True))
    text = data.draw(_SURROUNDINGS) + data.draw(st.sampled_from([" ", "=", "\n", "'"])) + entry.prefix + tail
    # A random tail can hold what reads as an address too ("0--0"); that is found first.
    assert find_sensitive(text + data.draw(st.sampled_from(["", " ", '"', ";"]))) in (SECRET_TOKEN, IP_ADDRESS)


@pytest.mark.parametrize(
    "entry", [e for e in TOKEN_PREFIXES if not e.bounded], ids=lambda entry: f"{entry.vendor}:{entry.prefix}"
)
def test_long_prefixes_are_found_glued_to_a_word(entry: TokenPrefix) -> None:
    """A token whose prefix is long or AWS's is found even right after a letter or digit."""
    tail = ("Q" if "A-Z" in entry.tail else "9") * (entry.min_tail + 4)
    assert find_sensitive(f"z{entry.prefix}{tail}") in (SECRET_TOKEN, IP_ADDRESS)


def test_short_prefixes_inside_words_are_not_tokens() -> None:
    """`sk-`, `hf_` and their kin at the end of a word (disk-, shelf_) begin no token."""
    assert [None, None, None] == [
        find_sensitive(t) for t in ("/mnt/disk-" + "q" * 45, "shelf_" + "q" * 40, "risk-" + "q" * 45)
    ]


@pytest.mark.parametrize("entry", TOKEN_PREFIXES, ids=lambda entry: f"{entry.vendor}:{entry.prefix}")
def test_a_prefix_alone_is_not_a_token(entry: TokenPrefix) -> None:
    """A prefix followed by less than a token's length of text is not flagged: the tail is what is secret."""
    assert None is find_sensitive(f"see {entry.prefix} docs")


def test_every_token_prefix_names_its_vendor_documentation() -> None:
    """Each entry of the table says whose it is and where that vendor documents it."""
    assert [] == [
        entry.prefix for entry in TOKEN_PREFIXES if not entry.vendor or not entry.source.startswith("https://")
    ]


# Beyond the seven: what a person reads as an address although a parser would not.
_LOOKALIKE_ADDRESSES = [
    "10\u200b.0.0.7",
    "10.0\u00ad.0.7",
    "10.0.0\u2060.7",
    "\ufeff10.0.0.7",
    "1\u03020.0.0.7",
    "\u0661\u0660.\u0660.\u0660.\u0667",
    "\u0967\u0966.\u0966.\u0966.\u096d",
    "\u0e51\u0e50.\u0e50.\u0e50.\u0e57",
    "\uff11\uff10\uff0e\uff10\uff0e\uff10\uff0e\uff17",
    "10\u30020\u30020\u30027",
    "10\uff610\uff610\uff617",
    "10\u20130\u20130\u20137",
    "10\u22120\u22120\u22127",
    "10%2E0%2E0%2E7",
    "10%252e0%252e0%252e7",
    "10.0\x00.0.7",
    "10.0.0.7\U000e0041",
    "2001\u02d0db8\u02d0\u02d01",
    "2001\u2236db8\u2236\u22361",
    "fe80\ufe13\ufe131",
    "2001-db8--1",
    "fe80__1%eth0",
    "10.0-0_7",
]


@pytest.mark.parametrize("text", _LOOKALIKE_ADDRESSES)
def test_lookalike_and_invisible_characters_are_seen_through(text: str) -> None:
    """Zero-width and combining characters, other scripts' digits and look-alike separators hide no address."""
    assert IP_ADDRESS == find_sensitive(text)


def _uuid7(millis: int, rand_a: int, rand_b: int) -> str:
    return str(uuid.UUID(int=(millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b))


_UUID7S = st.builds(_uuid7, st.integers(0, 2**48 - 1), st.integers(0, 2**12 - 1), st.integers(0, 2**62 - 1)).flatmap(
    lambda u: st.sampled_from([u, u.upper()])
)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULIDS = st.tuples(st.sampled_from("01234567"), st.text(st.sampled_from(_CROCKFORD), min_size=25, max_size=25)).map(
    "".join
)
_VERSIONS = st.builds(
    lambda major, minor, patch, suffix: f"{major}.{minor}.{patch}{suffix}",
    st.integers(0, 999),
    st.integers(0, 999),
    st.integers(0, 999),
    st.sampled_from(["", "rc1", "a2", "b10", ".dev4", ".post1", "+local", "+g1a2b3c4", "-rc.1"]),
)
_OFFSETS = st.one_of(
    st.just("Z"),
    st.builds(
        lambda sign, hours, minutes: f"{sign}{hours:02d}:{minutes:02d}",
        st.sampled_from("+-"),
        st.integers(0, 14),
        st.sampled_from([0, 30, 45]),
    ),
)
_TIMESTAMPS = st.builds(
    lambda moment, digits, offset: (
        f"{moment:%Y-%m-%dT%H:%M:%S}" + (f".{moment.microsecond:06d}"[: digits + 1] if digits else "") + offset
    ),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(0, 6),
    _OFFSETS,
)
_WORDS = st.from_regex(r"[a-z][a-z0-9]{0,11}", fullmatch=True)
_METRIC_NAMES = st.lists(_WORDS, min_size=1, max_size=6).map("_".join).filter(lambda name: len(name) <= 64)
_MOUNTS = st.one_of(
    st.sampled_from(
        [
            "/",
            "/var/lib/pop-agent",
            "/srv/data-01",
            "/boot/efi",
            "/mnt/backup-2024-01-02",
            "/media/Backup-Drive2/Archive2024",
        ]
    ),
    st.lists(st.from_regex(r"[a-z][a-z0-9]{0,11}(-[0-9]{2})?", fullmatch=True), min_size=1, max_size=5).map(
        lambda segments: "/" + "/".join(segments)
    ),
)
_POP_IDS = st.from_regex(r"[a-z]{3}(-?[0-9]{1,2})?", fullmatch=True)
_STATUS_CODES = st.one_of(
    st.sampled_from(["ok", "timeout", "error", "connect", "disabled", "community", "commercial", "pop-heartbeat/1"]),
    st.integers(100, 599).map(lambda code: f"http_{code}"),
)
_STATUS_CLASSES = st.integers(1, 5).map(lambda digit: f"{digit}xx")
_SAFE_FORMS = st.one_of(
    _UUID7S, _ULIDS, _VERSIONS, _TIMESTAMPS, _METRIC_NAMES, _MOUNTS, _POP_IDS, _STATUS_CODES, _STATUS_CLASSES
)


@given(st.lists(_SAFE_FORMS, min_size=1, max_size=8), st.sampled_from([" ", ", ", " | ", "\n", "="]))
def test_the_agents_own_strings_are_never_flagged(forms: list[str], separator: str) -> None:
    """Strings made of the agent's own ids, versions, timestamps, names, mounts and codes are clean."""
    assert None is find_sensitive(separator.join(forms))


@pytest.mark.parametrize(
    "text",
    [
        "0.1.0",
        "1.2.3rc1",
        "1.2.3+local",
        "2026-11-22T07:00:00.123Z",
        "2026-11-22T07:00:00.123456-05:00",
        "0190a3f2-7c1e-7abc-8def-0123456789ab",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/var/lib/pop-agent",
        "disk_used_percent",
        "fra-2",
        "2xx",
        "12:34:56",
        "aa:bb:cc:dd:ee:ff",
        "1.2.3.456",
        "a@localhost",
        "Bearer **********",
        "backup--daily",
        "run --add now",
        "disk_inodes_used_percent",
        "net_errors_in_total",
        "/mnt/backup_2024_01_02",
        "sk-learn",
        "hf_transfer",
        "/srv/disk-archive-2024-volume",
        "café",
    ],
)
def test_near_misses_are_not_flagged(text: str) -> None:
    """Strings that merely resemble an address or a token, times, MAC addresses, redactions, are clean."""
    assert None is find_sensitive(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:2:3:4:5:6:7 " * 70_000, None),
        ("999." * 250_000, None),
        ("abcde:" * 160_000, None),
        ("eyJ" * 330_000, None),
        ("%" * 1_000_000, None),
        (" @a.a" * 200_000, None),
        ("x--" * 333_000, None),
        ("x__1-" * 200_000, None),
        ("99999_" * 170_000, None),
        ("sk-" * 330_000 + "!", SECRET_TOKEN),
        ("zz\u200b" * 330_000, None),
        ("x " * 500_000 + "10.0.0.1", IP_ADDRESS),
        ("x " * 500_000 + "10_0_0_1", IP_ADDRESS),
        ("x " * 500_000 + "2001-db8--1", IP_ADDRESS),
        ("x " * 500_000 + "fe80::1", IP_ADDRESS),
    ],
    ids=[
        "seven-groups",
        "bad-octets",
        "long-groups",
        "jwt-prefixes",
        "percents",
        "bare-ats",
        "double-dashes",
        "underscore-runs",
        "underscored-digits",
        "token-prefixes",
        "zero-widths",
        "late-v4",
        "late-v4-underscored",
        "late-v6-dashed",
        "late-v6",
    ],
)
def test_megabyte_strings_get_the_right_answer(text: str, expected: str | None) -> None:
    """Near-miss patterns repeated over a megabyte are judged correctly, and an address at the end is still found."""
    assert expected == find_sensitive(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/media/Backup-Drive2/Archive2024", None),
        ("/srv/wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", SECRET_TOKEN),
        ("key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", SECRET_TOKEN),
    ],
)
def test_paths_are_judged_segment_by_segment(text: str, expected: str | None) -> None:
    """A run that starts with '/' is a path whose segments are judged alone; any other run is judged whole."""
    assert expected == find_sensitive(text)


def test_the_answer_never_holds_the_value() -> None:
    """The answer is one of the three fixed codes, never the matched text."""
    answers = {find_sensitive(text) for text in ["10.0.0.1", "a@b.example", "ghp_" + "a1" * 18]}
    assert {IP_ADDRESS, EMAIL_ADDRESS, SECRET_TOKEN} == answers
