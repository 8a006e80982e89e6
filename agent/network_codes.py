"""One fixed code for each way an HTTP request can fail without an answer.

The upload sinks (their failure code, in ``agent status`` and the backoff), the
alert hooks (their log lines) and the sent ledger (a record's ``status``) all
name a failed request with this one function, so a TLS failure reads ``tls``
in each of them, not ``tls`` in one and ``connect`` in another. The code is
chosen from the exception's type alone: its text, which may hold an address or a
URL, never goes anywhere.
"""

from __future__ import annotations

import asyncio
import ssl

NETWORK_CODES = ("cancelled", "timeout", "tls", "dns", "disconnected", "protocol", "connect", "client_error", "error")


def network_code(exc: BaseException) -> str:
    """The fixed code (one of :data:`NETWORK_CODES`) a request that got no answer fails with.

    The most specific test comes first: aiohttp's certificate and DNS errors are
    also connection errors, and its read timeout is also a client error.
    """
    import aiohttp  # where a request has failed, aiohttp is loaded: an agent that sends nothing need not load it

    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ClientConnectorCertificateError | ssl.SSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "protocol"
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return "connect"
    if isinstance(exc, aiohttp.ClientError):
        return "client_error"
    return "error"
