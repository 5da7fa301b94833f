"""Schedules: API CRUD and validation, DST-aware slots, exactly-once firing, overlap and catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import schedules, state
from orchestrator.db import session_scope, utcnow
from orchestrator.models import Batch, Job, JobState
from orchestrator.schedule_models import Schedule
from orchestrator.schemas import ScheduleIn
from orchestrator.settings import Settings
from workers.context import Context
from workers.maintenance import run_sweep

TEMPLATE = {"lane": "bulk", "catalog": {"model": "flux-schnell", "template": "Photo of a {product}",
                                        "id_field": "sku", "rows": [{"sku": "A1", "product": "mug"},
                                                                    {"sku": "B2", "product": "lamp"}]}}
BODY = {"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Berlin", "template": TEMPLATE}


def test_crud_and_run_now(client: FlaskClient, headers: dict[str, str]) -> None:
    created = client.post("/v1/schedules", json=BODY, headers=headers)
    assert created.status_code == 201, created.json
    sid = created.json["id"]
    assert created.json["next_run_at"].endswith("+00:00") and created.json["overlap_policy"] == "skip"
    assert client.post("/v1/schedules", json=BODY, headers=headers).status_code == 409
    assert [s["name"] for s in client.get("/v1/schedules", headers=headers).json["data"]] == ["nightly"]
    patched = client.patch(f"/v1/schedules/{sid}", json={"enabled": False, "overlap_policy": "queue"},
                           headers=headers)
    assert patched.status_code == 200 and patched.json["enabled"] is False
    run = client.post(f"/v1/schedules/{sid}/run", headers=headers)
    assert run.status_code == 201 and run.json["total"] == 2 and run.json["lane"] == "bulk"
    assert client.get(f"/v1/schedules/{sid}", headers=headers).json["last_batch_id"] == run.json["id"]
    # A batch made by a schedule says so, and the batch list filters on it.
    assert run.json["schedule_id"] == sid
    other = client.post("/v1/batches", json={"items": [{"model": "flux-schnell", "prompt": "a fox"}]}, headers=headers)
    assert other.json["schedule_id"] is None
    listed = client.get(f"/v1/batches?schedule_id={sid}", headers=headers).json["data"]
    assert [(b["id"], b["schedule_id"]) for b in listed] == [(run.json["id"], sid)]
    assert client.get(f"/v1/batches/{run.json['id']}", headers=headers).json["schedule_id"] == sid
    assert client.get("/v1/batches?schedule_id=nope", headers=headers).status_code == 400
    assert client.delete(f"/v1/schedules/{sid}", headers=headers).status_code == 204
    assert client.get(f"/v1/schedules/{sid}", headers=headers).status_code == 404
    assert client.get(f"/v1/batches/{run.json['id']}", headers=headers).status_code == 200  # batches stay


@pytest.mark.parametrize(("change", "field"), [
    ({"cron": "every night"}, "cron"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"overlap_policy": "maybe"}, "overlap_policy"),
    ({"template": {"items": [{"model": "flux-dev", "prompt": "x", "steps": 99}]}}, "template.steps"),
    ({"template": {"catalog": {**TEMPLATE["catalog"], "model": "nope"}}}, "template.model"),
])
def test_invalid_schedules_are_rejected_with_the_field(client: FlaskClient, headers: dict[str, str],
                                                      change: dict[str, Any], field: str) -> None:
    resp = client.post("/v1/schedules", json={**BODY, **change}, headers=headers)
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    assert field in [e["field"] for e in resp.json["errors"]]
    assert client.get("/v1/schedules", headers=headers).json["data"] == []


def test_slots_follow_the_zone_across_dst() -> None:
    # 02:30 Berlin is 00:30 UTC in summer and 01:30 UTC in winter.
    summer = schedules.next_slot("30 2 * * *", "Europe/Berlin", datetime(2026, 7, 1, 12, tzinfo=UTC))
    winter = schedules.next_slot("30 2 * * *", "Europe/Berlin", datetime(2026, 12, 1, 12, tzinfo=UTC))
    assert summer == datetime(2026, 7, 2, 0, 30, tzinfo=UTC)
    assert winter == datetime(2026, 12, 2, 1, 30, tzinfo=UTC)


def _schedule(session: Session, **kw: Any) -> Schedule:
    data = ScheduleIn.model_validate({**BODY, "timezone": "UTC", **kw})
    schedule = schedules.create(session, "acme", data, 1000)
    schedule.next_run_at = datetime(2026, 11, 21, 2, tzinfo=UTC)
    return schedule


NOW = datetime(2026, 11, 21, 2, 0, 5, tzinfo=UTC)


def test_due_slot_fires_exactly_once(session: Session) -> None:
    schedule = _schedule(session)
    first = schedules.fire_due(session, NOW, 1000)
    assert len(first) == 1
    assert schedule.next_run_at == datetime(2026, 11, 22, 2, tzinfo=UTC)
    assert schedules.fire_due(session, NOW + timedelta(seconds=1), 1000) == []
    # Even a second scheduler replaying the same slot gets the same batch, not a new one.
    again = schedules.run_slot(session, schedule, datetime(2026, 11, 21, 2, tzinfo=UTC), 1000)
    assert again.id == first[0]
    assert session.scalar(sa.select(sa.func.count()).select_from(Batch)) == 1


def test_missed_slots_beyond_the_catch_up_window_are_skipped(session: Session) -> None:
    schedule = _schedule(session, catchup_window_seconds=60)
    assert schedules.fire_due(session, NOW + timedelta(hours=3), 1000) == []
    assert schedule.next_run_at == datetime(2026, 11, 22, 2, tzinfo=UTC)


@pytest.mark.parametrize(("policy", "fires"), [("skip", False), ("queue", False), ("allow", True)])
def test_overlap_policy(session: Session, policy: str, fires: bool) -> None:
    schedule = _schedule(session, overlap_policy=policy)
    running = schedules.run_slot(session, schedule, datetime(2026, 11, 20, 2, tzinfo=UTC), 1000)
    job_id = session.scalar(sa.select(Job.id).where(Job.batch_id == running.id).limit(1))
    assert job_id is not None
    state.transition(session, job_id, JobState.submitting, kind="claim")  # the previous run is going
    assert (len(schedules.fire_due(session, NOW, 1000)) == 1) is fires
    if policy == "skip":
        assert schedule.next_run_at == datetime(2026, 11, 22, 2, tzinfo=UTC)
    if policy == "queue":
        assert schedule.next_run_at == datetime(2026, 11, 21, 2, tzinfo=UTC)  # waits for the running batch
        state.cancel_batch(session, running.id)
        assert len(schedules.fire_due(session, NOW + timedelta(minutes=5), 1000)) == 1


@pytest.mark.committed
def test_the_sweep_fires_due_schedules(sessions: sessionmaker[Session], settings: Settings) -> None:
    with session_scope(sessions) as s:
        schedule = _schedule(s)
        schedule.next_run_at = utcnow() - timedelta(seconds=5)
    c = Context(settings)
    try:
        assert run_sweep(c)["schedules_fired"] == 1
        assert run_sweep(c)["schedules_fired"] == 0
    finally:
        c.close()
    with session_scope(sessions) as s:
        batch = s.scalars(sa.select(Batch)).one()
        assert batch.schedule_id is not None and batch.name.startswith("nightly ")
