"""Issue 9, defect 7: the admin role guards a route, callbacks to unknown paths are recorded, and
a provider's HTML error page is stored as a short plain-text summary."""

from __future__ import annotations

import uuid

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.models import Delivery, JobEvent
from orchestrator.sandbox import Faults
from tests.conftest import StackFactory, make_key


def test_an_admin_only_route_refuses_client_keys(api_url: str, sessions: sessionmaker[Session]) -> None:
    client_key, admin_key = make_key(sessions, "acme"), make_key(sessions, "acme", role="admin")
    body = {"daily_usd": 5}
    refused = httpx.put(f"{api_url}/v1/budget", json=body, headers={"Authorization": f"Bearer {client_key}"})
    assert refused.status_code == 403 and refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["detail"] == "this action needs an admin key"
    allowed = httpx.put(f"{api_url}/v1/budget", json=body, headers={"Authorization": f"Bearer {admin_key}"})
    assert allowed.status_code == 200, allowed.text
    assert httpx.put(f"{api_url}/v1/budget", json=body).status_code == 401


@pytest.mark.parametrize("path", [f"stripe/{uuid.uuid4()}/1?token=x", "fal", "runware/extra/parts/here/1"])
def test_a_callback_to_an_unknown_path_is_refused_and_recorded(api_url: str, sessions: sessionmaker[Session],
                                                               path: str) -> None:
    resp = httpx.post(f"{api_url}/webhooks/{path}", content=b'{"status": "OK"}' + b" " * 5000,
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 404 and resp.headers["content-type"].startswith("application/problem+json")
    with sessions() as s:
        row = s.scalars(sa.select(Delivery)).one()
    assert row.provider == path.split("/")[0] and not row.verified and row.job_id is None
    assert row.rejection in ("no webhook endpoint for this provider", "no such webhook endpoint")
    # Unauthenticated: a digest and a short prefix of the body, not the whole of it.
    assert len(row.body) == 1024 and row.headers["x-body-bytes"] == "5016"


@pytest.mark.slow
def test_a_provider_html_error_page_is_stored_as_a_short_summary(make_stack: StackFactory,
                                                                 sessions: sessionmaker[Session]) -> None:
    # fal's ingress answers the first submit with its nginx 503 page (no x-fal-request-id).
    stack = make_stack(fal_faults=Faults(submit_503_rate=1.0, submit_5xx_request_id_rate=0.0, submit_fault_budget=1))
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    item = {"model": "fal-ai/flux/dev", "prompt": "a koi pond", "custom_id": "x"}
    batch = client.post("/v1/batches", json={"items": [item]}).json()
    assert stack.wait_batch(client, batch["id"])["state"] == "succeeded", stack.logs()
    job = client.get(f"/v1/batches/{batch['id']}/jobs").json()["data"][0]
    answer = client.get(f"/v1/jobs/{job['id']}").text
    with sessions() as s:
        retry = s.scalars(sa.select(JobEvent).where(JobEvent.kind == "retry_scheduled")).one()
    error = retry.detail["error"]
    assert "503 Service Temporarily Unavailable (HTML error page)" in error and len(error) < 200
    for text in (error, answer):
        assert "<" not in text.replace("\\u003c", "<") and "nginx" not in text and "\\r\\n" not in text
