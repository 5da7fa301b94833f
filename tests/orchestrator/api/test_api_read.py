"""Listing, pagination, cancel, models, OpenAPI and health endpoints."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from orchestrator import metrics
from orchestrator.db import utcnow
from orchestrator.models import Heartbeat

ITEM = {"model": "fal-ai/flux/schnell", "prompt": "a red fox"}


def _batch(client: FlaskClient, headers: dict[str, str], n: int = 1) -> str:
    resp = client.post("/v1/batches", json={"items": [{**ITEM, "custom_id": f"c{i}"} for i in range(n)]},
                       headers=headers)
    assert resp.status_code == 201
    return str(resp.json["id"])


def test_batches_keyset_pagination(client: FlaskClient, headers: dict[str, str]) -> None:
    ids = [_batch(client, headers) for _ in range(5)]
    seen, cursor = [], None
    while True:
        url = "/v1/batches?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=headers).json
        seen += [b["id"] for b in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


def test_jobs_pagination_and_state_filter(client: FlaskClient, headers: dict[str, str]) -> None:
    bid = _batch(client, headers, 7)
    page1 = client.get(f"/v1/batches/{bid}/jobs?limit=3", headers=headers).json
    page2 = client.get(f"/v1/batches/{bid}/jobs?limit=3&cursor={page1['next_cursor']}", headers=headers).json
    assert [j["position"] for j in page1["data"] + page2["data"]] == list(range(6))
    assert client.get(f"/v1/batches/{bid}/jobs?state=queued", headers=headers).json["data"][0]["state"] == "queued"
    assert client.get(f"/v1/batches/{bid}/jobs?state=failed", headers=headers).json["data"] == []
    bad = client.get(f"/v1/batches/{bid}/jobs?state=bogus", headers=headers)
    assert bad.status_code == 400 and "unknown state" in bad.json["detail"]
    assert client.get(f"/v1/batches/{bid}/jobs?cursor=%%%", headers=headers).status_code == 400
    assert client.get(f"/v1/batches/{bid}/jobs?limit=0", headers=headers).status_code == 400


def test_cancel_queued_batch_at_once(client: FlaskClient, headers: dict[str, str]) -> None:
    bid = _batch(client, headers, 3)
    resp = client.post(f"/v1/batches/{bid}/cancel", headers=headers)
    assert resp.status_code == 200 and resp.json["cancelled_jobs"] == 3
    assert resp.json["state"] == "cancelled" and resp.json["counts"]["cancelled"] == 3
    job = client.get(f"/v1/batches/{bid}/jobs", headers=headers).json["data"][0]
    events = client.get(f"/v1/jobs/{job['id']}", headers=headers).json["events"]
    assert [e["kind"] for e in events] == ["cancelled"]
    again = client.post(f"/v1/batches/{bid}/cancel", headers=headers)
    assert again.json["cancelled_jobs"] == 0 and again.json["state"] == "cancelled"


def test_models_and_openapi(client: FlaskClient) -> None:
    models = client.get("/v1/models").json
    assert {m["id"] for m in models["data"]} == {
        "fal-ai/flux/dev", "fal-ai/flux/schnell", "fal-ai/flux-lora", "rundiffusion-fal/juggernaut-flux/lightning",
        "rundiffusion:130@100", "runware:100@1", "runware:101@1"}
    assert models["aliases"]["flux-schnell"] == ["fal-ai/flux/schnell", "runware:100@1"]
    spec = client.get("/v1/openapi.json").json
    assert spec["openapi"].startswith("3.1") and "BatchRequest" in spec["components"]["schemas"]
    assert "items" in spec["components"]["schemas"]["BatchRequest"]["properties"]
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(r.rule))
              for r in client.application.url_map.iter_rules() if str(r.rule).startswith("/v1/")}
    assert routes == set(spec["paths"]), "every /v1 route is documented"


@pytest.mark.committed
def test_health_and_readiness_needs_a_consuming_worker(client: FlaskClient, sessions) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["worker"].startswith("error: no worker")
    assert ready.json["checks"]["database"] == "ok" and ready.json["checks"]["broker"] == "ok"
    with sessions.begin() as s:
        s.add(Heartbeat(name="maintenance", seen_at=utcnow()))
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"] == {"database": "ok", "broker": "ok", "worker": "ok"}
    with sessions.begin() as s:
        s.execute(sa.update(Heartbeat).values(seen_at=utcnow() - timedelta(minutes=5)))
    assert client.get("/readyz").json["checks"]["worker"].startswith("error: last consumed")


def test_metrics_exposition(client: FlaskClient, headers: dict[str, str], sessions) -> None:  # type: ignore[no-untyped-def]
    _batch(client, headers, 3)
    with sessions.begin() as s:
        metrics.incr(s, "orchestrator_provider_requests_total", provider="fal", call="submit", outcome="accepted",
                     code=200)
        metrics.incr(s, "orchestrator_provider_requests_total", provider="fal", call="submit", outcome="accepted",
                     code=200)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'orchestrator_jobs{state="queued"} 3' in text
    assert 'orchestrator_jobs{state="succeeded"} 0' in text
    assert 'orchestrator_in_flight_limit{provider="fal"} 2' in text
    assert ('orchestrator_provider_requests_total{call="submit",code="200",outcome="accepted",provider="fal"} 2'
            in text)
    assert "orchestrator_callback_to_stored_seconds_count 0" in text


def test_readyz_reports_unreachable_broker(app, client: FlaskClient) -> None:  # type: ignore[no-untyped-def]
    app.extensions["orchestrator"].settings.broker_url = "redis://127.0.0.1:1/0"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["broker"].startswith("error")


def test_unknown_route_is_problem(client: FlaskClient) -> None:
    resp = client.get("/v1/nope")
    assert resp.status_code == 404 and resp.mimetype == "application/problem+json"
