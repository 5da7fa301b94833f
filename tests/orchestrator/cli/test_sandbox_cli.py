"""`orchestrator sandbox fal|runware` runs until SIGTERM/SIGINT and honours its options."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from orchestrator.cli.sandbox import sandbox
from orchestrator.netutil import free_port

LAUNCH = "from orchestrator.cli.sandbox import sandbox; sandbox()"


def wait_healthy(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/_sandbox/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("sandbox did not come up")


@pytest.mark.parametrize(
    ("provider", "args", "fault", "value", "stop"),
    [
        ("fal", ["--concurrency", "3", "--failure-rate", "0.25", "--key", "a:b"], "failure_rate", 0.25, signal.SIGTERM),
        ("runware", ["--webhook-flat", "--fault", "webhook_duplicates=3"], "webhook_duplicates", 3, signal.SIGINT),
    ],
)
def test_cli_serves_until_signalled(provider: str, args: list[str], fault: str, value: object, stop: int) -> None:
    port = free_port()
    cmd = [sys.executable, "-c", LAUNCH, provider, "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        assert httpx.get(url + "/_sandbox/faults").json()[fault] == value
        proc.send_signal(stop)
        output, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert f"{provider} sandbox on {url}" in output and f"{provider} sandbox stopped" in output


def test_cli_rejects_unknown_fault() -> None:
    result = CliRunner().invoke(sandbox, ["fal", "--fault", "nope=1"])
    assert result.exit_code != 0 and "unknown fault" in result.output
