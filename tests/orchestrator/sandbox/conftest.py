"""Fixtures for the sandbox tests: sandboxes with shrunken latencies and retry pacing, a webhook receiver."""

from __future__ import annotations

from collections.abc import Iterator

import fal_client
import pytest

from orchestrator.sandbox import FAL_DEV_KEY, RUNWARE_DEV_KEY, FalSandbox, Faults, RunwareSandbox
from tests.http_helpers import LoopbackServer

FAST = Faults(latency_min=0.01, latency_max=0.03)


@pytest.fixture
def fal() -> Iterator[FalSandbox]:
    """A fal sandbox with the dev key, fast generations and fast webhook retries."""
    sandbox = FalSandbox(keys=(FAL_DEV_KEY,), faults=FAST, webhook_backoff=0.05, webhook_retries=3, webhook_timeout=1.0)
    with sandbox:
        yield sandbox


@pytest.fixture
def runware() -> Iterator[RunwareSandbox]:
    """A Runware sandbox with the dev key, fast generations and fast webhook retries."""
    sandbox = RunwareSandbox(
        keys=(RUNWARE_DEV_KEY,), faults=FAST, webhook_backoff=0.05, webhook_retries=3, webhook_timeout=1.0
    )
    with sandbox:
        yield sandbox


@pytest.fixture
def receiver() -> Iterator[LoopbackServer]:
    """A loopback HTTP server recording what the sandbox sends."""
    rec = LoopbackServer(body=b"ok")
    yield rec
    rec.close()


@pytest.fixture
def fal_client_for(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Return a factory of official fal clients pointed at a sandbox (see fal.md (f))."""

    def make(sandbox: FalSandbox, key: str = FAL_DEV_KEY) -> fal_client.SyncClient:
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", sandbox.url + "/")
        return fal_client.SyncClient(key=key)

    return make
