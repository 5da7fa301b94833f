"""The one owner of job state.

Every job transition goes through this module. It checks the move against the table below,
applies it with a conditional UPDATE (so a late or duplicate event that lost a race changes
nothing), appends the job's timeline event, and shifts the batch counters and batch state in
the same transaction. A batch takes its final state exactly once: the UPDATE that sets it is
conditional on the batch not being final yet.

It also owns the consequences of a transition, recorded in one outbox on the session (see
orchestrator.outbox): a job leaving the in-flight states frees a provider slot (a claim round
follows), a job re-queued for later is due again at a known time, a job whose results arrived is to be
stored, and a batch reaching its end owes its completion notice. Whoever commits the session
acts on the outbox after the commit (the workers' context; the API through
`queue.Publisher.watch`), so no caller has to remember any of it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.attributes import set_committed_value

from orchestrator import outbox
from orchestrator.db import as_utc, utcnow
from orchestrator.models import FINAL_BATCH, Batch, BatchState, Job, JobEvent, JobState

Q, SI, SD, ST = JobState.queued, JobState.submitting, JobState.submitted, JobState.storing
OK, FAIL, CXL = JobState.succeeded, JobState.failed, JobState.cancelled

TERMINAL = frozenset({OK, FAIL, CXL})
ACTIVE = frozenset({Q, SI, SD, ST})
# A provider account's slot is taken from claim (submitting) until the provider has answered.
IN_FLIGHT = frozenset({SI, SD})

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
    attempt: int | None = None,
    locked: Job | Known | None = None,
) -> Transition:
    """Move one job to `to_state` if allowed; a disallowed or lost move changes nothing.

    `expect` narrows the states the caller is willing to move from (e.g. only `submitted`).
    `where` adds conditions on the job row, checked under its row lock together with the state,
    so a decision made from columns (the attempt, the submit intent) cannot act on a job that
    changed since it was read.
    `values` are extra job columns to set in the same UPDATE. `attempt`, when given, must be
    the job's current attempt. `locked` is the job as the caller knows it (loaded under its row
    lock in this transaction, or a snapshot whose state and attempt the UPDATE then re-checks):
    the row is not read again, and if it has moved on since, nothing changes.
    """
    guard = list(where)
    if locked is not None:
        row: Any = Known(locked.state, locked.batch_id, locked.attempt, locked.provider)
    else:
        row = session.execute(
            sa.select(Job.state, Job.batch_id, Job.attempt, Job.provider).where(Job.id == job_id, *guard)
            .with_for_update()
        ).one_or_none()
    if row is None:
        return Transition(False, None)
    current, batch_id = JobState(row.state), row.batch_id
    allowed_from = set(expect) if expect is not None else set(JobState)
    try:
        check(current, to_state, reason)
    except InvalidTransition:
        return Transition(False, current)
    if current not in allowed_from or (attempt is not None and attempt != row.attempt):
        return Transition(False, current)
    now = utcnow()
    updates: dict[str, Any] = {"state": to_state, "updated_at": now, **(values or {})}
    if to_state in TERMINAL:
        updates.setdefault("completed_at", now)
    if cost is not None:
        updates["cost"] = cost
    if guard or not _plain(updates):  # conditions of the caller's: the statement is built here
        if locked is not None:
            guard.append(Job.attempt == locked.attempt)
        result = session.execute(
            sa.update(Job).where(Job.id == job_id, Job.state == current, *guard).values(**updates)
        )
    else:  # the usual case: a prebuilt statement, and the loaded job (if any) kept in step by hand
        params = {f"v_{name}": value for name, value in updates.items()}
        params.update(w_id=job_id, w_state=current)
        if locked is not None:
            params["w_attempt"] = locked.attempt
        result = session.execute(_update_statement(tuple(sorted(updates)), locked is not None), params)
        if result.rowcount == 1:  # type: ignore[attr-defined]
            _sync_loaded(session, job_id, updates)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return Transition(False, current)
    event_detail = dict(detail or {})
    if reason:
        event_detail["reason"] = reason
    add_event(session, job_id, kind, updates.get("attempt", row.attempt), event_detail, current, to_state, now)
    _note_consequences(session, job_id, current, to_state, row.provider, updates, now)
    shift_counts(session, batch_id, {current: -1, to_state: +1}, cost=cost, now=now)
    return Transition(True, current)


_JOB_COLUMNS = frozenset(Job.__table__.c.keys())


def _plain(updates: Mapping[str, Any]) -> bool:
    """Values only (no SQL expressions), all of them plain columns: the prebuilt UPDATE fits."""
    return all(name in _JOB_COLUMNS and not isinstance(value, sa.ClauseElement) for name, value in updates.items())


@functools.cache
def _update_statement(names: tuple[str, ...], with_attempt: bool) -> sa.Update:
    """UPDATE jobs SET <names> WHERE id = :w_id AND state = :w_state [AND attempt = :w_attempt], built once.

    (Parameter names are no column's: Core would read a column-named parameter as a SET value.)
    """
    table = Job.__table__
    where = [table.c.id == sa.bindparam("w_id", type_=table.c.id.type),
             table.c.state == sa.bindparam("w_state", type_=table.c.state.type)]
    if with_attempt:
        where.append(table.c.attempt == sa.bindparam("w_attempt", type_=table.c.attempt.type))
    return sa.update(table).where(*where).values(
        {name: sa.bindparam(f"v_{name}", type_=table.c[name].type) for name in names})


def _sync_loaded(session: Session, job_id: uuid.UUID, updates: Mapping[str, Any]) -> None:
    """The session's loaded Job (if any) takes the values just written, as an ORM UPDATE would."""
    loaded = session.identity_map.get(session.identity_key(Job, job_id))  # type: ignore[arg-type]
    if loaded is not None:
        for name, value in updates.items():
            set_committed_value(loaded, name, value)


@dataclass(frozen=True)
class Known:
    """A job as a caller knows it, for `transition(locked=...)` when it holds no ORM object."""

    state: JobState
    batch_id: uuid.UUID
    attempt: int
    provider: str


def fail(session: Session, job_id: uuid.UUID, code: str, message: str, *, detail: dict[str, Any] | None = None,
         expect: Iterable[JobState] | None = None) -> Transition:
    """Fail a job with an error code and message for the client (the one way a job is failed)."""
    return transition(session, job_id, FAIL, kind="failed", detail=detail, expect=expect,
                      values={"error_code": code, "error_message": message})


def _note_consequences(session: Session, job_id: uuid.UUID, current: JobState, to_state: JobState, provider: str,
                       updates: Mapping[str, Any], now: datetime) -> None:
    box = outbox.of(session)
    if current in IN_FLIGHT and to_state not in IN_FLIGHT:
        box.freed.add(provider)
    if to_state is ST:
        box.storing.setdefault(job_id, None)
    if to_state is Q:
        due = updates.get("next_attempt_at")
        box.queued(str(updates.get("provider", provider)), (due - now).total_seconds() if due else 0.0)


def claim(session: Session, due: sa.Select[Any] | list[uuid.UUID], now: datetime, provider: str) -> list[Any]:
    """Move queued jobs to submitting in one statement, with their submit intent; returns the
    claimed rows (id, new attempt, and what the submit needs: provider, model, params, lane, task id).

    `due` is a query of job ids (admission's claim-order query) or a list of ids. The bulk form
    of queued -> submitting, so a claimer holds its account lock briefly: one UPDATE (which
    re-checks `queued` under each row's lock, so a job a concurrent cancel took is skipped),
    one batch of timeline rows, one counter update per batch.

    The intent (`submit_started_at`, and the attempt's own task id, the UUID Runware knows it by)
    is committed with the claim: the claimer sends right after this commit, so from here on the
    attempt may have reached the provider and is never resent blindly (workers.dispatch).
    """
    if isinstance(due, list) and not due:
        return []
    # A CTE, not `IN (subquery)`: Postgres may rescan a locking subquery once per outer row,
    # and each rescan skips the rows this statement already updated and locks further ones.
    picked = Job.id == due.cte("due").c.id if isinstance(due, sa.Select) else Job.id.in_(due)
    rows = session.execute(
        sa.update(Job).where(picked, Job.state == Q)
        .values(state=SI, attempt=Job.attempt + 1, updated_at=now, submit_started_at=now,
                task_id=sa.cast(sa.func.gen_random_uuid(), sa.String), provider_request_id=None,
                provider_meta={}, submitted_at=None)
        .returning(Job.id, Job.attempt, Job.batch_id, Job.provider, Job.model, Job.params, Job.lane, Job.task_id)
        .execution_options(synchronize_session=False)
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
    order = {job_id: i for i, job_id in enumerate(due)} if isinstance(due, list) else None
    return sorted(rows, key=lambda r: order[r.id]) if order else list(rows)


def record(session: Session, job_id: uuid.UUID, kind: str, attempt: int = 0, **detail: Any) -> None:
    """Append a timeline event that does not change state (poll, duplicate webhook, ...)."""
    add_event(session, job_id, kind, attempt, detail)


EVENTS_KEY = "state_pending_events"


def add_event(session: Session, job_id: uuid.UUID, kind: str, attempt: int, detail: Mapping[str, Any],
              from_state: JobState | None = None, to_state: JobState | None = None,
              at: datetime | None = None) -> None:
    """Append a timeline row; the transaction's rows are written by one INSERT just before its
    commit (or before anything in it reads the timeline)."""
    session.info.setdefault(EVENTS_KEY, []).append({
        "job_id": job_id, "kind": kind, "attempt": attempt, "detail": dict(detail),
        "from_state": from_state.value if from_state else None, "to_state": to_state.value if to_state else None,
        "created_at": at or utcnow()})


def flush_events(session: Session) -> None:
    """Write the pending timeline rows (one executemany INSERT)."""
    rows = session.info.pop(EVENTS_KEY, None)
    if rows:
        session.execute(sa.insert(JobEvent.__table__), rows)


PENDING_KEY = "state_pending_counts"


@dataclass
class _Pending:
    delta: dict[JobState, int] = field(default_factory=dict)
    cost: Decimal = Decimal(0)


def shift_counts(
    session: Session,
    batch_id: uuid.UUID,
    delta: Mapping[JobState, int],
    *,
    cost: Decimal | None = None,
    now: datetime | None = None,  # kept for callers; the counters are applied at commit time
) -> None:
    """Add counter deltas to a batch, applied (with its state changes) just before the commit.

    The batch row is the one row every transition of the batch touches, so its lock is taken
    as late as possible: the deltas of the whole transaction are summed here and written by one
    UPDATE ... RETURNING right before COMMIT (`flush_counts`), which also moves the batch to
    running and, exactly once, to its final state. A read of batches in the same transaction
    applies them first, so nothing ever sees stale counters.
    """
    pending: dict[uuid.UUID, _Pending] = session.info.setdefault(PENDING_KEY, {})
    entry = pending.setdefault(batch_id, _Pending())
    for state_, n in delta.items():
        entry.delta[state_] = entry.delta.get(state_, 0) + n
    if cost:
        entry.cost += cost


def flush_counts(session: Session) -> None:
    """Write the pending counter deltas, one UPDATE per batch in a stable order (no lock cycles)."""
    pending: dict[uuid.UUID, _Pending] | None = session.info.pop(PENDING_KEY, None)
    if not pending:
        return
    now = utcnow()
    for batch_id in sorted(pending):
        _apply_counts(session, batch_id, pending[batch_id], now)


def _apply_counts(session: Session, batch_id: uuid.UUID, entry: _Pending, now: datetime) -> None:
    """One UPDATE: the counters, `running` once a job has left `queued`, and the final state
    exactly once, when no job is active any more (conditional on the batch not being final yet).

    One statement, because the batch row is the one row every transition of the batch locks: it
    is held from this UPDATE to the COMMIT that follows it at once, with no other round trip in
    between. The statement is built once per shape of change and run with parameters.
    """
    changed = tuple(sorted(state_.value for state_, n in entry.delta.items() if n))
    params: dict[str, Any] = {f"d_{name}": entry.delta[JobState(name)] for name in changed}
    params.update(w_batch=batch_id, w_now=now)
    if entry.cost:
        params["d_cost"] = entry.cost
    row = session.execute(_counts_statement(changed, bool(entry.cost)), params).one()
    _expire_loaded(session, batch_id)
    if BatchState(row.state) in FINAL_BATCH and row.completed_at is not None and as_utc(row.completed_at) == now:
        outbox.of(session).finished.add(batch_id)  # this statement finished it: its completion notice follows


@functools.cache
def _counts_statement(changed: tuple[str, ...], with_cost: bool) -> sa.Update:
    table = Batch.__table__
    col = {state_.value: table.c[f"count_{state_.value}"] for state_ in JobState}
    new = {name: (col[name] + sa.bindparam(f"d_{name}", type_=sa.Integer)) if name in changed else col[name]
           for name in col}
    values: dict[str, Any] = {f"count_{name}": new[name] for name in changed}
    if with_cost:
        values["cost"] = table.c.cost + sa.bindparam("d_cost", type_=table.c.cost.type)
    state_type, at = table.c.state.type, sa.bindparam("w_now", type_=table.c.completed_at.type)

    def lit(value: BatchState) -> Any:
        return sa.literal(value, type_=state_type)

    active = sum((new[state_.value] for state_ in ACTIVE), sa.literal(0))
    finishing = sa.and_(active == 0, table.c.total > 0, table.c.state.not_in([lit(b) for b in FINAL_BATCH]))
    final = sa.case((new["cancelled"] > 0, lit(BatchState.cancelled)),
                    (new["failed"] == 0, lit(BatchState.succeeded)),
                    (new["succeeded"] == 0, lit(BatchState.failed)),
                    else_=lit(BatchState.partially_failed))
    starting = sa.and_(table.c.state == lit(BatchState.queued), new["queued"] < table.c.total)
    values.update(
        state=sa.case((finishing, final), (starting, lit(BatchState.running)), else_=table.c.state),
        started_at=sa.case((starting, at), else_=table.c.started_at),
        completed_at=sa.case((finishing, at), else_=table.c.completed_at),
        completion_round=sa.case((finishing, table.c.completion_round + 1), else_=table.c.completion_round))
    return (sa.update(table).where(table.c.id == sa.bindparam("w_batch", type_=table.c.id.type)).values(**values)
            .returning(table.c.state, table.c.completed_at))


def _expire_loaded(session: Session, batch_id: uuid.UUID) -> None:
    """A Batch object this session already holds is stale now: reload it on next access."""
    loaded = session.identity_map.get(session.identity_key(Batch, batch_id))  # type: ignore[arg-type]
    if loaded is not None:
        session.expire(loaded)


@event.listens_for(Session, "before_commit")
def _counts_before_commit(session: Session) -> None:
    if session.info.get(PENDING_KEY) or session.info.get(EVENTS_KEY):
        session.flush()  # everything else first: the batch row is locked only for the last statement
        flush_events(session)
        flush_counts(session)


@event.listens_for(Session, "do_orm_execute")
def _pending_before_read(orm_execute_state: ORMExecuteState) -> None:
    session = orm_execute_state.session
    if not orm_execute_state.is_select or not (session.info.get(PENDING_KEY) or session.info.get(EVENTS_KEY)):
        return
    classes = {m.class_ for m in orm_execute_state.all_mappers}
    if JobEvent in classes and session.info.get(EVENTS_KEY):
        flush_events(session)
    if Batch in classes and session.info.get(PENDING_KEY):
        flush_counts(session)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(PENDING_KEY, None)
    session.info.pop(EVENTS_KEY, None)
    outbox.drop(session)


def final_state(succeeded: int, failed: int, cancelled: int) -> BatchState:
    """The final state of a batch whose jobs are all terminal.

    The counter statement (`_counts_statement`) applies the same rule in SQL; the chaos audit
    checks every batch it finishes against this one.
    """
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
        sa.select(Job.id, Job.state, Job.attempt, Job.provider_request_id, Job.provider)
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
        if JobState(r.state) in IN_FLIGHT:
            outbox.of(session).freed.add(r.provider)
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
        .returning(Job.id, Job.attempt, Job.provider)
        .execution_options(synchronize_session=False)
    ).all()
    if not rows:
        return 0
    for r in rows:
        outbox.of(session).queued(r.provider, 0.0)
    session.execute(sa.insert(JobEvent), [
        {"job_id": r.id, "kind": "retry_requested", "attempt": r.attempt, "from_state": FAIL.value,
         "to_state": Q.value, "detail": {"reason": "retry requested by user"}, "created_at": now}
        for r in rows
    ])
    session.execute(sa.update(Batch).where(Batch.id == batch_id)
                    .values(state=BatchState.running, completed_at=None))
    shift_counts(session, batch_id, {FAIL: -len(rows), Q: len(rows)}, now=now)
    return len(rows)
