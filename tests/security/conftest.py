"""Security tests talk to the real API over HTTP on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask
from werkzeug.serving import make_server

from orchestrator.netutil import free_port


@pytest.fixture
def api_url(app: Flask) -> Iterator[str]:
    """The test app on a real threaded HTTP server."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def http(api_url: str, headers: dict[str, str]) -> Iterator[httpx.Client]:
    """An authenticated client of the running API."""
    with httpx.Client(base_url=api_url, headers=headers, timeout=60) as client:
        yield client
