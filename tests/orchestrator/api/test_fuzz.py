"""Contract fuzzing: schemathesis drives every operation of /v1/openapi.json against a live API.

`python -m orchestrator.cli api` (gunicorn) on Postgres, with a valid key; no worker runs, so
no callback is ever sent (and loopback callbacks are refused anyway). Positive and negative
cases for every operation; every answer must be a non-5xx that conforms to the document
(status code, content type, headers, body schema), and invalid input must be rejected.
The figures are printed (run with -s) and written to $ORCH_FUZZ_REPORT if set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import AcceptedNegativeData, FailureGroup, ServerError
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.netutil import free_port
from tests.conftest import make_key

pytestmark = [pytest.mark.slow, pytest.mark.committed]  # a stack or an API process reads the data
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
REAL_EXAMPLES = 10
MIN_REQUESTS = 1000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]


@pytest.fixture
def live_api(pg_url: str, tmp_path: Path, sessions: sessionmaker[Session]) -> Iterator[tuple[str, str, str]]:
    """A real `orchestrator api` process, a client key and an admin key of one tenant; stopped afterwards."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
           "ORCH_DATABASE_URL": pg_url, "ORCH_BROKER_URL": "filesystem://", "ORCH_DATA_DIR": str(tmp_path / "data"),
           "ORCH_STORAGE_URL": (tmp_path / "storage").as_uri(), "ORCH_SECRET_KEY": "fuzz-secret-key-0123456789",
           "ORCH_PUBLIC_URL": f"http://127.0.0.1:{port}", "ORCH_MAX_ITEMS_PER_BATCH": "2000",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "offline_dns"), os.getcwd(),
                                          os.environ.get("PYTHONPATH", "")])}
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "api", "--port", str(port), "--workers", "1",
                             "--threads", "4"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "api.log").read_text()[-4000:])
            time.sleep(0.2)
        yield url, make_key(sessions, "fuzz"), make_key(sessions, "fuzz", role="admin")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        if (tmp_path / "api.log").exists():
            server_log = (tmp_path / "api.log").read_text(errors="replace")
            assert "Traceback" not in server_log, server_log[-6000:]


def _kinds(exc: BaseException) -> list[str]:
    """Each check failure as a server error, a violation of the document, or a wrongly accepted input."""
    failures = list(exc.exceptions) if isinstance(exc, FailureGroup) else [exc]
    kinds = []
    for failure in failures:
        if isinstance(failure, ServerError):
            kinds.append("server error")
        elif isinstance(failure, AcceptedNegativeData):
            kinds.append("accepted invalid input")
        else:  # undocumented status or content type, missing header, body not matching its schema, ...
            kinds.append("schema violation")
    return kinds


class _Run:
    """Counts of one fuzz run."""

    def __init__(self, base_url: str, auth: dict[str, str], admin: dict[str, str]) -> None:
        self.base_url, self.auth, self.admin = base_url, auth, admin
        self.stats: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.session = requests.Session()

    def exercise(self, operation: Any, mode: GenerationMode, path_parameters: dict[str, str] | None = None,
                 examples: int | None = None) -> None:
        """Generate and send cases for one operation, recording every check failure."""
        checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS
        # Operations that need an admin key (they declare 403) get one most of the time.
        auth = self.admin if "403" in operation.definition.raw.get("responses", {}) else self.auth

        @settings(max_examples=examples or EXAMPLES[mode], deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        def one(case: schemathesis.Case) -> None:
            if self.stats["requests"] % 10:  # one case in ten goes without the key: the 401 must conform too
                case.headers = {**(case.headers or {}), **(auth if self.stats["requests"] % 5 else self.auth)}
            response = case.call(base_url=self.base_url, session=self.session, timeout=30)
            self.stats["requests"] += 1
            self.statuses[response.status_code] += 1
            # A request the HTTP server itself refuses as too long is rejected, just not by the app.
            run_checks = CHECKS if response.status_code in (414, 431) else checks
            try:
                case.validate_response(response, checks=run_checks)
            except (Exception, FailureGroup) as exc:  # FailureGroup is a BaseExceptionGroup
                for kind in _kinds(exc):
                    self.stats[kind] += 1
                if len(self.failures) < 10:
                    self.failures.append(f"{operation.label} [{mode.value}] {response.status_code}: {exc}\n"
                                         f"  {case.as_curl_command()}")

        try:
            one()
        except Unsatisfiable:
            # Nothing to break: e.g. no negative case exists for an operation without any input.
            self.stats[f"no {mode.value} cases"] += 1


def _resources(url: str, key: str) -> dict[str, str]:
    """A real batch, job and schedule, so cases also reach the answers of existing resources."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        batch = client.post("/v1/batches", json={"items": [{"model": "flux-schnell", "prompt": "a red fox"}]})
        job = client.get(f"/v1/batches/{batch.json()['id']}/jobs").json()["data"][0]
        schedule = client.post("/v1/schedules", json={"name": "fuzz", "cron": "0 2 * * *",
                                                      "template": {"items": [{"model": "flux-schnell",
                                                                              "prompt": "a red fox"}]}})
        return {"batch_id": batch.json()["id"], "job_id": job["id"], "schedule_id": schedule.json()["id"]}


def test_schemathesis_finds_no_server_error_and_no_schema_violation(live_api: tuple[str, str, str]) -> None:
    url, key, admin_key = live_api
    doc = httpx.get(f"{url}/v1/openapi.json").json()
    documented = doc["paths"]
    # Loaded from the document itself (from_url would leave out the operation that serves it).
    schema = schemathesis.openapi.from_dict(doc)
    run = _Run(url, {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {admin_key}"})
    ids = _resources(url, key)
    operations, deletes = [], []
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(operation.label)
        for mode in EXAMPLES:
            run.exercise(operation, mode)
        names = {p.name for p in operation.path_parameters}
        if names:  # and once more against the real resources (deleting the schedule last)
            real = {n: ids[n] for n in names}
            if operation.method.upper() == "DELETE":
                deletes.append((operation, real))
            else:
                run.exercise(operation, GenerationMode.POSITIVE, real, REAL_EXAMPLES)
    for operation, real in deletes:
        run.exercise(operation, GenerationMode.POSITIVE, real, REAL_EXAMPLES)
    figures = {"operations": len(operations), "requests": run.stats["requests"],
               "server_errors": sum(n for s, n in run.statuses.items() if s >= 500),
               "schema_violations": run.stats["schema violation"],
               "accepted_invalid_inputs": run.stats["accepted invalid input"],
               "seconds": round(time.monotonic() - started, 1), "statuses": dict(sorted(run.statuses.items()))}
    print("\nfuzz figures:", json.dumps(figures))
    if os.environ.get("ORCH_FUZZ_REPORT"):
        Path(os.environ["ORCH_FUZZ_REPORT"]).write_text(json.dumps(figures, indent=2))
    assert not run.failures, "\n\n".join(run.failures)
    assert figures["server_errors"] == 0 and figures["schema_violations"] == 0
    every = {f"{method.upper()} {path}" for path, ops in documented.items() for method in ops}
    assert set(operations) == every, every - set(operations)
    assert figures["requests"] >= MIN_REQUESTS, figures
