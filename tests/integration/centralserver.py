"""A scriptable central ingest v1 server on 127.0.0.1, for tests that run the real daemon."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Responder = Callable[[list[dict[str, Any]]], web.StreamResponse]


@dataclass
class Central:
    """Records every heartbeat received; ``respond`` decides each answer (default: 200)."""

    received: list[dict[str, Any]] = field(default_factory=list)
    acked: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    respond: Responder | None = None

    @property
    def acked_ids(self) -> set[str]:
        return {doc["id"] for doc in self.acked}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.headers.append(dict(request.headers))
        raw = await request.read()  # aiohttp undoes Content-Encoding: gzip itself
        batch = json.loads(raw)["heartbeats"]
        self.received.extend(batch)
        response = self.respond(batch) if self.respond else web.json_response({"accepted": len(batch)})
        if 200 <= response.status < 300:
            self.acked.extend(batch)
        return response

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/ingest/v1/heartbeats", self.handle)
        return app
