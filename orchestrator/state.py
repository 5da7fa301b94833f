"""The one owner of job state.

Every job transition goes through this module. It checks the move against the table below,
applies it with a conditional UPDATE (so a late or duplicate event that lost a race changes
nothing), appends the job's timeline event, and shifts the batch counters and batch state in
the same transaction. A batch takes its final state exactly once: the UPDATE that sets it is
conditional on the batch not being final yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.db import utcnow
from orchestrator.models import Batch, BatchState, Job, JobEvent, JobState

Q, SI, SD, ST = JobState.queued, JobState.submitting, JobState.submitted, JobState.storing
OK, FAIL, CXL = JobState.succeeded, JobState.failed, JobState.cancelled

TERMINAL = frozenset({OK, FAIL, CXL})
ACTIVE = frozenset({Q, SI, SD, ST})
FINAL_BATCH = frozenset({BatchState.succeeded, BatchState.partially_failed, BatchState.failed,
                         BatchState.cancelled})

# Forward moves only, plus "back to queued" for a retry, which must carry a reason.
# A callback may arrive while the submit call is still in flight, hence submitting -> storing;
# an earlier attempt's result may arrive after its retry was queued, hence queued -> storing
# (the result is paid for: the job takes it and the queued retry is dropped).
ALLOWED: Mapping[JobState, frozenset[JobState]] = {
    Q: frozenset({SI, ST, FAIL, CXL}),
    SI: frozenset({SD, ST, Q, FAIL, CXL}),
    SD: frozenset({ST, Q, FAIL, CXL}),
    ST: frozenset({OK, Q, FAIL, CXL}),
    OK: frozenset(),
    FAIL: frozenset(),
    CXL: frozenset(),
}


class InvalidTransition(Exception):
    """A move the state table forbids."""


@dataclass(frozen=True)
class Transition:
    """What happened when a transition was attempted."""

    applied: bool
    from_state: JobState | None
    batch_final: BatchState | None = None


def check(from_state: JobState, to_state: JobState, reason: str | None = None) -> None:
    """Raise InvalidTransition unless the table allows `from_state -> to_state`."""
    if to_state not in ALLOWED[from_state]:
        raise InvalidTransition(f"{from_state.value} -> {to_state.value} is not allowed")
    if to_state is Q and not reason:
        raise InvalidTransition("moving a job back to queued needs a recorded reason")


def transition(
    session: Session,
    job_id: uuid.UUID,
    to_state: JobState,
    *,
    kind: str,
    reason: str | None = None,
    expect: Iterable[JobState] | None = None,
    detail: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    cost: Decimal | None = None,
    where: Iterable[sa.ColumnElement[bool]] = (),
) -> Transition:
    """Move one job to `to_state` if allowed; a disallowed or lost move changes nothing.

    `expect` narrows the states the caller is willing to move from (e.g. only `submitted`).
    `where` adds conditions on the job row, checked under its row lock together with the state,
    so a decision made from columns (the attempt, the submit intent) cannot act on a job that
    changed since it was read.
    `values` are extra job columns to set in the same UPDATE.
    """
    guard = list(where)
    row = session.execute(
        sa.select(Job.state, Job.batch_id, Job.attempt).where(Job.id == job_id, *guard).with_for_update()
    ).one_or_none()
    if row is None:
        return Transition(False, None)
    current, batch_id, attempt = JobState(row.state), row.batch_id, row.attempt
    allowed_from = set(expect) if expect is not None else set(JobState)
    try:
        check(current, to_state, reason)
    except InvalidTransition:
        return Transition(False, current)
    if current not in allowed_from:
        return Transition(False, current)
    now = utcnow()
    updates: dict[str, Any] = {"state": to_state, "updated_at": now, **(values or {})}
    if to_state in TERMINAL:
        updates.setdefault("completed_at", now)
    if cost is not None:
        updates["cost"] = cost
    result = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state == current, *guard).values(**updates)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return Transition(False, current)
    event_detail = dict(detail or {})
    if reason:
        event_detail["reason"] = reason
    session.add(JobEvent(job_id=job_id, kind=kind, attempt=updates.get("attempt", attempt),
                         from_state=current.value, to_state=to_state.value, detail=event_detail))
    final = shift_counts(session, batch_id, {current: -1, to_state: +1}, cost=cost, now=now)
    return Transition(True, current, final)


def claim(session: Session, job_ids: list[uuid.UUID], now: datetime, provider: str) -> list[tuple[uuid.UUID, int]]:
    """Move row-locked queued jobs to submitting in one statement; returns (job id, new attempt).

    The bulk form of queued -> submitting, so a claimer holds its account lock briefly: one
    UPDATE, one batch of timeline rows, one counter update per batch.
    """
    if not job_ids:
        return []
    rows = session.execute(
        sa.update(Job).where(Job.id.in_(job_ids), Job.state == Q)
        .values(state=SI, attempt=Job.attempt + 1, updated_at=now, submit_started_at=None, task_id=None,
                provider_request_id=None, provider_meta={}, submitted_at=None)
        .returning(Job.id, Job.attempt, Job.batch_id).execution_options(synchronize_session=False)
    ).all()
    if not rows:
        return []
    session.execute(sa.insert(JobEvent), [
        {"job_id": r.id, "kind": "claimed", "attempt": r.attempt, "from_state": Q.value, "to_state": SI.value,
         "detail": {"provider": provider}, "created_at": now} for r in rows])
    per_batch: dict[uuid.UUID, int] = {}
    for r in rows:
        per_batch[r.batch_id] = per_batch.get(r.batch_id, 0) + 1
    for batch_id, n in sorted(per_batch.items()):  # a stable order: no lock cycles between claimers
        shift_counts(session, batch_id, {Q: -n, SI: n}, now=now)
    return [(r.id, r.attempt) for r in rows]


def record(session: Session, job_id: uuid.UUID, kind: str, attempt: int = 0, **detail: Any) -> None:
    """Append a timeline event that does not change state (poll, duplicate webhook, ...)."""
    session.add(JobEvent(job_id=job_id, kind=kind, attempt=attempt, detail=detail))


def shift_counts(
    session: Session,
    batch_id: uuid.UUID,
    delta: Mapping[JobState, int],
    *,
    cost: Decimal | None = None,
    now: datetime | None = None,
) -> BatchState | None:
    """Apply counter deltas to a batch, update its state, and finish it if nothing is active.

    Returns the batch's final state when this call is the one that finished it.
    """
    now = now or utcnow()
    values: dict[str, Any] = {
        f"count_{state.value}": getattr(Batch, f"count_{state.value}") + n
        for state, n in delta.items() if n
    }
    if cost:
        values["cost"] = Batch.cost + cost
    if values:
        session.execute(sa.update(Batch).where(Batch.id == batch_id).values(**values))
    batch = session.execute(
        sa.select(Batch).where(Batch.id == batch_id).execution_options(populate_existing=True)
    ).scalar_one()
    if batch.state is BatchState.queued and batch.count_queued < batch.total:
        session.execute(sa.update(Batch).where(Batch.id == batch_id, Batch.state == BatchState.queued)
                        .values(state=BatchState.running, started_at=now))
    return _finish_if_done(session, batch, now)


def _finish_if_done(session: Session, batch: Batch, now: datetime) -> BatchState | None:
    active = batch.count_queued + batch.count_submitting + batch.count_submitted + batch.count_storing
    if active or batch.total == 0:
        return None
    final = final_state(batch.count_succeeded, batch.count_failed, batch.count_cancelled)
    done = session.execute(
        sa.update(Batch)
        .where(Batch.id == batch.id, Batch.state.not_in(FINAL_BATCH))
        .values(state=final, completed_at=now, completion_round=Batch.completion_round + 1)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        return None
    # Whoever commits this session announces the completion (see finished_batches()).
    session.info.setdefault("finished_batches", set()).add(batch.id)
    return final


def finished_batches(session: Session) -> set[uuid.UUID]:
    """Batches that took their final state in this session's transaction (and forget them)."""
    return session.info.pop("finished_batches", set())


