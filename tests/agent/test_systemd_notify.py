"""The notify protocol against a real datagram socket on the file system."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.systemd import Notifier


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A service manager's notify socket that receives only when the test reads it."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()


def test_messages_arrive_as_datagrams(manager: tuple[socket.socket, str]) -> None:
    """READY=1 and WATCHDOG=1 reach the socket named by the address, one datagram each."""
    sock, path = manager
    notifier = Notifier(path)
    assert (True, True) == (notifier.ready(), notifier.watchdog())
    assert [b"READY=1", b"WATCHDOG=1"] == [sock.recv(64), sock.recv(64)]


def test_a_manager_that_does_not_read_never_stalls_the_caller(manager: tuple[socket.socket, str]) -> None:
    """With the manager's queue full, a send fails at once (a missed ping) instead of blocking the event loop."""
    _, path = manager
    notifier = Notifier(path)
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(notifier.watchdog() for _ in range(200)), daemon=True)
    sender.start()
    sender.join(timeout=10)
    assert not sender.is_alive()
    assert (200, True, False) == (len(results), results[0], results[-1])


def test_without_a_socket_nothing_is_sent() -> None:
    """Outside systemd every call is a no-op that says so."""
    assert (False, False) == (Notifier("").enabled, Notifier("").watchdog())
