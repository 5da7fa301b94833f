"""Dispatch properties against real workers, Redis, Postgres and the sandboxes over HTTP."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.models import JobEvent
from orchestrator.sandbox import Faults
from tests.conftest import StackFactory, make_key

pytestmark = pytest.mark.slow


def _items(n: int, model: str = "fal-ai/flux/schnell", **extra: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"j{i}", "model": model, "prompt": f"a lighthouse, study {i}", "image_size": "square",
             **extra} for i in range(n)]


def test_three_workers_hold_the_in_flight_limit(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=Faults(latency_min=0.3, latency_max=0.6), env={"ORCH_FAL_MAX_IN_FLIGHT": "3"})
    for name in ("w1", "w2", "w3"):
        stack.start_worker(name, concurrency=4)
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _items(24)}).json()
    done = stack.wait_batch(client, batch["id"], timeout=120)
    assert done["state"] == "succeeded", stack.logs()
    assert stack.fal.ledger.peak_inflight() <= 3
    assert stack.fal.ledger.peak_inflight() >= 2  # the pipe was actually kept full
    per_job = stack.submissions_per_job("fal")
    assert len(per_job) == 24 and set(per_job.values()) == {1}


def test_429_storm_honours_retry_after(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    faults = Faults(submit_429_rate=1.0, submit_fault_budget=4, retry_after=1.0)
    stack = make_stack(fal_faults=faults, env={"ORCH_FAL_MAX_IN_FLIGHT": "1"})
    stack.start_worker("w1")
    stack.start_worker("w2")
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _items(3)}).json()
    assert stack.wait_batch(client, batch["id"], timeout=60)["state"] == "succeeded", stack.logs()
    subs = stack.fal.ledger.submissions
    assert [s.get("http_status") for s in subs].count(429) == 4
    for earlier, later in itertools.pairwise(subs):
        if earlier.get("http_status") == 429:
            assert later["time"] - earlier["time"] >= 0.95, "a request went out before Retry-After"
    assert set(stack.submissions_per_job("fal").values()) == {1}


def test_permanent_validation_error_fails_only_that_job(make_stack: StackFactory,
                                                        sessions: sessionmaker[Session]) -> None:
    # Our catalog allows 2048 px on Runware; this account's sandbox only 1024, so Runware itself says no.
    stack = make_stack(runware_config={"max_side": 1024})
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    items = [{"custom_id": "ok", "model": "runware:100@1", "prompt": "a calm sea", "width": 512, "height": 512},
             {"custom_id": "too-wide", "model": "runware:100@1", "prompt": "a calm sea", "width": 1536,
              "height": 512}]
    batch = client.post("/v1/batches", json={"items": items}).json()
    done = stack.wait_batch(client, batch["id"])
    assert done["state"] == "partially_failed", stack.logs()
    jobs = {j["custom_id"]: j for j in client.get(f"/v1/batches/{batch['id']}/jobs").json()["data"]}
    assert jobs["ok"]["state"] == "succeeded"
    bad = jobs["too-wide"]
    assert bad["state"] == "failed" and "width" in bad["error_message"] and bad["error_code"]
    assert len(stack.submissions("runware", "rejected")) == 1  # failed fast: not retried


def test_worker_killed_mid_dispatch_loses_nothing_and_pays_once(make_stack: StackFactory,
                                                                 sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=Faults(latency_min=0.4, latency_max=0.8))
    first = stack.start_worker("w1", concurrency=8)
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _items(30)}).json()
    deadline = time.monotonic() + 30
    while len(stack.fal.ledger.submissions) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    stack.kill(first)  # SIGKILL the whole worker, mid-flight
    stack.start_worker("w2", concurrency=8)
    done = stack.wait_batch(client, batch["id"], timeout=120)
    assert done["state"] == "succeeded", stack.logs()
    per_job = stack.submissions_per_job("fal")
    assert len(per_job) == 30 and set(per_job.values()) == {1}, per_job


def test_broker_down_at_intake_then_database_finishes(make_stack: StackFactory,
                                                     sessions: sessionmaker[Session]) -> None:
    stack = make_stack(api_env={"ORCH_BROKER_URL": "redis://127.0.0.1:1/0"})  # the API cannot publish
    client = stack.client(make_key(sessions, "acme"))
    resp = client.post("/v1/batches", json={"items": _items(3)})
    assert resp.status_code == 201  # a failed send never fails the request
    time.sleep(1)
    assert client.get(f"/v1/batches/{resp.json()['id']}").json()["counts"]["queued"] == 3
    stack.start_worker("w1")
    stack.start_beat()  # the sweep finds the work in the database
    assert stack.wait_batch(client, resp.json()["id"], timeout=60)["state"] == "succeeded", stack.logs()


def test_timed_out_submit_is_not_resent_and_early_callback_finds_its_job(
        make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    # fal accepts the request and calls back, but our submit call never gets an answer.
    faults = Faults(submit_timeout_rate=1.0, submit_timeout_seconds=2.0, submit_timeout_accepts=True,
                    submit_fault_budget=1, latency_min=0.05, latency_max=0.1)
    stack = make_stack(fal_faults=faults)
    stack.start_worker("w1")
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _items(1)}).json()
    assert stack.wait_batch(client, batch["id"], timeout=60)["state"] == "succeeded", stack.logs()
    assert len(stack.fal.ledger.submissions) == 1  # never resent blindly
    with sessions() as s:
        events = {e.kind: e for e in s.scalars(sa.select(JobEvent).order_by(JobEvent.id))}
    # The submit never got its answer (no request id was recorded): the callback URL found the job
    # and attempt, the delivery was held, and its signed request id was adopted only once fal
    # confirmed it knows that request under our key.
    assert events["submitted"].from_state == "submitting" and events["submitted"].detail["adopted"]
    assert events["submit_outcome_unknown"].attempt == events["submitted"].attempt
    assert "retry_scheduled" not in events and "stored" in events


def test_failing_provider_trips_breaker_and_alias_jobs_fail_over(make_stack: StackFactory,
                                                                 sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=Faults(submit_500_rate=1.0), env={"ORCH_BREAKER_THRESHOLD": "2"})
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    items = [{"custom_id": "alias", "model": "flux-schnell", "prompt": "a red fox", "image_size": "square"},
             {"custom_id": "pinned", "model": "fal-ai/flux/schnell", "prompt": "a red fox"}]
    batch = client.post("/v1/batches", json={"items": items}).json()
    done = stack.wait_batch(client, batch["id"], timeout=90)
    jobs = {j["custom_id"]: j for j in client.get(f"/v1/batches/{batch['id']}/jobs").json()["data"]}
    moved = client.get(f"/v1/jobs/{jobs['alias']['id']}").json()
    assert moved["state"] == "succeeded" and moved["provider"] == "runware" and moved["model"] == "runware:100@1"
    failover = [e for e in moved["events"] if e["kind"] == "failover"]
    assert failover and failover[0]["detail"] == {"from": "fal-ai/flux/schnell", "to": "runware:100@1",
                                                  "reason": failover[0]["detail"]["reason"]}
    assert "breaker open" in failover[0]["detail"]["reason"]
    # A job pinned to fal cannot move: it retries with backoff and fails after its attempts.
    assert jobs["pinned"]["state"] == "failed" and "gave up after" in jobs["pinned"]["error_message"]
    assert done["state"] == "partially_failed"


def test_cancel_reaches_fal_and_late_results_are_ignored(make_stack: StackFactory,
                                                         sessions: sessionmaker[Session]) -> None:
    # Each request would take 60 s, so none can finish on its own before the cancel however
    # loaded the machine is: every job ends by cancellation, and fal reports each one (499).
    stack = make_stack(fal_faults=Faults(latency_min=60.0, latency_max=60.0), fal_concurrency=1)
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _items(4)}).json()
    stack.wait_batch(client, batch["id"], timeout=180, until=lambda b: b["counts"]["submitted"] == 4)
    cancelled = client.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelled["cancelled_jobs"] == 4 and cancelled["state"] == "cancelled"
    jobs = client.get(f"/v1/batches/{batch['id']}/jobs").json()["data"]

    def timeline() -> list[dict[str, Any]]:
        return [e for j in jobs for e in client.get(f"/v1/jobs/{j['id']}").json()["events"]]

    # Wait for the condition (four late results recorded), not for a time: each needs a cancel
    # task, fal's webhook and the webhook task, all slower when the machine is busy.
    deadline = time.monotonic() + 180
    events = timeline()
    # fal's 499 webhook can be recorded before the cancel task records fal's answer: wait for both.
    while (sum(e["kind"] == "late_result_ignored" for e in events) < 4
           or sum(e["kind"] == "provider_cancel" and e["detail"]["accepted"] for e in events) < 4) \
            and time.monotonic() < deadline:
        time.sleep(0.3)
        events = timeline()
    assert sum(e["kind"] == "provider_cancel" and e["detail"]["accepted"] for e in events) == 4
    # fal's answers for the cancelled requests were recorded on each job and changed nothing.
    assert sum(e["kind"] == "late_result_ignored" for e in events) == 4
    assert {client.get(f"/v1/jobs/{j['id']}").json()["state"] for j in jobs} == {"cancelled"}
    assert not any(d.get("kind") == "upload" for d in stack.fal.ledger.deliveries)
    states = {stack.fal.request_state(j["provider_request_id"]) for j in jobs}
    assert states == {"COMPLETED"}  # queued ones were dropped, the running one was stopped
