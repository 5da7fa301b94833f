"""A real S3-compatible server (moto in server mode) on loopback, and AWS settings that point only at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from orchestrator.netutil import free_port


@contextmanager
def moto_server() -> Iterator[str]:
    """Run moto on a free loopback port; yields its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def use_dummy_aws(monkeypatch: pytest.MonkeyPatch, nowhere: Path) -> dict[str, str]:
    """Dummy credentials for this process, no host AWS config leaking in; returns them for child processes."""
    aws = {"AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST", "AWS_SECRET_ACCESS_KEY": "dummy-secret-access-key",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(nowhere),
           "AWS_SHARED_CREDENTIALS_FILE": str(nowhere)}
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return aws
