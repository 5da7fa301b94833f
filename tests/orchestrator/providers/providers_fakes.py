"""A scripted httpx.MockTransport standing in for fal and Runware in adapter tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

Handler = Callable[[httpx.Request], httpx.Response]


class FakeProvider:
    """Answers requests from a queue of scripted responses and records what was sent."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._responses: list[httpx.Response | Handler] = []

    def reply(self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """Queue one JSON (or raw bytes/str) response."""
        if isinstance(body, bytes | str):
            response = httpx.Response(status, content=body, headers=headers)
        else:
            response = httpx.Response(status, json=body, headers=headers)
        self._responses.append(response)

    def raise_error(self, exc: Exception) -> None:
        """Queue a transport failure."""

        def fail(request: httpx.Request) -> httpx.Response:
            raise exc

        self._responses.append(fail)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """MockTransport entry point."""
        self.requests.append(request)
        assert self._responses, f"unexpected request {request.method} {request.url}"
        next_response = self._responses.pop(0)
        return next_response(request) if callable(next_response) else next_response

    def client(self) -> httpx.Client:
        """An httpx client wired to this fake."""
        return httpx.Client(transport=httpx.MockTransport(self.handle))

    def json_sent(self, index: int = -1) -> Any:
        """Decoded JSON body of a recorded request."""
        return json.loads(self.requests[index].content)
