"""A provider callback is applied only to the job and attempt it belongs to (issue 9, defects 1 and 2).

Real API over HTTP, real worker processes, both sandboxes on loopback. The attacker holds a
validly signed fal delivery (any fal customer can get one for their own requests; here the
sandbox signs it, exactly as fal would) and a job's callback URL with its token.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.models import Asset, Delivery, Job, JobEvent, JobState
from orchestrator.sandbox import FAL_DEV_KEY, Faults
from orchestrator.sandbox.fal.webhooks import ok_body
from orchestrator.webhook_urls import attempt_token
from tests.conftest import StackFactory, make_key
from tests.stack import Stack, wait_for

pytestmark = pytest.mark.slow
FAL_ITEM = {"model": "fal-ai/flux/dev", "prompt": "a koi pond", "image_size": "square"}
RW_ITEM = {"model": "rundiffusion:130@100", "prompt": "a koi pond", "width": 384, "height": 256}


def _jobs(sessions: sessionmaker[Session], batch_id: str) -> dict[str, Job]:
    with sessions() as s:
        return {j.custom_id: j for j in s.scalars(sa.select(Job).where(Job.batch_id == uuid.UUID(batch_id)))}


def _url(stack: Stack, job: Job, attempt: int | None = None, token_attempt: int | None = None) -> str:
    attempt = attempt or job.attempt
    token = attempt_token(stack.settings().resolved_secret_key(), job.id, token_attempt or attempt)
    return f"{stack.api_url}/webhooks/{job.provider}/{job.id}/{attempt}?token={token}"


def _signed_delivery(stack: Stack, request_id: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A fal OK delivery for `request_id`, signed with the key fal publishes."""
    body = ok_body(request_id, payload)
    return body, stack.fal.signer.headers(request_id, stack.fal.config.user_id, body)


def _fal_result(stack: Stack, job: Job) -> dict[str, Any]:
    """What fal has for a job's request (its own result, fetched with our key)."""
    url = job.provider_meta["response_url"]

    def fetch() -> dict[str, Any] | None:
        resp = httpx.get(url, headers={"Authorization": f"Key {FAL_DEV_KEY}"})
        return resp.json() if resp.status_code == 200 and "images" in resp.text else None

    return wait_for(fetch, timeout=60, what="fal result")


