"""The embedded stack behind `orchestrator demo` and `orchestrator up`: nothing to install.

One process tree on loopback: SQLite and a filesystem broker in the data directory, both
provider sandboxes and the API in this process, and a real Celery worker (with its scheduler)
as a child process. Workers are started through the CLI, never imported here.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from orchestrator.sandbox import (
    FAL_DEV_KEY,
    RUNWARE_DEV_KEY,
    FalConfig,
    FalSandbox,
    Faults,
    RunwareConfig,
    RunwareSandbox,
    sandbox_env,
)
from orchestrator.settings import Settings


@dataclass
class EmbeddedStack:
    """Handles to the parts of a running embedded stack."""

    data_dir: Path
    api_port: int
    fal_port: int | None = None
    runware_port: int | None = None
    latency: tuple[float, float] = (0.3, 1.2)
    fal: FalSandbox | None = None
    runware: RunwareSandbox | None = None
    worker: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    settings: Settings | None = None  # what the API and the worker run with, once started
    _server: BaseWSGIServer | None = None
    _log: Any = None

    @property
    def api_url(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> EmbeddedStack:
        """Start sandboxes, migrate the database, serve the API, spawn the worker."""
        from orchestrator.api import create_app
        from orchestrator.migrate import upgrade

        self.data_dir.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on the console
        faults = Faults(latency_min=self.latency[0], latency_max=self.latency[1])
        # Quick webhook retries and nondeterministic faults for both sandboxes.
        self.fal = FalSandbox(FalConfig(port=self.fal_port, concurrency=16, keys=(FAL_DEV_KEY,), webhook_backoff=0.5,
                                        webhook_backoff_max=10.0, seed=None, faults=faults))
        self.fal.start()
        self.runware = RunwareSandbox(RunwareConfig(port=self.runware_port, keys=(RUNWARE_DEV_KEY,),
                                                    webhook_backoff=0.5, webhook_backoff_max=10.0, seed=None,
                                                    faults=faults))
        self.runware.start()
        self.env = self._environment()
        self.settings = Settings.from_env(self.env)
        upgrade(self.settings.resolved_database_url)
        self._server = make_server("127.0.0.1", self.api_port, create_app(self.settings), threaded=True)
        threading.Thread(target=self._server.serve_forever, name="api", daemon=True).start()
        self._log = open(self.data_dir / "worker.log", "ab")  # noqa: SIM115  (closed in stop())
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "worker", "--pool=threads", "--concurrency=8", "--beat"],
            env={**os.environ, **self.env}, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def _environment(self) -> dict[str, str]:
        assert self.fal is not None and self.runware is not None
        return {
            "ORCH_DATA_DIR": str(self.data_dir.resolve()), "ORCH_DATABASE_URL": "", "ORCH_BROKER_URL": "",
            "ORCH_STORAGE_URL": "", "ORCH_PUBLIC_URL": self.api_url, "ORCH_API_URL": self.api_url,
            **sandbox_env(self.fal.url, self.runware.url),
            "ORCH_FAL_MAX_IN_FLIGHT": "8", "ORCH_RUNWARE_MAX_IN_FLIGHT": "8",
            "ORCH_FAL_RATE_PER_SECOND": "50", "ORCH_RUNWARE_RATE_PER_SECOND": "50",
            "ORCH_SWEEP_INTERVAL_SECONDS": "2", "ORCH_POLL_AFTER_SECONDS": "10",
        }

    def stop(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL), the API and the sandboxes."""
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait(5)
        if self._server is not None:
            self._server.shutdown()
        for sandbox in (self.fal, self.runware):
            if sandbox is not None:
                sandbox.stop()
        if self._log is not None:
            self._log.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until /readyz says the database, broker and a consuming worker are fine."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited; see {self.data_dir / 'worker.log'}")
            try:
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the stack did not become ready in {timeout:.0f}s; see {self.data_dir / 'worker.log'}")

