"""A whole running system for end-to-end tests, all on loopback.

Both provider sandboxes in-process, the API on a real threaded HTTP server, and real
`orchestrator worker` / `orchestrator beat` processes talking to the test Postgres and Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from orchestrator import webhook_urls
from orchestrator.models import FINAL_BATCH
from orchestrator.netutil import free_port
from orchestrator.sandbox import FalConfig, FalSandbox, Faults, RunwareConfig, RunwareSandbox, sandbox_env
from orchestrator.settings import Settings
from tests.http_helpers import LoopbackServer, WsgiServer

FAST = {
    "ORCH_POLL_AFTER_SECONDS": "3", "ORCH_POLL_INTERVAL_SECONDS": "1", "ORCH_CLAIM_STALE_SECONDS": "3",
    "ORCH_STORING_STALE_SECONDS": "5", "ORCH_SWEEP_INTERVAL_SECONDS": "1", "ORCH_RETRY_BASE_SECONDS": "0.2",
    "ORCH_RETRY_MAX_SECONDS": "2", "ORCH_CALLBACK_TIMEOUT_SECONDS": "8",
    "ORCH_UNKNOWN_OUTCOME_WINDOW_SECONDS": "8", "ORCH_BREAKER_COOLDOWN_SECONDS": "2",
}


def wait_for(check: Callable[[], Any], timeout: float = 90, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Stack:
    """Handles to every running part."""

    fal: FalSandbox
    runware: RunwareSandbox
    api_url: str
    env: dict[str, str]
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _server: WsgiServer | None = None

    def settings(self) -> Settings:
        """Settings equivalent to the worker processes' environment."""
        return Settings.from_env(self.env)

    def submissions(self, provider: str, outcome: str = "accepted") -> list[dict[str, Any]]:
        """What a sandbox received, filtered by outcome."""
        sandbox = self.fal if provider == "fal" else self.runware
        return [s for s in sandbox.ledger.submissions if s.get("outcome") == outcome]

    def submissions_per_job(self, provider: str) -> dict[str, int]:
        """Accepted submissions counted by the job id in their webhook URL."""
        counts: dict[str, int] = {}
        for sub in self.submissions(provider):
            found = webhook_urls.parse(sub.get("webhook_url"))
            job_id = str(found.job_id) if found else ""
            counts[job_id] = counts.get(job_id, 0) + 1
        return counts

    def start_worker(self, name: str = "w1", concurrency: int = 4, queues: str | None = None,
                     extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one `orchestrator worker` process."""
        args = [sys.executable, "-m", "orchestrator.cli", "worker", f"--name={name}",
                f"--concurrency={concurrency}"]
        if queues:
            args.append(f"--queues={queues}")
        return self._spawn(args, name, extra_env)

    def start_api(self, port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a real `orchestrator api` (gunicorn) on `port`; returns once /healthz answers."""
        proc = self._spawn([sys.executable, "-m", "orchestrator.cli", "api", f"--port={port}", "--workers=1",
                            "--threads=8"], "api", extra_env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the API did not start\n{self.logs()}")

    def start_beat(self) -> subprocess.Popen[bytes]:
        """Start the scheduler (sweeps every second)."""
        return self._spawn([sys.executable, "-m", "orchestrator.cli", "beat"], "beat")

    def _spawn(self, args: list[str], name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(args, env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal a process and its children."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def logs(self) -> str:
        """Everything the processes printed (for failure messages)."""
        logs = sorted(self.tmp.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}" for p in logs)

    def client(self, key: str) -> httpx.Client:
        """An API client with a bearer key."""
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def wait_batch(self, client: httpx.Client, batch_id: str, timeout: float = 90,
                   until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Poll the API until the batch is final (or `until` holds)."""
        deadline = time.monotonic() + timeout
        batch: dict[str, Any] = {}
        while time.monotonic() < deadline:
            batch = client.get(f"/v1/batches/{batch_id}").json()
            if (until or _final)(batch):
                return batch
            time.sleep(0.25)
        raise AssertionError(f"batch not done in {timeout}s: {batch}\n{self.logs()}")

    def stop(self) -> None:
        """Stop everything."""
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)
        if self._server is not None:
            self._server.close()
        self.fal.stop()
        self.runware.stop()


def _final(batch: dict[str, Any]) -> bool:
    return batch.get("state") in FINAL_BATCH


def start_stack(pg_url: str, redis_url: str, tmp: Path, *, fal_faults: Faults | None = None,
                runware_faults: Faults | None = None, env: dict[str, str] | None = None,
                fal_concurrency: int = 100, api_env: dict[str, str] | None = None,
                runware_config: dict[str, Any] | None = None) -> Stack:
    """Start sandboxes and the API; workers are started by the test."""
    redis.Redis.from_url(redis_url).flushdb()
    quick = {"webhook_backoff": 0.2, "webhook_backoff_max": 1.0, "webhook_timeout": 5.0, "seed": 7}
    fal = FalSandbox(FalConfig(faults=fal_faults or Faults(), concurrency=fal_concurrency, **quick))
    fal.start()
    runware = RunwareSandbox(RunwareConfig(faults=runware_faults or Faults(), **{**quick, **(runware_config or {})}))
    runware.start()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
        "ORCH_DATABASE_URL": pg_url, "ORCH_BROKER_URL": redis_url, "ORCH_DATA_DIR": str(tmp / "data"),
        "ORCH_STORAGE_URL": (tmp / "storage").as_uri(), "ORCH_PUBLIC_URL": api_url, "ORCH_API_URL": api_url,
        "ORCH_SECRET_KEY": "e2e-secret-key-0123456789", **sandbox_env(fal.url, runware.url),
        "ORCH_FAL_MAX_IN_FLIGHT": "8", "ORCH_FAL_RATE_PER_SECOND": "200", "ORCH_RUNWARE_MAX_IN_FLIGHT": "8",
        "ORCH_RUNWARE_RATE_PER_SECOND": "200",
        "ORCH_CALLBACK_ALLOW_PRIVATE": "true",  # the tests' callback receivers are on loopback
        **FAST, **(env or {}),
    }
    stack = Stack(fal, runware, api_url, full_env, tmp)
    from orchestrator.api import create_app

    api_settings = Settings.from_env({**full_env, **(api_env or {})})
    app = create_app(api_settings)
    stack._server = WsgiServer(app, port)
    return stack


class CallbackReceiver:
    """A real HTTP endpoint on loopback that records what clients' callback URLs receive."""

    def __init__(self, status: int = 200, first: tuple[int, ...] = ()) -> None:
        self._server = LoopbackServer(status=status, path="/hooks/batch?tenant=acme")
        self._server.statuses.extend(first)  # statuses for the first calls, then `status`
        self.url = self._server.url

    @property
    def calls(self) -> list[tuple[dict[str, str], bytes]]:
        """(lower-cased headers, body) of every call, in arrival order."""
        return [({k.lower(): v for k, v in c.headers.items()}, c.body) for c in self._server.calls]

    def close(self) -> None:
        """Stop listening."""
        self._server.close()
