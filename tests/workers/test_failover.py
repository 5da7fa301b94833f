"""Breaker-driven failover: queued alias jobs leave a provider when its breaker opens, and come back."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import session_scope, upsert_insert, utcnow
from orchestrator.models import Job, JobEvent, JobState, ProviderAccount
from orchestrator.sandbox import Faults
from orchestrator.settings import Settings
from tests.conftest import StackFactory, make_key
from workers import retry
from workers.context import Context
from workers.maintenance import run_sweep

PRICES = Settings().price_table()


def _breaker(session: Session, provider: str, open_for: float) -> None:
    until = utcnow() + timedelta(seconds=open_for)
    table = ProviderAccount.__table__
    stmt = upsert_insert(session, table).values(provider=provider, tokens=0.0, refilled_at=utcnow(),
                                                consecutive_failures=5, breaker_open_until=until)
    session.execute(stmt.on_conflict_do_update(index_elements=["provider"], set_={"breaker_open_until": until}))


def _jobs(session: Session) -> dict[str, Job]:
    session.expire_all()
    return {j.custom_id: j for j in session.scalars(sa.select(Job))}


def _kinds(session: Session, job_id: uuid.UUID) -> list[tuple[str, dict]]:
    return [(e.kind, e.detail) for e in session.scalars(sa.select(JobEvent).where(JobEvent.job_id == job_id)
                                                        .order_by(JobEvent.id))]


@pytest.fixture
def batch(client: FlaskClient, headers: dict[str, str]) -> None:
    items = [{"custom_id": f"a{i}", "model": "flux-schnell", "prompt": "a fox", "width": 512, "height": 512}
             for i in range(4)]
    items += [{"custom_id": "dev", "model": "flux-dev", "prompt": "an owl"},
              {"custom_id": "pinned", "model": "fal-ai/flux/schnell", "prompt": "a pinned fox"}]
    assert client.post("/v1/batches", json={"items": items}, headers=headers).status_code == 201


@pytest.mark.usefixtures("batch")
def test_open_breaker_moves_queued_alias_jobs_and_a_closed_one_brings_them_back(session: Session) -> None:
    session.execute(sa.update(Job).where(Job.custom_id == "a3").values(state=JobState.submitting))  # claimed
    _breaker(session, "fal", 600)
    moved = retry.reroute_queued(session, "fal", PRICES, utcnow())
    session.commit()
    jobs = _jobs(session)
    assert len(moved) == 4
    assert {k: (j.provider, j.model) for k, j in jobs.items()} == {
        "a0": ("runware", "runware:100@1"), "a1": ("runware", "runware:100@1"), "a2": ("runware", "runware:100@1"),
        "a3": ("fal", "fal-ai/flux/schnell"),  # already claimed: it may be at fal, so it stays
        "dev": ("runware", "runware:101@1"), "pinned": ("fal", "fal-ai/flux/schnell")}
    assert _kinds(session, jobs["a0"].id) == [("failover", {"from": "fal-ai/flux/schnell", "to": "runware:100@1",
                                                             "reason": "fal breaker open"})]
    assert jobs["a0"].params["width"] == 512 and jobs["a0"].state is JobState.queued

    # While fal's breaker is open nothing moves back; a job Runware already has stays there.
    assert retry.move_back(session, PRICES, utcnow()) == []
    session.execute(sa.update(Job).where(Job.custom_id == "a2").values(state=JobState.submitted))
    _breaker(session, "fal", -1)  # the cooldown is over: closed
    back = retry.move_back(session, PRICES, utcnow())
    session.commit()
    jobs = _jobs(session)
    assert len(back) == 3
    assert {k: j.model for k, j in jobs.items()} == {
        "a0": "fal-ai/flux/schnell", "a1": "fal-ai/flux/schnell", "a2": "runware:100@1", "a3": "fal-ai/flux/schnell",
        "dev": "fal-ai/flux/dev", "pinned": "fal-ai/flux/schnell"}
    assert [k for k, _ in _kinds(session, jobs["a0"].id)] == ["failover", "failback"]
    assert _kinds(session, jobs["dev"].id)[-1] == ("failback", {"from": "runware:101@1", "to": "fal-ai/flux/dev",
                                                                "reason": "fal breaker closed"})


@pytest.mark.usefixtures("batch")
def test_nothing_moves_when_both_breakers_are_open(session: Session) -> None:
    _breaker(session, "fal", 600)
    _breaker(session, "runware", 600)
    assert retry.reroute_queued(session, "fal", PRICES, utcnow()) == []
    assert {j.provider for j in _jobs(session).values()} == {"fal"}


@pytest.mark.committed
@pytest.mark.usefixtures("batch")
def test_the_sweep_reroutes_alias_jobs_that_arrived_while_open(sessions: sessionmaker[Session],
                                                               settings: Settings) -> None:
    with session_scope(sessions) as s:
        _breaker(s, "fal", 600)
    c = Context(settings)
    try:
        assert run_sweep(c)["failover_moves"] == 5
        assert run_sweep(c)["failover_moves"] == 0
        with session_scope(sessions) as s:
            _breaker(s, "fal", -1)
        assert run_sweep(c)["failover_moves"] == 5
    finally:
        c.close()


@pytest.mark.slow
def test_breaker_opening_fails_queued_alias_jobs_over_at_once(make_stack: StackFactory,
                                                              sessions: sessionmaker[Session]) -> None:
    # fal refuses everything; one failure opens its breaker for 10 minutes. The alias jobs waiting
    # behind fal's limit of 1 can only finish inside the test's time if they move on the spot.
    stack = make_stack(fal_faults=Faults(submit_500_rate=1.0),
                       env={"ORCH_BREAKER_THRESHOLD": "1", "ORCH_BREAKER_COOLDOWN_SECONDS": "600",
                            "ORCH_FAL_MAX_IN_FLIGHT": "1"})
    stack.start_worker("w1")
    client = stack.client(make_key(sessions, "acme"))
    items = [{"custom_id": f"a{i}", "model": "flux-schnell", "prompt": f"a fox {i}", "image_size": "square"}
             for i in range(6)]
    batch = client.post("/v1/batches", json={"items": items}).json()
    done = stack.wait_batch(client, batch["id"], timeout=180)
    assert done["state"] == "succeeded", stack.logs()
    jobs = client.get(f"/v1/batches/{batch['id']}/jobs").json()["data"]
    assert {j["model"] for j in jobs} == {"runware:100@1"}
    reasons = [e["detail"]["reason"] for j in jobs for e in client.get(f"/v1/jobs/{j['id']}").json()["events"]
               if e["kind"] == "failover"]
    assert len(reasons) == 6 and sum(r == "fal breaker open" for r in reasons) >= 5
    assert len(stack.fal.ledger.submissions) == 1  # only the job that opened the breaker went to fal
