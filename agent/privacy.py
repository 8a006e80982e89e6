"""Tripwires for what must never leave a POP: IP addresses, e-mail addresses, secrets.

The scrubber's allowlist decides which strings a heartbeat may hold at all; these
detectors are the second line, run on every string anywhere in the document.
They answer with a fixed reason code and never with the matched text, so the
answer itself can be logged and counted.

IP addresses are found by a small parser rather than the widely copied regexes,
which match part of an address and leave the rest in clear. Candidates are cut
by the address grammar alone: any '::' with the groups around it, any eight
colon-separated groups of one to four hex digits (a window, so that a neighbouring
word such as "face:" cannot hide the address), the same with dashes or underscores
for colons ('--' or '__' for '::', as DNS names and metric paths write IPv6), any
four octets joined by dots, dashes, underscores or slashes, mixed or not (leading
zeros, octal and hex octets included, parsed here because ``ipaddress`` rejects
them). ``ipaddress`` has the last word on each candidate. The text is also read
percent-decoded (%5B, %3A, %25) and as a person reads it (NFKC, invisible
characters dropped, other scripts' digits and look-alike separators as ASCII).
Every scan is linear in the length of the text.

Secret tokens: JWTs, PEM blocks, long hex or mixed-case base64 runs, a bearer
credential, and the vendor prefixes of :mod:`agent.token_prefixes`. Standard
library only and free of side effects at import, so the collectors can use it.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterator

from agent.token_prefixes import KnownTokens

IP_ADDRESS = "ip_address"
EMAIL_ADDRESS = "email_address"
# A reason code, not a credential.
SECRET_TOKEN = "secret_token"  # noqa: S105

# Double-encoded URLs (%255B) are common enough; a third layer is not worth a pass.
_MAX_DECODE_ROUNDS = 2
# Every candidate handed to ipaddress is built to be valid, so the first one
# decides; the bound only guards against a parser bug turning into unbounded work.
_MAX_PARSES = 64

# No anchors on purpose: a window may start inside a longer hex word and stop
# inside the next one ("cafe2001:db8:0:0:0:0:0:1"); the search still tries
# each start position with a bounded amount of backtracking, so it stays linear.
_HEXTET = r"[0-9A-Fa-f]{1,4}"
_V6_EIGHT_GROUPS = re.compile(rf"{_HEXTET}(?::{_HEXTET}){{7}}")
# An octet as inet_aton and people read it: leading zeros, octal (0377), hex (0xff).
# The lookbehind keeps the engine from restarting inside a digit run.
_OCTET = r"(?:0[xX][0-9A-Fa-f]{1,2}|0*+(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]?)|0++[0-3][0-7]{2}|0++)"
# Any of the separators people and tools put between octets, mixed or not: dots,
# dashes (ip-10-0-0-1.ec2.internal), underscores (Prometheus' and Graphite's
# 10_0_0_7), slashes (a mount /srv/10/0/0/7).
_V4_SEPARATORS = "._/-"
# The leading lookahead lets the engine give up at once wherever no digit starts.
_V4 = re.compile(
    rf"(?=[0-9])(?<![0-9]){_OCTET}[{_V4_SEPARATORS}]{_OCTET}[{_V4_SEPARATORS}]{_OCTET}[{_V4_SEPARATORS}]{_OCTET}(?![0-9])"
)
_V4_SPLIT = re.compile(rf"[{_V4_SEPARATORS}]")
_FOUR_DIGITS = re.compile(r"[0-9](?:[^0-9]*+[0-9]){3}")
# IPv6 with its colons written as dashes or underscores (2001-db8-0-0-0-0-0-1,
# 2001_db8_..., as DNS names and metric paths write it): eight groups, mixed or not.
# Not dots: eight dotted numbers are a version or an OID far more often.
_V6_EIGHT_RESPELT = re.compile(rf"{_HEXTET}(?:[_-]{_HEXTET}){{7}}")
# ... and compressed: '--' or '__' for '::' (2001-db8--1, fe80__1). A group is a whole
# run of hex digits, and two groups at least are needed, so that neither "backup--daily"
# (no group before, "da" after) nor a bare "--" is read as an address; where a letter
# is glued on ("code--base"), a digit is needed too (see _v6_compressed_respelt).
# The expression itself asks for a group on some side, so that a megabyte of "x--"
# gives the loop below nothing to do.
_V6_COMPRESSED_RESPELT = tuple(
    re.compile(
        rf"(?<![0-9A-Fa-f])"
        rf"(?:(?:{_HEXTET}{sep}){{1,7}}{sep}(?:{_HEXTET}(?:{sep}{_HEXTET}){{0,6}})?|{sep}{{2}}{_HEXTET}(?:{sep}{_HEXTET}){{1,6}})"
        rf"(?![0-9A-Fa-f])"
    )
    for sep in ("-", "_")  # one separator throughout, as tools write it: base64url's "A_-0" is no address
)
_V6_RESPELT_SPLIT = re.compile(r"[_-]")
# Seven groups of at most four digits, and a little slack for one over-long group.
_NEIGHBOURHOOD = 40
_HEX_TAIL = re.compile(r"[0-9A-Fa-f:]*\Z")
_HEX_HEAD = re.compile(r"[0-9A-Fa-f:]*")
_ARPA_V6 = re.compile(r"((?:[0-9A-Fa-f]\.){32})ip6\.arpa", re.IGNORECASE)

# The '@' comes first so that the engine can skip ahead to it; the local part is
# checked by hand, one character before it.
_EMAIL_DOMAIN = re.compile(r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]{1,62}")
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.!#$%&'*+/=?^_`{|}~-")
_PERCENT_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# Characters that show as nothing (or as a mark on the character before), by block:
# ASCII and C1 controls, soft hyphen, combining marks, Arabic letter mark, Hangul
# fillers, Khmer and Mongolian invisibles, zero-width and bidi controls, word joiner
# and invisible operators, variation selectors, BOM, tag characters.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u0300-\u036f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u1ab0-\u1aff\u1dc0-\u1dff\u200b-\u200f\u202a-\u202e\u2060-\u206f\u20d0-\u20ff\u3164"
    "\ufe00-\ufe0f\ufe20-\ufe2f\ufeff\uffa0\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
_ASCII_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
# Dots, dashes and colons NFKC leaves alone but a reader takes for ASCII ones.
_LOOKALIKE_SEPARATORS = str.maketrans(
    {
        **dict.fromkeys("\u3002\uff61\u2024\u2027\u00b7\u0701\u0702", "."),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58", "-"),
        **dict.fromkeys("\u2236\u02d0\ua789\u05c3\u0589\u1361\u16ec\ufe30", ":"),
    }
)
# Python's \d is every script's decimal digits; those not ASCII are read as their value.
_NON_ASCII_DIGIT = re.compile(r"(?![0-9])\d")

_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]++\.[A-Za-z0-9_-]++\.")
_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32}")
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}+")
_KNOWN_TOKENS = KnownTokens()
_BEARER = re.compile(r"(?i:bearer)\s++[A-Za-z0-9._~+/-]{8}")
_UPPER = re.compile(r"[A-Z]")
_LOWER = re.compile(r"[a-z]")
_DIGIT = re.compile(r"[0-9]")
_MIN_ENCODED_LEN = 32


def find_sensitive(text: str) -> str | None:
    """Return the reason code of the first kind of sensitive data in ``text``, else None.

    Kinds are checked in the order IP address, e-mail address, secret token, in
    the text as given and in its percent-decoded and NFKC-normalised forms. The
    matched value is never returned.
    """
    renderings = _renderings(text)
    detectors: tuple[tuple[str, Callable[[str], bool]], ...] = (
        (IP_ADDRESS, _has_ip_address),
        (EMAIL_ADDRESS, _has_email_address),
        (SECRET_TOKEN, _has_secret_token),
    )
    for code, detect in detectors:
        if any(detect(rendering) for rendering in renderings):
            return code
    return None


def _renderings(text: str) -> list[str]:
    """The forms of ``text`` worth scanning: as given, normalised, percent-decoded."""
    forms = [text]
    current = text
    if not text.isascii() or _ASCII_CONTROL.search(text):
        current = _as_read(text)
        if current != text:
            forms.append(current)
    for _ in range(_MAX_DECODE_ROUNDS):
        if "%" not in current:
            break
        decoded = _PERCENT_ESCAPES.sub(_decode_escapes, current)
        if decoded == current:
            break
        forms.append(decoded)
        current = decoded
    if "ipv6-literal.net" in current.lower():
        # Windows UNC spelling: 2001-db8--1.ipv6-literal.net.
        forms.append(current.replace("-", ":"))
    return forms


def _as_read(text: str) -> str:
    """``text`` as a person reads it: compatibility forms folded, invisible characters gone.

    Full-width digits and colons (NFKC folds them), other scripts' digits, dots,
    dashes and colons that only look alike, and zero-width, bidi, tag, control and
    combining characters placed inside an address, are all an address to a reader.
    """
    folded = unicodedata.normalize("NFKC", text)
    folded = _INVISIBLE.sub("", folded).translate(_LOOKALIKE_SEPARATORS)
    return _NON_ASCII_DIGIT.sub(_ascii_digit, folded)


def _ascii_digit(digit: re.Match[str]) -> str:
    return str(unicodedata.decimal(digit.group(), 0))


def _decode_escapes(escapes: re.Match[str]) -> str:
    # bytes.fromhex rather than urllib's unquote, whose per-escape Python loop
    # takes half a second over a megabyte of '%'.
    return bytes.fromhex(escapes.group().replace("%", "")).decode("utf-8", errors="replace")


def _has_ip_address(text: str) -> bool:
    for parsed, (candidate, parse) in enumerate(_ip_candidates(text)):
        if parsed >= _MAX_PARSES:
            # Fail closed: a string that exhausts the budget is not provably clean.
            return True
        try:
            parse(candidate)
        except ValueError:
            continue
        return True
    return False


def _ip_candidates(text: str) -> Iterator[tuple[str, Callable[[str], object]]]:
    """Candidate addresses in ``text``, each with the ``ipaddress`` parser that judges it."""
    double = text.find("::")
    if double >= 0:
        yield _v6_around_double_colon(text, double), ipaddress.IPv6Address
    if text.count(":") >= 7:
        for match in _V6_EIGHT_GROUPS.finditer(text):
            yield match.group(), ipaddress.IPv6Address
    # Four digits first: most names hold fewer, and the search is cheaper than the counts.
    if _FOUR_DIGITS.search(text) and sum(text.count(separator) for separator in _V4_SEPARATORS) >= 3:
        for match in _V4.finditer(text):
            yield _v4_canonical(_V4_SPLIT.split(match.group())), ipaddress.IPv4Address
    if text.count("-") + text.count("_") >= 7:
        for match in _V6_EIGHT_RESPELT.finditer(text):
            yield ":".join(_V6_RESPELT_SPLIT.split(match.group())), ipaddress.IPv6Address
    for doubled, expression in zip(("--", "__"), _V6_COMPRESSED_RESPELT, strict=True):
        if doubled not in text:
            continue
        at = 0
        while (run := expression.search(text, at)) is not None:
            glued = text[run.start() - 1 : run.start()].isalnum() or text[run.end() : run.end() + 1].isalnum()
            if (candidate := _v6_compressed_respelt(run.group(), needs_digit=glued)) is not None:
                yield candidate, ipaddress.IPv6Address
                at = run.end()
            else:
                # A word's hex letters may have taken the doubled separator that starts
                # an address ("node___ffff_0_0" matched "de__"): look again from it.
                at = text.index(doubled, run.start()) + 1
    if "ip6.arpa" in text.lower():
        for match in _ARPA_V6.finditer(text):
            nibbles = match.group(1).replace(".", "")[::-1]
            yield ":".join(nibbles[i : i + 4] for i in range(0, 32, 4)), ipaddress.IPv6Address


def _v6_around_double_colon(text: str, double: int) -> str:
    """The IPv6 window around the '::' at ``double``: up to seven groups on its two sides.

    A group longer than four digits contributes its four digits nearest the '::',
    so a hex word glued to an address ("cafe2001::1") cannot hide it.
    """
    before = _HEX_TAIL.search(text, max(0, double - _NEIGHBOURHOOD), double)
    after = _HEX_HEAD.match(text, double + 2, double + 2 + _NEIGHBOURHOOD)
    left = _edge_groups(before.group().split(":")[::-1] if before else [], take_tail=True)[::-1]
    right = _edge_groups(after.group().split(":") if after else [], take_tail=False)
    right = right[: 7 - len(left)]
    return ":".join(left) + "::" + ":".join(right)


def _edge_groups(groups: list[str], *, take_tail: bool) -> list[str]:
    """Groups next to a '::', nearest first, up to seven, an empty group or an over-long one."""
    taken: list[str] = []
    for group in groups[:7]:
        if not group:
            break
        if len(group) > 4:
            taken.append(group[-4:] if take_tail else group[:4])
            break
        taken.append(group)
    return taken


def _v6_compressed_respelt(text: str, *, needs_digit: bool) -> str | None:
    """The '::' form of a dashed or underscored compressed address, or None if it is too short to be one.

    Under two groups is too short; so is a run without a digit where ``needs_digit``
    (a letter glued on: "code--base" is words). More than seven groups (a long run
    before the '--') keep the seven nearest it.
    """
    left_text, right_text = re.split(r"--|__", text, maxsplit=1)
    left = [group for group in _V6_RESPELT_SPLIT.split(left_text) if group]
    right = [group for group in _V6_RESPELT_SPLIT.split(right_text) if group]
    if len(left) + len(right) < 2 or (needs_digit and _DIGIT.search(text) is None):
        return None
    right = right[:7]
    left = left[len(left) - (7 - len(right)) :] if len(left) + len(right) > 7 else left
    return ":".join(left) + "::" + ":".join(right)


def _v4_canonical(groups: list[str]) -> str:
    """Dotted-quad text of four octets the grammar accepted, for ipaddress to judge."""
    return ".".join(str(_octet(group)) for group in groups)


def _octet(group: str) -> int | None:
    """An octet as inet_aton and humans read it: leading zeros, octal or 0x hex."""
    if group[:2] in ("0x", "0X"):
        digits = group[2:]
        if 1 <= len(digits) <= 2 and all(c in "0123456789abcdefABCDEF" for c in digits):
            return int(digits, 16)
        return None
    if not group or not group.isdigit():
        return None
    stripped = group.lstrip("0") or "0"
    if len(stripped) > 3:
        return None
    if int(stripped) <= 255:
        return int(stripped)
    if group[0] == "0" and all(c in "01234567" for c in stripped) and int(stripped, 8) <= 255:
        return int(stripped, 8)
    return None


def _has_email_address(text: str) -> bool:
    if "@" not in text:
        return False
    return any(at.start() > 0 and text[at.start() - 1] in _EMAIL_LOCAL for at in _EMAIL_DOMAIN.finditer(text))


def _has_secret_token(text: str) -> bool:
    if "-----BEGIN" in text:
        return True
    if _JWT.search(text) or _HEX_RUN.search(text) or _BEARER.search(text) or _KNOWN_TOKENS.search(text):
        return True
    for match in _BASE64_RUN.finditer(text):
        run = match.group()
        # A path's segments are words; judging the whole path would flag
        # mounts such as /media/Backup-Drive2/Archive2024.
        parts = run.split("/") if run.startswith("/") else [run]
        if any(_looks_encoded(part) for part in parts):
            return True
    return False


def _looks_encoded(run: str) -> bool:
    return (
        len(run) >= _MIN_ENCODED_LEN
        and _UPPER.search(run) is not None
        and _LOWER.search(run) is not None
        and _DIGIT.search(run) is not None
    )
