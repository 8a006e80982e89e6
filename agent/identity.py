"""The POP's id: a default that never silences the POP, and the check every id passes.

A host name that holds an address (cloud defaults such as ``ip-10-1-2-3``)
would get every heartbeat refused by the scrubber. The default then falls back
to an id derived from ``/etc/machine-id``; an explicit id the scrubber refuses
is a configuration error at start.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
from pathlib import Path

from agent.errors import ConfigError
from agent.privacy import find_sensitive
from agent.sample import POP_ID_PATTERN

MACHINE_ID_FILE = Path("/etc/machine-id")
# An application-specific id derived from the machine id, as sd_id128_get_machine_app_specific() does:
# stable per machine, and the machine id itself never leaves it.
_POP_ID_APP_KEY = b"pop-agent pop_id"


def host_slug(hostname: str) -> str:
    """A host name as a pop id: its first label, lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", hostname.split(".")[0].lower()).strip("-")[:63].rstrip("-")


def pop_id_problem(pop_id: str) -> str | None:
    """Why ``pop_id`` would get every heartbeat rejected by the scrubber, or ``None`` if it is safe."""
    if not re.fullmatch(POP_ID_PATTERN, pop_id):
        return "must be lower-case letters, digits and dashes, at most 63, starting with a letter or digit"
    reason = find_sensitive(pop_id)
    return f"the scrubber refuses it ({reason}): every heartbeat would be rejected" if reason else None


def default_pop_id(hostname: str | None = None, machine_id_file: Path = MACHINE_ID_FILE) -> str:
    """The host name as a slug; when that would fail the scrubber, an id derived from the machine id.

    Cloud hosts are often named after their address (``ip-10-1-2-3``), which the
    scrubber rightly refuses: a POP named so would be silent. Its fallback,
    ``pop-`` and 12 hex digits of an HMAC of ``/etc/machine-id``, is stable on the
    machine and reveals neither the address nor the machine id.
    """
    slug = host_slug(socket.gethostname() if hostname is None else hostname)
    if slug and pop_id_problem(slug) is None:
        return slug
    try:
        machine_id = machine_id_file.read_bytes().strip()
    except OSError:
        machine_id = b""
    if not machine_id:
        raise ConfigError(
            "pop_id (env POP_AGENT_POP_ID): the host name is not a safe id and there is no /etc/machine-id "
            "to derive one from: set pop_id"
        )
    return "pop-" + hmac.new(machine_id, _POP_ID_APP_KEY, hashlib.sha256).hexdigest()[:12]
