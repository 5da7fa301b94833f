"""Webhook, reconciliation and storage properties against real workers and sandboxes."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from orchestrator.models import Asset, Delivery, JobEvent
from orchestrator.sandbox import Faults
from orchestrator.webhook_urls import attempt_token
from tests.conftest import StackFactory, make_key
from tests.stack import CallbackReceiver

pytestmark = pytest.mark.slow


def _mixed(n: int) -> list[dict[str, Any]]:
    fal = [{"custom_id": f"f{i}", "model": "fal-ai/flux/dev", "prompt": f"a koi pond {i}", "image_size": "square",
            "num_images": 2} for i in range(n)]
    rw = [{"custom_id": f"r{i}", "model": "rundiffusion:130@100", "prompt": f"a koi pond {i}", "width": 384,
           "height": 256, "num_images": 3} for i in range(n)]
    return fal + rw


def _manifest(client: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.get(f"/v1/batches/{batch_id}/results").text.splitlines()]


def _events(sessions: sessionmaker[Session]) -> list[JobEvent]:
    with sessions() as s:
        return list(s.scalars(sa.select(JobEvent).order_by(JobEvent.id)))


def test_duplicates_drops_and_reordering_store_every_image_once(make_stack: StackFactory,
                                                                sessions: sessionmaker[Session]) -> None:
    noisy = {"webhook_duplicate_rate": 1.0, "webhook_duplicates": 3, "webhook_duplicate_concurrent": True,
             "webhook_drop_rate": 0.3, "webhook_reorder_window": 0.3}
    stack = make_stack(fal_faults=Faults(**noisy), runware_faults=Faults(**noisy))
    stack.start_worker("w1", concurrency=6)
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _mixed(5)}).json()
    assert stack.wait_batch(client, batch["id"], timeout=120)["state"] == "succeeded", stack.logs()
    lines = _manifest(client, batch["id"])
    assert sum(len(line["images"]) for line in lines) == 5 * 2 + 5 * 3
    for line in lines:
        assert sorted(i["index"] for i in line["images"]) == list(range(len(line["images"])))
        for image in line["images"]:
            path = stack.tmp / "storage" / image["storage_key"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == image["sha256"]
    with sessions() as s:
        assets = s.scalars(sa.select(Asset)).all()
        assert len(assets) == 25 and all(a.stored_at for a in assets)
        assert s.scalar(sa.select(sa.func.sum(Delivery.duplicates))) > 0  # duplicates were seen and folded
    assert set(stack.submissions_per_job("fal").values()) == {1}
    assert set(stack.submissions_per_job("runware").values()) == {1}


@pytest.mark.parametrize("fault", ["webhook_bad_signature_rate", "webhook_stale_timestamp_rate",
                                   "webhook_unknown_key_rate"])
def test_forged_fal_webhooks_are_refused_and_polling_finishes(make_stack: StackFactory, fault: str,
                                                               sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=Faults(**{fault: 1.0}))
    stack.start_worker("w1")
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _mixed(1)[:1]}).json()
    assert stack.wait_batch(client, batch["id"], timeout=60)["state"] == "succeeded", stack.logs()
    with sessions() as s:
        rejected = s.scalars(sa.select(Delivery).where(Delivery.verified.is_(False))).all()
    assert rejected and all((d.rejection or "").startswith("bad signature") for d in rejected)
    assert any(e.kind == "poll" for e in _events(sessions))
    statuses = {d["status"] for d in stack.fal.ledger.webhooks() if "status" in d}
    assert statuses <= {401}


def test_tampered_body_wrong_token_and_unknown_job(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack()
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _mixed(1)}).json()
    assert stack.wait_batch(client, batch["id"])["state"] == "succeeded", stack.logs()
    with sessions() as s:
        fal = s.scalars(sa.select(Delivery).where(Delivery.provider == "fal", Delivery.verified.is_(True))).first()
        assert fal is not None
        job_url = f"{stack.api_url}/webhooks/fal/{fal.job_id}/{fal.attempt}"
        from orchestrator.models import Job

        job = s.get(Job, fal.job_id)
        assert job is not None
        token = attempt_token(stack.settings().resolved_secret_key(), job.id, fal.attempt)
    headers = dict(fal.headers)
    tampered = fal.body.replace(b'"OK"', b'"ERROR"')
    replay = httpx.post(f"{job_url}?token={token}", content=tampered, headers=headers)
    assert replay.status_code == 401 and "signature" in replay.json()["detail"]
    same = httpx.post(f"{job_url}?token={token}", content=fal.body, headers=headers)
    assert same.status_code == 200 and same.json()["status"] == "duplicate"  # a genuine retry: recorded once
    assert httpx.post(f"{job_url}?token=wrong", content=fal.body, headers=headers).status_code == 401
    unknown = f"{stack.api_url}/webhooks/runware/00000000-0000-4000-8000-000000000000/1?token=x"
    assert httpx.post(unknown, content=b"x" * 100_000).status_code == 404
    with sessions() as s:
        rejected = s.scalars(sa.select(Delivery).where(Delivery.verified.is_(False))).all()
        assert len(rejected) == 3
        stranger = next(d for d in rejected if d.rejection == "no such job")
        # An unauthenticated body is kept as a digest and a prefix only.
        assert len(stranger.body) == 1024 and stranger.headers["x-body-bytes"] == "100000"
        tampered_row = next(d for d in rejected if (d.rejection or "").startswith("bad signature"))
        assert tampered_row.body == tampered


def test_late_failure_after_success_changes_nothing(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack()
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _mixed(1)[1:]}).json()
    assert stack.wait_batch(client, batch["id"])["state"] == "succeeded", stack.logs()
    job = client.get(f"/v1/batches/{batch['id']}/jobs").json()["data"][0]
    with sessions() as s:
        from orchestrator.models import Job

        row = s.get(Job, __import__("uuid").UUID(job["id"]))
        assert row is not None
        token = attempt_token(stack.settings().resolved_secret_key(), row.id, row.attempt)
        url = f"{stack.api_url}/webhooks/runware/{row.id}/{row.attempt}?token={token}"
        task = row.task_id
    late = {"errors": [{"code": "timeoutProvider", "message": "late", "taskUUID": task, "status": "error"}]}
    assert httpx.post(url, json=late).status_code == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(e.kind == "late_result_ignored" for e in _events(sessions)):
        time.sleep(0.2)
    assert any(e.kind == "late_result_ignored" for e in _events(sessions))
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded"


def test_dropped_webhooks_are_finished_by_polling(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=Faults(webhook_drop_rate=1.0), runware_faults=Faults(webhook_drop_rate=1.0))
    stack.start_worker("w1")
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _mixed(2)}).json()
    assert stack.wait_batch(client, batch["id"], timeout=90)["state"] == "succeeded", stack.logs()
    assert sum(len(line["images"]) for line in _manifest(client, batch["id"])) == 2 * 2 + 2 * 3
    assert [e for e in _events(sessions) if e.kind == "result_received"]


def test_expired_result_fails_cleanly_as_retryable(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=Faults(webhook_drop_rate=1.0, media_ttl=0.5))
    stack.start_worker("w1")
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _mixed(1)[:1]}).json()
    done = stack.wait_batch(client, batch["id"], timeout=60)
    assert done["state"] == "failed", stack.logs()
    job = client.get(f"/v1/batches/{batch['id']}/jobs").json()["data"][0]
    assert job["error_code"] == "result_expired"
    assert len(stack.fal.ledger.submissions) == 1  # not silently paid for again
    retried = client.post(f"/v1/batches/{batch['id']}/retry").json()
    assert retried["requeued_jobs"] == 1 and retried["state"] == "running"


def test_payload_null_fetches_the_result(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=Faults(payload_error_rate=1.0))
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": _mixed(2)[:2]}).json()
    assert stack.wait_batch(client, batch["id"])["state"] == "succeeded", stack.logs()
    assert sum(1 for e in _events(sessions) if e.kind == "webhook" and e.detail.get("status") == "fetch_result") == 2


def test_client_callback_is_signed_and_sent_once(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    receiver = CallbackReceiver()
    try:
        stack = make_stack(runware_faults=Faults(failure_rate=1.0, failure_status=422))
        stack.start_worker("w1")
        client = stack.client(make_key(sessions, "acme"))
        body = {"callback_url": receiver.url, "items": _mixed(1)}
        batch = client.post("/v1/batches", json=body).json()
        assert stack.wait_batch(client, batch["id"])["state"] == "partially_failed", stack.logs()
        deadline = time.monotonic() + 15
        while not receiver.calls and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert len(receiver.calls) == 1
        headers, raw = receiver.calls[0]
        secret = client.get("/v1/callback-secret").json()["secret"]
        event = Webhook(secret).verify(raw, headers)
        assert event["type"] == "batch.completed" and event["data"]["id"] == batch["id"]
        # Standard Webhooks' payload timestamp is RFC 3339, like every time we send; the link is absolute.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", event["timestamp"])
        assert event["data"]["completed_at"].endswith("+00:00")
        assert event["data"]["results_url"] == f"{stack.api_url}/v1/batches/{batch['id']}/results"
        assert client.get(event["data"]["results_url"]).status_code == 200
        assert event["data"]["counts"] == {**event["data"]["counts"], "succeeded": 1, "failed": 1}
        with pytest.raises(Exception):
            Webhook(secret).verify(raw.replace(b"partially_failed", b"succeeded"), headers)
    finally:
        receiver.close()


def test_client_callback_is_retried_until_accepted(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    receiver = CallbackReceiver(first=(500, 503))
    try:
        stack = make_stack()
        stack.start_worker("w1")
        client = stack.client(make_key(sessions, "acme"))
        batch = client.post("/v1/batches", json={"callback_url": receiver.url, "items": _mixed(1)[:1]}).json()
        assert stack.wait_batch(client, batch["id"])["state"] == "succeeded", stack.logs()
        deadline = time.monotonic() + 30
        while len(receiver.calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        assert len(receiver.calls) == 3  # two refusals, then delivered once; never again after that
        ids = {headers["webhook-id"] for headers, _ in receiver.calls}
        assert len(ids) == 1  # the same event id on every retry, so the client can de-duplicate
    finally:
        receiver.close()
