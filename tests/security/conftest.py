"""Security tests talk to the real API over HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from flask import Flask

from tests.http_helpers import WsgiServer


@pytest.fixture
def api_url(app: Flask) -> Iterator[str]:
    """The test app on a real threaded HTTP server."""
    with WsgiServer(app) as server:
        yield server.url


@pytest.fixture
def http(api_url: str, headers: dict[str, str]) -> Iterator[httpx.Client]:
    """An authenticated client of the running API."""
    with httpx.Client(base_url=api_url, headers=headers, timeout=60) as client:
        yield client