def final_state(succeeded: int, failed: int, cancelled: int) -> BatchState:
    """The final state of a batch whose jobs are all terminal."""
    if cancelled:
        return BatchState.cancelled
    if not failed:
        return BatchState.succeeded
    if not succeeded:
        return BatchState.failed
    return BatchState.partially_failed


def cancel_batch(session: Session, batch_id: uuid.UUID) -> tuple[int, list[uuid.UUID]]:
    """Cancel every job of a batch that is not already storing or terminal.

    Returns how many jobs were cancelled and the ids of those that had reached the provider,
    so the caller can ask the provider to cancel them. A storing job has been paid for and
    finishes normally.
    """
    now = utcnow()
    cancellable = (Q, SI, SD)
    # Lock the job rows first (same order as transition(): jobs, then the batch) and read
    # their states, so the counter deltas are exact even with workers racing us.
    rows = session.execute(
        sa.select(Job.id, Job.state, Job.attempt, Job.provider_request_id)
        .where(Job.batch_id == batch_id, Job.state.in_(cancellable))
        .with_for_update()
    ).all()
    if rows:
        session.execute(
            sa.update(Job)
            .where(Job.batch_id == batch_id, Job.state.in_(cancellable))
            .values(state=CXL, updated_at=now, completed_at=now)
            .execution_options(synchronize_session=False)
        )
        session.execute(sa.insert(JobEvent), [
            {"job_id": r.id, "kind": "cancelled", "attempt": r.attempt, "from_state": r.state.value,
             "to_state": CXL.value, "detail": {"reason": "batch cancelled"}, "created_at": now}
            for r in rows
        ])
    session.execute(sa.update(Batch).where(Batch.id == batch_id, Batch.cancel_requested_at.is_(None))
                    .values(cancel_requested_at=now))
    delta: dict[JobState, int] = {CXL: len(rows)}
    for r in rows:
        delta[JobState(r.state)] = delta.get(JobState(r.state), 0) - 1
    shift_counts(session, batch_id, delta, now=now)
    return len(rows), [r.id for r in rows if r.provider_request_id and r.state is not Q]


def retry_failed(session: Session, batch_id: uuid.UUID) -> int:
    """Re-queue the failed jobs of a batch (a user's decision) and reopen the batch.

    This is the one deliberate exit from a terminal state, so it lives outside the table.
    """
    now = utcnow()
    rows = session.execute(
        sa.update(Job)
        .where(Job.batch_id == batch_id, Job.state == FAIL)
        .values(state=Q, retries=0, next_attempt_at=now, error_code=None, error_message=None,
                completed_at=None, updated_at=now)
        .returning(Job.id, Job.attempt)
        .execution_options(synchronize_session=False)
    ).all()
    if not rows:
        return 0
    session.execute(sa.insert(JobEvent), [
        {"job_id": r.id, "kind": "retry_requested", "attempt": r.attempt, "from_state": FAIL.value,
         "to_state": Q.value, "detail": {"reason": "retry requested by user"}, "created_at": now}
        for r in rows
    ])
    session.execute(sa.update(Batch).where(Batch.id == batch_id)
                    .values(state=BatchState.running, completed_at=None))
    shift_counts(session, batch_id, {FAIL: -len(rows), Q: len(rows)}, now=now)
    return len(rows)
