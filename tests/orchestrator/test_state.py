"""The state module: the transition table, monotonicity, counters and exactly-once completion."""

from __future__ import annotations

import itertools
import threading
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import outbox, state
from orchestrator.db import session_scope
from orchestrator.models import Batch, BatchState, Job, JobEvent, JobState
from tests.factories import make_batch

S = JobState
ALLOWED_PAIRS = {
    (S.queued, S.submitting), (S.queued, S.failed), (S.queued, S.cancelled),
    (S.queued, S.storing),  # an earlier attempt's result arrived after its retry was queued
    (S.submitting, S.submitted), (S.submitting, S.storing), (S.submitting, S.queued),
    (S.submitting, S.failed), (S.submitting, S.cancelled),
    (S.submitted, S.storing), (S.submitted, S.queued), (S.submitted, S.failed), (S.submitted, S.cancelled),
    (S.storing, S.succeeded), (S.storing, S.queued), (S.storing, S.failed), (S.storing, S.cancelled),
}


def _counts_match(session: Session, batch: Batch) -> None:
    session.refresh(batch)
    actual = dict(session.execute(sa.select(Job.state, sa.func.count()).where(Job.batch_id == batch.id)
                                  .group_by(Job.state)).all())
    for s in JobState:
        assert getattr(batch, f"count_{s.value}") == actual.get(s, 0), s


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(JobState, JobState)),
                         ids=lambda s: s.value)
def test_every_transition(session: Session, src: JobState, dst: JobState) -> None:
    batch, (job, _other) = make_batch(session, [src, S.submitted])
    result = state.transition(session, job.id, dst, kind="test", reason="because")
    assert result.applied is ((src, dst) in ALLOWED_PAIRS)
    session.refresh(job)
    assert job.state is (dst if result.applied else src)
    events = session.execute(sa.select(JobEvent).where(JobEvent.job_id == job.id)).scalars().all()
    assert len(events) == (1 if result.applied else 0)
    _counts_match(session, batch)


def test_check_raises_on_forbidden_and_needs_reason_to_requeue() -> None:
    with pytest.raises(state.InvalidTransition):
        state.check(S.succeeded, S.failed)
    with pytest.raises(state.InvalidTransition):
        state.check(S.submitted, S.queued)  # no reason
    state.check(S.submitted, S.queued, "provider 503")


def test_requeue_without_reason_changes_nothing(session: Session) -> None:
    _, (job,) = make_batch(session, [S.submitted])
    assert not state.transition(session, job.id, S.queued, kind="retry").applied


def test_expect_narrows_source_states(session: Session) -> None:
    _, (job,) = make_batch(session, [S.storing])
    assert not state.transition(session, job.id, S.failed, kind="x", expect=[S.submitted]).applied
    assert state.transition(session, job.id, S.failed, kind="x", expect=[S.storing]).applied


def test_terminal_is_final_and_late_events_change_nothing(session: Session) -> None:
    _batch, (job,) = make_batch(session, [S.storing])
    assert state.transition(session, job.id, S.succeeded, kind="stored").applied
    for late in (S.failed, S.storing, S.queued, S.cancelled):
        assert not state.transition(session, job.id, late, kind="late", reason="late").applied
    session.refresh(job)
    assert job.state is S.succeeded


@pytest.mark.parametrize(("finals", "expected"), [
    ([S.succeeded, S.succeeded], BatchState.succeeded),
    ([S.succeeded, S.failed], BatchState.partially_failed),
    ([S.failed, S.failed], BatchState.failed),
    ([S.succeeded, S.cancelled], BatchState.cancelled),
])
def test_batch_final_state(session: Session, finals: list[JobState], expected: BatchState) -> None:
    batch, jobs = make_batch(session, [S.storing, S.storing])
    assert state.transition(session, jobs[0].id, finals[0], kind="end").applied
    session.refresh(batch)
    assert batch.state is BatchState.running and not outbox.of(session).finished
    assert state.transition(session, jobs[1].id, finals[1], kind="end").applied
    session.refresh(batch)
    assert batch.state is expected and batch.completion_round == 1 and batch.completed_at is not None
    assert outbox.of(session).finished == {batch.id}  # its completion notice is queued


def test_cost_accumulates_on_batch(session: Session) -> None:
    batch, jobs = make_batch(session, [S.storing, S.storing])
    for j in jobs:
        state.transition(session, j.id, S.succeeded, kind="stored", cost=Decimal("0.0013"))
    session.refresh(batch)
    assert batch.cost == Decimal("0.0026")


def test_a_transition_without_cost_leaves_the_batch_cost_alone(session: Session) -> None:
    batch, (priced, other) = make_batch(session, [S.submitted, S.submitted])
    state.transition(session, priced.id, S.storing, kind="result_received", cost=Decimal("0.0013"))
    session.refresh(batch)  # the counter UPDATE of the first transition is written here
    state.transition(session, other.id, S.failed, kind="failed")
    state.transition(session, priced.id, S.succeeded, kind="stored")
    session.refresh(batch)
    assert batch.cost == Decimal("0.0013")
    assert batch.state is BatchState.partially_failed and batch.completion_round == 1


def test_batch_becomes_running_when_first_job_moves(session: Session) -> None:
    batch, jobs = make_batch(session, [S.queued, S.queued])
    state.transition(session, jobs[0].id, S.submitting, kind="claim")
    session.refresh(batch)
    assert batch.state is BatchState.running and batch.started_at is not None


def test_cancel_batch_cancels_unfinished_but_not_storing(session: Session) -> None:
    batch, jobs = make_batch(session, [S.queued, S.submitting, S.submitted, S.storing, S.succeeded])
    jobs[2].provider_request_id = "req-2"
    session.flush()
    count, at_provider = state.cancel_batch(session, batch.id)
    assert count == 3 and at_provider == [jobs[2].id]
    _counts_match(session, batch)
    assert batch.state is BatchState.running  # the storing job still finishes
    assert state.transition(session, jobs[3].id, S.succeeded, kind="stored").applied
    session.refresh(batch)
    assert batch.state is BatchState.cancelled and outbox.of(session).finished == {batch.id}


def test_retry_failed_requeues_only_failed_and_reopens(session: Session) -> None:
    batch, jobs = make_batch(session, [S.storing, S.storing])
    state.transition(session, jobs[0].id, S.succeeded, kind="x")
    state.transition(session, jobs[1].id, S.failed, kind="x", values={"error_message": "boom"})
    session.refresh(batch)
    assert batch.state is BatchState.partially_failed
    assert state.retry_failed(session, batch.id) == 1
    session.refresh(batch)
    session.refresh(jobs[1])
    assert batch.state is BatchState.running and jobs[1].state is S.queued and jobs[1].error_message is None
    _counts_match(session, batch)


@pytest.mark.committed
def test_concurrent_duplicates_apply_once(sessions: sessionmaker[Session]) -> None:
    """Eight threads race the same storing->succeeded move: exactly one wins."""
    with session_scope(sessions) as s:
        batch, (job,) = make_batch(s, [S.storing])
        job_id, batch_id = job.id, batch.id
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def race() -> None:
        barrier.wait()
        with session_scope(sessions) as s:
            wins.append(state.transition(s, job_id, S.succeeded, kind="stored").applied)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    with session_scope(sessions) as s:
        b = s.get(Batch, batch_id)
        assert b is not None and b.count_succeeded == 1 and b.count_storing == 0 and b.completion_round == 1
