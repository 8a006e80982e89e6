"""Tripwires for what must never leave a POP: IP addresses, e-mail addresses, secrets.

The scrubber's allowlist decides which strings a heartbeat may hold at all; these
detectors are the second line, run on every string anywhere in the document.
They answer with a fixed reason code and never with the matched text, so the
answer itself can be logged and counted.

IP addresses are found by a small parser rather than one big regex: the text is
cut into candidate runs (hex digits and colons, digits and dots, digits and
dashes), each run is trimmed to the window that could be an address, and
``ipaddress`` has the last word. The widely copied IPv6 regexes match part of an
address and leave the rest in clear; a window over colon-separated groups cannot
stop half way. Every scan is linear in the length of the text.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterator
from urllib.parse import unquote

IP_ADDRESS = "ip_address"
EMAIL_ADDRESS = "email_address"
# A reason code, not a credential.
SECRET_TOKEN = "secret_token"  # noqa: S105

# Double-encoded URLs (%255B) are common enough; a third layer is not worth a pass.
_MAX_DECODE_ROUNDS = 2
# Every candidate handed to ipaddress is built to be valid, so the first one
# decides; the bound only guards against a parser bug turning into unbounded work.
_MAX_PARSES = 64

# Runs are anchored at their start by the lookbehind and matched possessively, so
# the engine never rescans the inside of a run: the scans stay linear.
_V6_RUN = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]*+(?::[0-9A-Fa-f]*+){2,}+")
_V4_DOTTED_RUN = re.compile(r"(?<![0-9.])[0-9]*+(?:\.[0-9]*+){3,}+")
_V4_DASHED_RUN = re.compile(r"(?<![0-9-])[0-9]*+(?:-[0-9]*+){3,}+")
_V4_HEX_RUN = re.compile(r"(?<![0-9A-Fa-fXx.])[0-9A-Fa-fXx]*+(?:\.[0-9A-Fa-fXx]*+){3,}+")
_ARPA_V6 = re.compile(r"((?:[0-9A-Fa-f]\.){32})ip6\.arpa", re.IGNORECASE)

_EMAIL = re.compile(
    r"(?<=[A-Za-z0-9._%+!#$&'*/=?^`{|}~-])@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,16}[A-Za-z]{2,63}"
)

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]++\.[A-Za-z0-9_-]++\.")
_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32}")
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}+")
_KNOWN_TOKEN = re.compile(
    r"gh[pousr]_[A-Za-z0-9]{20}"
    r"|github_pat_[A-Za-z0-9_]{20}"
    r"|xox[baprs]-[A-Za-z0-9-]{10}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|[rs]k_live_[A-Za-z0-9]{10}"
    r"|(?i:bearer)\s++[A-Za-z0-9._~+/-]{8}"
)
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
    if not text.isascii():
        # Full-width digits and colons are addresses to anyone who reads them.
        current = unicodedata.normalize("NFKC", text)
        if current != text:
            forms.append(current)
    for _ in range(_MAX_DECODE_ROUNDS):
        if "%" not in current:
            break
        decoded = unquote(current, errors="replace")
        if decoded == current:
            break
        forms.append(decoded)
        current = decoded
    if "ipv6-literal.net" in current.lower():
        # Windows UNC spelling: 2001-db8--1.ipv6-literal.net.
        forms.append(current.replace("-", ":"))
    return forms


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
    for match in _V6_RUN.finditer(text):
        candidate = _v6_candidate(match.group())
        if candidate is not None:
            yield candidate, ipaddress.IPv6Address
    for pattern, separator in ((_V4_DOTTED_RUN, "."), (_V4_DASHED_RUN, "-")):
        for match in pattern.finditer(text):
            candidate = _v4_candidate(match.group().split(separator))
            if candidate is not None:
                yield candidate, ipaddress.IPv4Address
    if "0x" in text or "0X" in text:
        for match in _V4_HEX_RUN.finditer(text):
            candidate = _v4_candidate(match.group().split("."))
            if candidate is not None:
                yield candidate, ipaddress.IPv4Address
    if "ip6.arpa" in text.lower():
        for match in _ARPA_V6.finditer(text):
            nibbles = match.group(1).replace(".", "")[::-1]
            yield ":".join(nibbles[i : i + 4] for i in range(0, 32, 4)), ipaddress.IPv6Address


def _v6_candidate(run: str) -> str | None:
    """The window of a hex-and-colon run that could be an IPv6 address, if any.

    A group longer than four digits can still end or start an address that a hex
    word was glued to ("cafe2001:db8::1"), so it contributes its last or first
    four digits at the edge of a window.
    """
    double = run.find("::")
    if double >= 0:
        left = _edge_groups(run[:double].split(":")[::-1], take_tail=True)[::-1]
        right = _edge_groups(run[double + 2 :].split(":"), take_tail=False)
        left = left[len(left) - min(len(left), 7) :]
        right = right[: 7 - len(left)]
        return ":".join(left) + "::" + ":".join(right)
    window: list[str] = []
    for group in run.split(":"):
        if not group:
            window = []
        elif len(group) <= 4:
            window.append(group)
        else:
            window.append(group[:4])
            if len(window) >= 8:
                break
            window = [group[-4:]]
        if len(window) >= 8:
            break
    if len(window) >= 8:
        return ":".join(window[:8])
    return None


def _edge_groups(groups: list[str], *, take_tail: bool) -> list[str]:
    """Groups next to a '::', nearest first, up to an empty or over-long group."""
    taken: list[str] = []
    for group in groups[:7]:
        if not group:
            break
        if len(group) > 4:
            taken.append(group[-4:] if take_tail else group[:4])
            break
        taken.append(group)
    return taken


def _v4_candidate(groups: list[str]) -> str | None:
    """Four consecutive groups that read as IPv4 octets, as a canonical dotted quad."""
    octets: list[int] = []
    for group in groups:
        value = _octet(group)
        if value is None:
            octets = []
            continue
        octets.append(value)
        if len(octets) == 4:
            return ".".join(str(octet) for octet in octets)
    return None


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
    return "@" in text and _EMAIL.search(text) is not None


def _has_secret_token(text: str) -> bool:
    if "-----BEGIN" in text:
        return True
    if _JWT.search(text) or _HEX_RUN.search(text) or _KNOWN_TOKEN.search(text):
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