def _events(sessions: sessionmaker[Session], job_id: uuid.UUID) -> list[JobEvent]:
    with sessions() as s:
        return list(s.scalars(sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_a_signed_delivery_for_another_job_is_refused_and_recorded(make_stack: StackFactory,
                                                                   sessions: sessionmaker[Session]) -> None:
    # No webhooks from the sandboxes and no sweep: the jobs wait in `submitted` for what we post.
    stack = make_stack(fal_faults=Faults(webhook_drop_rate=1.0), runware_faults=Faults(webhook_drop_rate=1.0))
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    items = [{**FAL_ITEM, "custom_id": "a"}, {**FAL_ITEM, "custom_id": "b"}, {**RW_ITEM, "custom_id": "r"}]
    batch = client.post("/v1/batches", json={"items": items}).json()
    jobs = wait_for(lambda: (j := _jobs(sessions, batch["id"])) and all(
        x.state is JobState.submitted for x in j.values()) and j, timeout=60, what="all submitted")
    a, b, r = jobs["a"], jobs["b"], jobs["r"]
    body, headers = _signed_delivery(stack, a.provider_request_id or "", _fal_result(stack, a))

    # A's delivery at B's URL, with B's own valid token: refused, recorded, B untouched.
    wrong = httpx.post(_url(stack, b), content=body, headers=headers)
    assert wrong.status_code == 409, wrong.text
    assert wrong.headers["content-type"].startswith("application/problem+json")
    assert "is not attempt 1's request" in wrong.json()["detail"]
    # A Runware body naming another taskUUID at R's URL: the same.
    other_task = {"data": [{"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "imageUUID": str(uuid.uuid4()),
                            "imageURL": f"{stack.runware.url}/image/x.jpg", "cost": 0.001}]}
    assert httpx.post(_url(stack, r), json=other_task).status_code == 409

    # A's delivery at A's URL: accepted (not "duplicate"), and A finishes with its own image.
    right = httpx.post(_url(stack, a), content=body, headers=headers)
    assert right.status_code == 200 and right.json()["status"] == "accepted", right.text
    wait_for(lambda: client.get(f"/v1/jobs/{a.id}").json()["state"] == "succeeded", timeout=60, what="A succeeded")
    assert client.get(f"/v1/jobs/{b.id}").json()["state"] == "submitted"
    with sessions() as s:
        refused = s.scalars(sa.select(Delivery).where(Delivery.rejection.is_not(None))).all()
        assert {(d.job_id, d.attempt) for d in refused} == {(b.id, 1), (r.id, 1)}
        assert all(not d.verified and d.event_key is None for d in refused)
        assert s.scalar(sa.select(sa.func.count()).select_from(Asset).where(Asset.job_id == b.id)) == 0
        stored = s.scalars(sa.select(Delivery).where(Delivery.verified.is_(True))).one()
        # The event key names the job and attempt, so no job's delivery can shadow another's.
        assert stored.event_key == f"fal:{a.id}:1:{a.provider_request_id}"


def test_a_delivery_before_the_submit_answer_is_held_never_applied_blindly(
        make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    # fal queues the request and calls back at once, but answers our submit call 4 s later.
    stack = make_stack(fal_faults=Faults(submit_answer_delay_seconds=4.0, latency_min=0.05, latency_max=0.1))
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": [{**FAL_ITEM, "custom_id": "x"}]}).json()
    job = wait_for(lambda: (j := _jobs(sessions, batch["id"])["x"]).submit_started_at and j, timeout=60, what="intent")
    # Meanwhile a validly signed delivery about some other fal request reaches the job's URL.
    foreign = str(uuid.uuid4())
    image = {"url": f"{stack.fal.url}/files/foreign.jpeg", "width": 64, "height": 64, "content_type": "image/jpeg"}
    body, headers = _signed_delivery(stack, foreign, {"images": [image], "seed": 1})
    held = httpx.post(_url(stack, job), content=body, headers=headers)
    assert held.status_code == 202 and held.json()["status"] == "held", held.text

    done = stack.wait_batch(client, batch["id"], timeout=90)
    assert done["state"] == "succeeded", stack.logs()
    with sessions() as s:
        row = s.get(Job, job.id)
        assert row is not None and row.provider_request_id not in (None, foreign)
        deliveries = {json.loads(d.body)["request_id"]: d for d in s.scalars(sa.select(Delivery))}
        assets = s.scalars(sa.select(Asset).where(Asset.job_id == job.id)).all()
    # The foreign one was held until the answer named the real request, then refused.
    assert deliveries[foreign].processed_at is not None and "not attempt 1's request" in deliveries[foreign].rejection
    # fal's genuine callback also came before the answer: held, then applied once the id was known.
    genuine = deliveries[row.provider_request_id]
    assert genuine.rejection is None and genuine.outcome == "storing"
    assert [a.source_url for a in assets] != [image["url"]] and len(assets) == 1
    kinds = [(e.kind, e.from_state) for e in _events(sessions, job.id)]
    assert ("delivery_refused", None) in kinds
    assert kinds.index(("submitted", "submitting")) < kinds.index(("result_received", "submitted"))


def test_a_token_opens_only_its_own_attempt(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    # The first submit fails (500), so the job runs as attempt 2.
    stack = make_stack(fal_faults=Faults(submit_500_rate=1.0, submit_fault_budget=1))
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    batch = client.post("/v1/batches", json={"items": [{**FAL_ITEM, "custom_id": "x"}]}).json()
    assert stack.wait_batch(client, batch["id"], timeout=90)["state"] == "succeeded", stack.logs()
    job = _jobs(sessions, batch["id"])["x"]
    assert job.attempt == 2
    with sessions() as s:
        genuine = s.scalars(sa.select(Delivery).where(Delivery.verified.is_(True))).one()
    secret = stack.settings().resolved_secret_key()
    assert attempt_token(secret, job.id, 1) != attempt_token(secret, job.id, 2)
    # The job's own signed delivery, posted to another attempt's URL with the token seen for attempt 1.
    for attempt in (1, 3):
        replay = httpx.post(_url(stack, job, attempt=2, token_attempt=attempt), content=genuine.body,
                            headers=genuine.headers)
        assert replay.status_code == 401 and replay.json()["detail"] == "wrong token"
    # At its own attempt's URL it is the same event again: folded as a duplicate, counted once.
    again = httpx.post(_url(stack, job), content=genuine.body, headers=genuine.headers)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    # At attempt 1's URL (with attempt 1's token) it is kept but never applied: that attempt's
    # submit failed, so no request id of attempt 1 will ever match it. The job has finished, so
    # the worker closes it as a late result instead of holding it forever.
    stale = httpx.post(_url(stack, job, attempt=1), content=genuine.body, headers=genuine.headers)
    assert stale.status_code == 202 and stale.json()["status"] == "held", stale.text
    with sessions() as s:
        refused = s.scalars(sa.select(Delivery).where(Delivery.verified.is_(False))).all()
        assert [(d.attempt, d.rejection) for d in refused] == [(2, "wrong token")] * 2
        assert s.scalar(sa.select(Delivery.duplicates).where(Delivery.id == genuine.id)) == 1
        held = s.scalars(sa.select(Delivery).where(Delivery.attempt == 1)).one()
        wait_for(lambda: s.refresh(held) or held.processed_at, timeout=60, what="held delivery examined")
        assert held.outcome == "ignored: job is succeeded" and held.event_key != genuine.event_key
    assert client.get(f"/v1/jobs/{job.id}").json()["state"] == "succeeded"
