"""Admission control on real Postgres: shared in-flight cap, token bucket, lanes, blocks, breaker."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import session_scope, utcnow
from orchestrator.models import Job, JobState
from orchestrator.settings import Settings
from tests.factories import make_batch
from workers import admission

Q = JobState.queued


def _settings(limit: int = 3, rate: float = 100.0) -> Settings:
    return Settings(fal_max_in_flight=limit, fal_rate_per_second=rate, breaker_threshold=2)


def test_claims_up_to_the_in_flight_limit(session: Session) -> None:
    make_batch(session, [Q] * 10)
    first = admission.claim(session, _settings(limit=3), "fal", utcnow())
    assert len(first.jobs) == 3 and all(attempt == 1 for _, attempt in first.jobs)
    second = admission.claim(session, _settings(limit=3), "fal", utcnow())
    assert second.jobs == [] and second.retry_in is None  # slot-limited: a finishing job kicks dispatch
    states = session.scalars(sa.select(Job.state)).all()
    assert states.count(JobState.submitting) == 3


def test_token_bucket_limits_the_rate(session: Session) -> None:
    make_batch(session, [Q] * 10)
    now = utcnow()
    settings = _settings(limit=10, rate=2.0)
    assert len(admission.claim(session, settings, "fal", now).jobs) == 2  # a burst of one second
    blocked = admission.claim(session, settings, "fal", now)
    assert blocked.jobs == [] and blocked.retry_in is not None and 0 < blocked.retry_in <= 0.5
    assert len(admission.claim(session, settings, "fal", now + timedelta(seconds=0.5)).jobs) == 1


def test_interactive_lane_goes_first(session: Session) -> None:
    _bulk, bulk_jobs = make_batch(session, [Q] * 3)
    for job in bulk_jobs:
        job.lane = "bulk"
    _, interactive_jobs = make_batch(session, [Q] * 2)
    session.flush()
    claimed = {job_id for job_id, _ in admission.claim(session, _settings(limit=2), "fal", utcnow()).jobs}
    assert claimed == {j.id for j in interactive_jobs}


def test_not_yet_due_jobs_wait(session: Session) -> None:
    _, jobs = make_batch(session, [Q])
    jobs[0].next_attempt_at = utcnow() + timedelta(seconds=30)
    session.flush()
    assert admission.claim(session, _settings(), "fal", utcnow()).jobs == []


def test_retry_after_blocks_the_whole_account(session: Session) -> None:
    make_batch(session, [Q] * 2)
    now = utcnow()
    admission.block(session, "fal", 5.0, now)
    held = admission.claim(session, _settings(), "fal", now + timedelta(seconds=1))
    assert held.jobs == [] and 3.9 < (held.retry_in or 0) <= 4.0
    assert len(admission.claim(session, _settings(), "fal", now + timedelta(seconds=5.1)).jobs) == 2


def test_breaker_opens_after_repeated_failures_and_closes_on_success(session: Session) -> None:
    make_batch(session, [Q])
    now = utcnow()
    settings = _settings()
    assert admission.record_failure(session, settings, "fal", now) is False
    assert admission.record_failure(session, settings, "fal", now) is True
    assert admission.breaker_open(session, "fal", now)
    assert admission.claim(session, settings, "fal", now).jobs == []
    admission.record_success(session, "fal")
    assert not admission.breaker_open(session, "fal", now)


@pytest.mark.committed
def test_concurrent_claimers_share_one_limit(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        make_batch(s, [Q] * 20)
    barrier = threading.Barrier(6)
    claimed: list[int] = []

    def claimer() -> None:
        barrier.wait()
        with session_scope(sessions) as s:
            claimed.append(len(admission.claim(s, _settings(limit=5), "fal", utcnow()).jobs))

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(claimed) == 5


@pytest.mark.committed
def test_a_claimer_does_not_queue_behind_a_busy_account(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        make_batch(s, [Q] * 3)
        admission.account(s, "fal")  # the account row exists, as it does after the first claim
    holder = sessions()
    try:
        assert admission.account(holder, "fal") is not None  # another worker is mid-claim
        with session_scope(sessions) as s:
            busy = admission.claim(s, _settings(), "fal", utcnow())
        assert busy.jobs == [] and busy.retry_in == admission.BUSY_RETRY  # come back soon, don't wait
    finally:
        holder.rollback()
        holder.close()
    with session_scope(sessions) as s:
        assert len(admission.claim(s, _settings(), "fal", utcnow()).jobs) == 3
