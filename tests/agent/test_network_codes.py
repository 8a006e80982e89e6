"""One code per way a request fails: the sinks, the alert hooks and the sent ledger share it."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from agent.network_codes import NETWORK_CODES, network_code


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (asyncio.CancelledError(), "cancelled"),
        (TimeoutError("connect to 10.0.0.1 timed out"), "timeout"),
        (aiohttp.ServerTimeoutError("read timed out"), "timeout"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "tls"),
        (aiohttp.ServerDisconnectedError(), "disconnected"),
        (ConnectionResetError(104, "reset by peer"), "connect"),
        (aiohttp.ClientPayloadError("truncated"), "protocol"),
        (ConnectionRefusedError(111, "refused"), "connect"),
        (aiohttp.InvalidURL("http://user:secret@host"), "client_error"),
        (ValueError("a bug, with text"), "error"),
    ],
)
def test_each_failure_has_one_fixed_code(exc: BaseException, code: str) -> None:
    """The code depends on the exception's type alone and is one of the documented few."""
    assert (code, True) == (network_code(exc), network_code(exc) in NETWORK_CODES)
