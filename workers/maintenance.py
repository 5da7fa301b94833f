"""The periodic sweep: the database alone is enough to finish every batch.

If every broker message were lost, this would still move every job to the end: it re-kicks
dispatch, re-queues claims that never reached a provider, settles submits whose outcome is
unknown, polls jobs whose callback is overdue, resumes stuck storing jobs, replays stored
deliveries that were never processed, and re-sends batch notifications.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from celery import shared_task
from sqlalchemy.orm import Session

from orchestrator import binding, catalog_runs, metrics, queue, schedules, state
from orchestrator.db import as_utc, upsert_insert, utcnow
from orchestrator.models import Batch, Delivery, Heartbeat, Job, JobState
from orchestrator.providers import registry
from orchestrator.providers._http import DEFAULT_TIMEOUT
from orchestrator.providers.registry import PROVIDERS
from workers.celery_app import TASK_OPTS
from workers.context import Context, ctx
from workers.reconcile import Poll, lock_job, poll_job, settle_by_task_id
from workers.retry import Retry, rebalance, requeue

log = logging.getLogger(__name__)
PAGE = 200
# A submit call can still be on its way this long after its intent was recorded (the adapters'
# HTTP timeout plus a margin): only after that does "Runware does not know the task" mean it never arrived.
SUBMIT_IN_FLIGHT_SECONDS = (DEFAULT_TIMEOUT.read or 30.0) + 5.0


@shared_task(name=queue.SWEEP, **TASK_OPTS)
def sweep() -> dict[str, int]:
    """One sweep over everything that may be stuck."""
    return run_sweep(ctx())


def run_sweep(c: Context, now: datetime | None = None) -> dict[str, int]:
    """Run every step once; returns counts for logs and tests."""
    now = now or utcnow()
    s = c.settings
    counts = {
        "requeued_unsent": _requeue_unsent(c, now - timedelta(seconds=s.claim_stale_seconds)),
        "settled_unknown": _settle_unknown(c, now),
        "polled": _poll_overdue(c, now),
        "resumed_storing": _resume_storing(c, now - timedelta(seconds=s.storing_stale_seconds)),
        "replayed_deliveries": _replay_deliveries(c, now - timedelta(seconds=30)),
        "notified": _renotify(c),
        "schedules_fired": _fire_schedules(c, now),
        "failover_moves": _rebalance(c, now),
    }
    for provider in PROVIDERS:
        c.publisher.send(queue.DISPATCH, provider)
    beat(c, "maintenance")
    if any(counts.values()):
        log.info("sweep", extra=counts)
    return counts


def _rebalance(c: Context, now: datetime) -> int:
    """Alias jobs off a provider whose breaker is open, and back once it has closed (workers/retry.py)."""
    with c.session() as session:
        return rebalance(session, PROVIDERS, c.settings.price_table(), now)


def beat(c: Context, name: str) -> None:
    """Record that a worker consumed from `name` just now (read by /readyz)."""
    with c.session() as session:
        table = cast(sa.Table, Heartbeat.__table__)
        stmt = upsert_insert(session, table).values(name=name, seen_at=utcnow())
        session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"seen_at": stmt.excluded.seen_at}))


def _ids(c: Context, query: sa.Select[Any]) -> list[uuid.UUID]:
    with c.session() as session:
        return list(session.execute(query.limit(PAGE)).scalars())


def _requeue_unsent(c: Context, before: datetime) -> int:
    """Claimed, but the submit task never recorded its intent: it never reached the provider.

    Decided and applied under the job's row lock, conditional on the intent still being unset:
    submit() records its intent under the same lock, so a submit that is just starting either
    wins (and this changes nothing) or finds the job re-queued (and sends nothing).
    """
    ids = _ids(c, sa.select(Job.id).where(Job.state == JobState.submitting, Job.submit_started_at.is_(None),
                                          Job.updated_at < before))
    done = 0
    for job_id in ids:
        with c.session() as session:
            job = lock_job(session, job_id)
            if job is not None and job.state is JobState.submitting and job.submit_started_at is None \
                    and job.updated_at < before:
                done += requeue(c, session, job, "claimed but never sent (worker lost)", 0.0, {}, count=False,
                                expect=[JobState.submitting],
                                where=[Job.attempt == job.attempt, Job.submit_started_at.is_(None)]) == Retry.requeued
    return done


def _settle_unknown(c: Context, now: datetime) -> int:
    """Submits that may have reached the provider: ask Runware; give fal time to call back."""
    s = c.settings
    # Runware knows a task by the UUID we chose: getResponse settles every unknown attempt
    # before anything is resubmitted (see settle_by_task_id).
    by_task_id = registry.providers_with(knows_our_task_id=True)
    looked_up = _ids(c, sa.select(Job.id).where(
        Job.state == JobState.submitting, Job.provider.in_(by_task_id), Job.submit_started_at.is_not(None),
        Job.submit_started_at < now - timedelta(seconds=s.claim_stale_seconds)))
    not_found_before = now - timedelta(seconds=max(s.claim_stale_seconds, SUBMIT_IN_FLIGHT_SECONDS))
    settled = sum(settle_by_task_id(c, job_id, not_found_before) not in (Poll.skipped, Poll.failed, Poll.waiting)
                  for job_id in looked_up)
    # A fal callback held because its attempt's submit answer never came (worker lost, connection cut):
    # have it checked with fal, which may let its signed request id be adopted (workers.deliveries).
    # (An earlier attempt's held callback too: that attempt will never learn its id otherwise.)
    by_request_id = registry.providers_with(knows_our_task_id=False)
    stale_intent = sa.and_(Job.state == JobState.submitting, Job.submit_started_at.is_not(None),
                           Job.submit_started_at < now - timedelta(seconds=s.claim_stale_seconds))
    for delivery_id in _ids(c, sa.select(Delivery.id).join(Job, Job.id == Delivery.job_id).where(
            Delivery.provider.in_(by_request_id), Delivery.verified.is_(True), Delivery.processed_at.is_(None),
            Delivery.outcome == binding.HELD,
            Job.state.in_(state.ACTIVE), sa.or_(Delivery.attempt < Job.attempt, Job.state == JobState.queued,
                                                sa.and_(Delivery.attempt == Job.attempt, stale_intent)))):
        c.publisher.send(queue.PROCESS_DELIVERY, str(delivery_id))
    # fal has no way to look a request up without its id: wait for the attempt's callback, then
    # resubmit as a new attempt as the batch's policy allows (see _resubmit_unknown).
    window = min(s.callback_timeout_seconds, s.unknown_outcome_window_seconds)
    waiting = _ids(c, sa.select(Job.id).where(
        Job.state == JobState.submitting, Job.provider.in_(by_request_id), Job.submit_started_at.is_not(None),
        Job.submit_started_at < now - timedelta(seconds=window)))
    return settled + sum(_resubmit_unknown(c, job_id, now) for job_id in waiting)


def _resubmit_unknown(c: Context, job_id: uuid.UUID, now: datetime) -> bool:
    """Resubmit one fal attempt whose submit answer never came, if its batch's policy says it is time.

    `wait` (the default) waits out fal's webhook retries (ORCH_UNKNOWN_OUTCOME_WINDOW_SECONDS,
    about 2 h): after that no callback can come, so the job cannot end with two results.
    `resubmit` goes after ORCH_CALLBACK_TIMEOUT_SECONDS and may pay twice; if the first
    attempt's result comes after all, the job takes it and the new request is cancelled at fal.
    Decision and move are one locked, conditional step: a late submit answer or a second sweep
    that got there first leaves nothing to do.
    """
    s = c.settings
    with c.session() as session:
        job = lock_job(session, job_id)
        if job is None or job.state is not JobState.submitting or job.submit_started_at is None:
            return False
        batch = session.get(Batch, job.batch_id)
        policy = (batch.unknown_outcome if batch is not None else None) or s.unknown_outcome_policy
        wait = s.unknown_outcome_window_seconds if policy == "wait" else s.callback_timeout_seconds
        if as_utc(job.submit_started_at) >= now - timedelta(seconds=wait):
            return False
        if _held(session, job, since=now - 2 * timedelta(seconds=wait)):
            return False  # its callback came and is being checked with fal: give that a chance
        # A resubmission after an unknown outcome may pay twice: its own timeline kind, with the
        # policy that allowed it, and a counter in /metrics, so audits count it apart from true duplicates.
        moved = requeue(c, session, job, f"submit outcome unknown, no callback within {wait:g}s", 0.0,
                        {"policy": policy, "waited_seconds": wait}, kind="unknown_outcome_resubmit",
                        expect=[JobState.submitting],
                        where=[Job.attempt == job.attempt, Job.submit_started_at == job.submit_started_at])
        if moved is Retry.requeued:
            metrics.incr(session, "orchestrator_unknown_outcome_resubmits_total", provider=job.provider,
                         policy=policy)
        return moved is Retry.requeued


def _held(session: Session, job: Job, since: datetime) -> bool:
    """Whether a callback for the job's current attempt came since `since` and is held, waiting
    for its request id. It says fal accepted the request: resubmitting now would pay twice.

    `since` counts from the callback's arrival, not from the submit: a callback that comes late
    (its worker killed before it was examined, say) still gets its check with fal."""
    return session.scalar(sa.select(Delivery.id).where(
        Delivery.job_id == job.id, Delivery.attempt == job.attempt, Delivery.processed_at.is_(None),
        Delivery.outcome == binding.HELD, Delivery.received_at >= since).limit(1)) is not None


def _poll_overdue(c: Context, now: datetime) -> int:
    """Jobs at the provider whose callback is late: poll them, no more often than the interval."""
    s = c.settings
    ids = _ids(c, sa.select(Job.id).where(
        Job.state == JobState.submitted, Job.submitted_at < now - timedelta(seconds=s.poll_after_seconds),
        sa.or_(Job.last_polled_at.is_(None), Job.last_polled_at < now - timedelta(seconds=s.poll_interval_seconds)),
    ).order_by(Job.submitted_at))
    return sum(poll_job(c, job_id) not in (Poll.skipped, Poll.failed) for job_id in ids)


def _resume_storing(c: Context, before: datetime) -> int:
    ids = _ids(c, sa.select(Job.id).where(Job.state == JobState.storing, Job.updated_at < before))
    for job_id in ids:
        c.publisher.send(queue.STORE_JOB, str(job_id))
        with c.session() as session:
            # Touch the job so the next sweep waits a full interval before resuming it again.
            session.execute(sa.update(Job).where(Job.id == job_id).values(updated_at=utcnow()))
            state.record(session, job_id, "store_resumed", 0)
    return len(ids)


def _replay_deliveries(c: Context, before: datetime) -> int:
    # A held delivery (its attempt's request id unknown) is retried only once its job knows the
    # id of that attempt; otherwise it waits for the submit answer to release it.
    id_known = sa.exists().where(Job.id == Delivery.job_id, Job.attempt == Delivery.attempt,
                                 Job.provider_request_id.is_not(None))
    ids = _ids(c, sa.select(Delivery.id).where(Delivery.verified.is_(True), Delivery.processed_at.is_(None),
                                               Delivery.job_id.is_not(None), Delivery.received_at < before,
                                               sa.or_(Delivery.outcome.is_distinct_from(binding.HELD), id_known)))
    for delivery_id in ids:
        c.publisher.send(queue.PROCESS_DELIVERY, str(delivery_id))
    return len(ids)


def _fire_schedules(c: Context, now: datetime) -> int:
    """Create the batches of due schedule slots (idempotent per slot) and nudge dispatch.

    Catalog sources are read here, in a worker, never in an API request.
    """
    env = schedules.SlotEnv(storage=c.storage, http=c.http, policy=c.settings.source_policy(),
                            prices=c.settings.price_table())
    with c.session() as session:
        created = schedules.fire_due(session, now, c.settings.max_items_per_batch, env)
        if created:
            c.publisher.after_commit(session, queue.DISPATCH)
        prune = session.info.pop("prune_keys", [])
    if prune:
        catalog_runs.prune(c.storage, prune)
    return len(created)


def _renotify(c: Context) -> int:
    ids = _ids(c, sa.select(Batch.id).where(Batch.completion_round > Batch.notified_round))
    for batch_id in ids:
        c.publisher.send(queue.NOTIFY_BATCH, str(batch_id))
    return len(ids)
