"""systemd's notify protocol over ``$NOTIFY_SOCKET``: readiness, watchdog, stopping.

A few lines of stdlib rather than a dependency. Outside systemd (no socket) every
call is a no-op.
"""

from __future__ import annotations

import math
import os
import socket


class Notifier:
    """Sends ``READY=1``, ``WATCHDOG=1`` and ``STOPPING=1`` to the service manager."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, message: str) -> bool:
        """Send one datagram; ``False`` if there is no socket or it failed."""
        if self._address is None:
            return False
        try:
            # Non-blocking: the loop calls this, and a manager whose queue is full must cost a
            # missed ping (sent again next period), never a stalled daemon.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")


def watchdog_period() -> float:
    """Half the watchdog interval systemd asked for (``$WATCHDOG_USEC``); without a watchdog, ``inf``."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else math.inf
