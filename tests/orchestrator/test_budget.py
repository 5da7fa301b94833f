"""Estimates (dry run), budget caps at submit and at dispatch, and their problem documents."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import budget, state
from orchestrator.db import utcnow
from orchestrator.models import Batch, Job, JobEvent, JobState, TenantBudget
from orchestrator.settings import Settings
from tests.conftest import make_key
from workers import admission

SCHNELL = {"model": "fal-ai/flux/schnell", "image_size": "square_hd"}  # $0.003 per image


def items(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"j{i}", "prompt": f"a lighthouse {i}", **SCHNELL, **extra} for i in range(n)]


def rows(session: Session) -> tuple[int, int]:
    return (session.scalar(sa.select(sa.func.count()).select_from(Batch)) or 0,
            session.scalar(sa.select(sa.func.count()).select_from(Job)) or 0)


def claim_settings(**kw: Any) -> Settings:
    return Settings(fal_max_in_flight=100, fal_rate_per_second=1000, runware_max_in_flight=100,
                    runware_rate_per_second=1000, budget_recheck_seconds=60, **kw)


def claim_all(session: Session, settings: Settings, now: Any = None) -> list[Any]:
    out = []
    for provider in ("fal", "runware"):
        out += admission.claim(session, settings, provider, now or utcnow()).jobs
    session.commit()
    return out


def admin_headers(sessions: sessionmaker[Session], tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(sessions, tenant, role='admin')}"}


def test_dry_run_estimates_and_writes_nothing(client: FlaskClient, headers: dict[str, str], session: Session) -> None:
    body = {"dry_run": True, "items": [*items(2, num_images=2),
                                       {"custom_id": "r", "model": "runware:100@1", "prompt": "a koi pond",
                                        "width": 1024, "height": 1024},
                                       {"custom_id": "big", "prompt": "a cliff", "model": "fal-ai/flux/dev",
                                        "width": 1536, "height": 1024}]}
    resp = client.post("/v1/batches", json=body, headers=headers)
    assert resp.status_code == 200, resp.json
    est = resp.json
    assert est["dry_run"] is True and est["jobs"] == 4 and est["images"] == 6
    assert est["megapixels"] == 4 + 1 + 2
    assert est["estimated_cost"] == pytest.approx(4 * 0.003 + 0.0013 + 2 * 0.025)
    assert est["cost_range"] == {"min": est["estimated_cost"], "max": est["estimated_cost"]}  # no aliases
    by_model = {r["model"]: r for r in est["by_model"]}
    assert by_model["fal-ai/flux/schnell"] == {"provider": "fal", "model": "fal-ai/flux/schnell", "jobs": 2,
                                              "images": 4, "megapixels": 4, "cost": pytest.approx(0.012)}
    assert by_model["runware:100@1"]["provider"] == "runware"
    assert est["budget"]["daily_usd"] is None and est["budget"]["spent_today_usd"] == 0
    assert rows(session) == (0, 0)


def test_dry_run_jsonl_and_alias_range(client: FlaskClient, headers: dict[str, str]) -> None:
    body = "\n".join(json.dumps({"prompt": f"a fox {i}", "model": "flux-dev", "image_size": "square_hd"})
                     for i in range(3))
    resp = client.post("/v1/batches?dry_run=true", data=body, headers={**headers,
                                                                       "Content-Type": "application/x-ndjson"})
    assert resp.status_code == 200, resp.json
    # fal dev first ($0.025/MP); Runware dev ($0.0038/MP) if it fails over: the range covers both.
    assert resp.json["estimated_cost"] == pytest.approx(0.075)
    assert resp.json["cost_range"] == {"min": pytest.approx(3 * 0.0038), "max": pytest.approx(0.075)}


def test_dry_run_validates_exactly_as_submit(client: FlaskClient, headers: dict[str, str], session: Session) -> None:
    bad = {"items": [{"custom_id": "a", "prompt": "x", "model": "fal-ai/flux/schnell", "steps": 99}]}
    real = client.post("/v1/batches", json=bad, headers=headers)
    dry = client.post("/v1/batches", json={**bad, "dry_run": True}, headers=headers)
    assert real.status_code == dry.status_code == 422
    assert real.json["errors"] == dry.json["errors"]
    over = {"items": items(10), "max_cost_usd": 0.01}
    assert client.post("/v1/batches", json={**over, "dry_run": True}, headers=headers).json["cap"] == "max_cost_usd"
    assert rows(session) == (0, 0)


def test_batch_that_can_never_fit_fails_fast(client: FlaskClient, headers: dict[str, str], session: Session) -> None:
    resp = client.post("/v1/batches", json={"items": items(10), "max_cost_usd": 0.029}, headers=headers)
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    assert resp.json["type"].endswith("/budget-exceeded") and resp.json["cap"] == "max_cost_usd"
    assert resp.json["limit"] == 0.029 and resp.json["estimated_cost"] == pytest.approx(0.03)
    assert "max_cost_usd $0.029" in resp.json["detail"] and resp.json["errors"][0]["field"] == "max_cost_usd"
    assert rows(session) == (0, 0)
    ok = client.post("/v1/batches", json={"items": items(10), "max_cost_usd": 0.03}, headers=headers)
    assert ok.status_code == 201 and ok.json["max_cost_usd"] == 0.03 and ok.json["estimated_cost"] == 0.03


@pytest.mark.parametrize("value", [0, -1, "lots", True, 10**7])
def test_invalid_max_cost_is_a_field_problem(client: FlaskClient, headers: dict[str, str], value: Any) -> None:
    resp = client.post("/v1/batches", json={"items": items(1), "max_cost_usd": value}, headers=headers)
    assert resp.status_code == 422
    assert [e["field"] for e in resp.json["errors"]] == ["max_cost_usd"]


def test_tenant_caps_via_api(client: FlaskClient, headers: dict[str, str], sessions: sessionmaker[Session]) -> None:
    assert client.put("/v1/budget", json={"daily_usd": 1}, headers=headers).status_code == 403  # client key
    admin = admin_headers(sessions)
    resp = client.put("/v1/budget", json={"daily_usd": 0.5, "monthly_usd": "10", "timezone": "Europe/Berlin"},
                      headers=admin)
    assert resp.status_code == 200, resp.json
    assert resp.json == {"tenant": "acme", "timezone": "Europe/Berlin", "daily_usd": 0.5, "monthly_usd": 10.0,
                         "spent_today_usd": 0.0, "spent_this_month_usd": 0.0, "currency": "USD"}
    cleared = client.put("/v1/budget", json={"monthly_usd": None}, headers=admin).json
    assert cleared["monthly_usd"] is None and cleared["daily_usd"] == 0.5  # untouched fields keep their value
    assert client.get("/v1/budget", headers=headers).json["daily_usd"] == 0.5


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"daily_usd": -1}, "daily_usd", "between 0 and"),
    ({"monthly_usd": "a lot"}, "monthly_usd", "must be a number"),
    ({"daily_usd": [1]}, "daily_usd", "must be a number"),
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
    ({"weekly_usd": 3}, "weekly_usd", "unknown field"),
])
def test_invalid_caps_get_problem_documents(client: FlaskClient, sessions: sessionmaker[Session], body: Any,
                                            field: str, words: str, session: Session) -> None:
    resp = client.put("/v1/budget", json=body, headers=admin_headers(sessions))
    assert resp.status_code == 422 and resp.json["type"].endswith("/invalid-budget")
    assert resp.json["field"] == field and words in resp.json["detail"]
    assert session.scalar(sa.select(sa.func.count()).select_from(TenantBudget)) == 0
    not_json = client.put("/v1/budget", data="3", headers={**admin_headers(sessions),
                                                           "Content-Type": "application/json"})
    assert not_json.status_code == 422


def test_job_dearer_than_a_tenant_cap_fails_fast(client: FlaskClient, headers: dict[str, str],
                                                 sessions: sessionmaker[Session]) -> None:
    client.put("/v1/budget", json={"daily_usd": 0.02}, headers=admin_headers(sessions))
    resp = client.post("/v1/batches", json={"items": [{"prompt": "a cliff", "model": "fal-ai/flux/dev",
                                                       "image_size": "square_hd"}]}, headers=headers)
    assert resp.status_code == 422 and resp.json["cap"] == "tenant.daily" and "daily cap $0.02" in resp.json["detail"]
    # Many cheap jobs over the daily cap are fine: they spread over days.
    assert client.post("/v1/batches", json={"items": items(10)}, headers=headers).status_code == 201


def test_dispatch_holds_what_does_not_fit_and_resumes_when_raised(
        client: FlaskClient, headers: dict[str, str], sessions: sessionmaker[Session], session: Session) -> None:
    admin = admin_headers(sessions)
    client.put("/v1/budget", json={"daily_usd": 0.009}, headers=admin)
    batch = client.post("/v1/batches", json={"items": items(5)}, headers=headers).json
    settings = claim_settings()
    assert len(claim_all(session, settings)) == 3  # 3 x $0.003 = the cap exactly
    view = client.get(f"/v1/batches/{batch['id']}", headers=headers).json
    assert view["held_by_budget"] == 2 and view["counts"]["queued"] == 2
    assert client.get("/v1/batches", headers=headers).json["data"][0]["held_by_budget"] == 2
    held = session.scalars(sa.select(Job).where(Job.state == JobState.queued)).all()
    assert {j.hold_reason for j in held} == {"budget"}
    events = session.scalars(sa.select(JobEvent).where(JobEvent.kind == "held")).all()
    assert len(events) == 2 and events[0].detail["reason"] == "budget" and events[0].detail["cap"] == "daily"
    job_view = client.get(f"/v1/jobs/{held[0].id}", headers=headers).json
    assert job_view["hold_reason"] == "budget" and job_view["events"][-1]["kind"] == "held"
    # Held jobs come due again later; even then, nothing fits while the spend stays at the cap.
    later = utcnow() + timedelta(seconds=61)
    assert claim_all(session, settings, later) == []
    assert session.scalar(sa.select(sa.func.count()).select_from(JobEvent).where(JobEvent.kind == "held")) == 2
    assert client.get("/v1/budget", headers=headers).json["spent_today_usd"] == pytest.approx(0.009)
    # Raising the cap makes them due at once.
    client.put("/v1/budget", json={"daily_usd": 0.012}, headers=admin)
    assert len(claim_all(session, settings)) == 1
    client.put("/v1/budget", json={"daily_usd": None}, headers=admin)
    assert len(claim_all(session, settings)) == 1
    assert client.get(f"/v1/batches/{batch['id']}", headers=headers).json["held_by_budget"] == 0


def test_failed_and_finished_jobs_count_what_they_cost(client: FlaskClient, headers: dict[str, str],
                                                       session: Session) -> None:
    batch = client.post("/v1/batches", json={"items": items(4), "max_cost_usd": 0.012}, headers=headers).json
    settings = claim_settings()
    session.execute(sa.update(Batch).values(max_cost_usd=Decimal("0.006")))  # tighter than at submit
    session.commit()
    claimed = claim_all(session, settings)
    assert len(claimed) == 2
    # One fails (not billed: its estimate no longer counts), one succeeds cheaper than estimated.
    first, second = (job_id for job_id, _ in claimed)
    state.transition(session, first, JobState.failed, kind="failed")
    state.transition(session, second, JobState.storing, kind="result_received", cost=Decimal("0.001"))
    session.commit()
    assert budget.batch_spend(session, session.scalar(sa.select(Batch.id))) == Decimal("0.001")
    assert len(claim_all(session, settings, utcnow() + timedelta(seconds=61))) == 1  # 0.001 + 0.003 <= 0.006
    assert client.get(f"/v1/batches/{batch['id']}", headers=headers).json["held_by_budget"] == 1


def test_day_window_follows_the_tenant_timezone() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 2 March 00:30 in Berlin
    day, month = budget.windows("Europe/Berlin", now)
    assert day == datetime(2026, 3, 1, 23, 0, tzinfo=UTC) and month == datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    assert budget.windows("UTC", now) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))


def test_estimates_route_prices_route_and_their_documentation(client: FlaskClient, headers: dict[str, str],
                                                              session: Session) -> None:
    body = {"items": items(3)}
    twin = client.post("/v1/estimates", json=body, headers=headers)
    dry = client.post("/v1/batches", json={**body, "dry_run": True}, headers=headers)
    assert twin.status_code == dry.status_code == 200 and twin.json == dry.json
    assert twin.json["estimated_cost"] == pytest.approx(0.009) and rows(session) == (0, 0)
    prices = {p["model"]: p for p in client.get("/v1/prices", headers=headers).json["data"]}
    assert prices["fal-ai/flux/dev"]["usd_per_megapixel"] == 0.025
    assert prices["fal-ai/flux/dev"]["megapixel_rounding"] == "ceil per image"
    assert prices["runware:100@1"]["source"] == "reported by the provider"
    doc = client.get("/v1/openapi.json").json
    assert {"/v1/estimates", "/v1/prices", "/v1/budget"} <= set(doc["paths"])
    assert "put" in doc["paths"]["/v1/budget"] and "patch" in doc["paths"]["/v1/batches/{batch_id}"]
    assert {"Estimate", "BudgetOut"} <= set(doc["components"]["schemas"])
    batch_props = doc["components"]["schemas"]["BatchOut"]["properties"]
    assert {"estimated_cost", "max_cost_usd", "held_by_budget"} <= set(batch_props)


@pytest.mark.committed
def test_prices_from_settings_price_the_estimate(sessions: sessionmaker[Session], tmp_path: Any,
                                                 settings: Settings) -> None:
    from orchestrator.api import create_app

    app = create_app(settings.model_copy(update={"prices": '{"fal-ai/flux/schnell": 0.01}'}))
    try:
        client, auth = app.test_client(), {"Authorization": f"Bearer {make_key(sessions, 'acme')}"}
        resp = client.post("/v1/estimates", json={"items": items(2)}, headers=auth)
        assert resp.json["estimated_cost"] == pytest.approx(0.02)
        made = client.post("/v1/batches", json={"items": items(3)}, headers=auth).json
        assert made["estimated_cost"] == pytest.approx(0.03)
        # a schedule's batches are priced by the same table
        schedule = client.post("/v1/schedules", json={"name": "nightly", "cron": "0 2 * * *",
                                                      "template": {"items": items(4)}}, headers=auth)
        assert schedule.status_code == 201, schedule.json
        run = client.post(f"/v1/schedules/{schedule.json['id']}/run", headers=auth)
        assert run.status_code == 201, run.json
        assert run.json["estimated_cost"] == pytest.approx(0.04)
    finally:
        app.extensions["orchestrator"].publisher.close()
        app.extensions["orchestrator"].engine.dispose()


def test_the_held_count_reads_only_held_jobs(session: Session) -> None:
    """A batch's status counts its budget-held jobs on every poll: through the partial index of
    held jobs, not a walk over every queued job of the provider."""
    query = budget.held_query([uuid.uuid4()])
    session.execute(sa.text("SET LOCAL enable_seqscan = off"))
    sql = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True, "render_postcompile": True})
    plan = "\n".join(session.execute(sa.text(f"EXPLAIN {sql}")).scalars())
    assert "ix_jobs_held" in plan, plan
