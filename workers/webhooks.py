"""Process stored webhook deliveries, and poll providers for jobs whose callback is late."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from celery import shared_task
from sqlalchemy.orm import Session

from orchestrator import binding, metrics, queue, state
from orchestrator.db import as_utc, utcnow
from orchestrator.log import bound
from orchestrator.models import Delivery, Job, JobEvent, JobState
from orchestrator.providers.base import Outcome
from orchestrator.providers.errors import NotFound, ProviderError, ResultExpired
from workers.context import Context, ctx
from workers.dispatch import TASK_OPTS, requeue
from workers.reconcile import WAITING, apply, lock_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollTarget:
    """What is needed to ask a provider about one attempt, read before the call."""

    job_id: uuid.UUID
    attempt: int
    provider: str
    model: str
    request_id: str
    num_images: int
    meta: dict[str, Any]


@shared_task(name=queue.PROCESS_DELIVERY, **TASK_OPTS)
def process_delivery(delivery_id: str) -> str:
    """Reconcile one verified delivery exactly once."""
    return process(ctx(), uuid.UUID(delivery_id))


def process(c: Context, delivery_id: uuid.UUID) -> str:
    """Apply a delivery to its job; a delivery already processed changes nothing.

    The delivery must be about the provider request of the attempt its URL named
    (orchestrator.binding): one about another request is refused, one whose attempt's request
    id is not known yet is held and examined again when the id is recorded.
    """
    with c.session() as session:
        found = _locked(session, delivery_id)
        if isinstance(found, str):
            return found
        delivery, job = found
        with bound(job_id=job.id, delivery_id=delivery.id):
            attempt = delivery.attempt or 0
            verdict = binding.judge(session, job, attempt, delivery.provider, delivery.body, delivery.headers or {})
            if verdict.decision == "refused":
                return _refuse(session, delivery, job, verdict.reason)
            if verdict.decision == "held":
                if not _checkable(c, session, job, delivery):
                    delivery.outcome = binding.HELD
                    return "held"
                # Our submit call never got its answer: ask fal, with our key, whether the signed
                # request id is one of ours before adopting it (never on the delivery's word alone).
                check = _target(job, verdict.claimed, attempt)
            else:
                outcome = c.adapter(delivery.provider).parse_webhook(delivery.body)
                if outcome.status != "fetch_result":
                    return _done(delivery, apply(c, session, job, attempt, outcome, "webhook"))
                target = _target(job, outcome.request_id, attempt)
                state.record(session, job.id, "webhook", job.attempt, status="fetch_result")
    if verdict.decision == "held":
        return _check_and_adopt(c, delivery_id, check)
    # fal said OK but sent no payload: fetch the result, with no transaction open during the call.
    result = poll_target(c, target)
    with c.session() as session:
        delivery = session.get(Delivery, delivery_id)
        job = lock_job(session, target.job_id)
        if delivery is None or job is None or delivery.processed_at is not None:
            return "skipped"
        if result is None:
            return "fetch failed; will retry"
        return _done(delivery, apply(c, session, job, target.attempt, result, "result_fetch"))


def _locked(session: Session, delivery_id: uuid.UUID) -> tuple[Delivery, Job] | str:
    """The unprocessed verified delivery and its job, both row-locked; or why there is nothing to do."""
    delivery = session.execute(sa.select(Delivery).where(Delivery.id == delivery_id).with_for_update()
                               ).scalar_one_or_none()
    if delivery is None or delivery.processed_at is not None or not delivery.verified or not delivery.job_id:
        return "skipped"
    job = lock_job(session, delivery.job_id)
    if job is None:
        return _done(delivery, "job gone")
    return delivery, job


def _refuse(session: Session, delivery: Delivery, job: Job, reason: str) -> str:
    delivery.rejection = reason[:200]
    state.record(session, job.id, "delivery_refused", delivery.attempt or 0, reason=reason,
                 delivery_id=str(delivery.id))
    log.warning("webhook delivery refused", extra={"reason": reason})
    return _done(delivery, f"refused: {reason}")


def _checkable(c: Context, session: Session, job: Job, delivery: Delivery) -> bool:
    """Whether a held fal delivery may be checked with fal now, because its attempt will never learn its id.

    That is an earlier attempt (a later one was claimed, or this one was re-queued), or the
    current attempt once its submit reported an unknown outcome (timeout, connection cut) or
    its intent is older than the claim timeout (the worker was lost mid-call). Before that, the
    answer is probably on its way and checking would only cost a provider call.
    """
    attempt = delivery.attempt or 0
    if delivery.provider != "fal" or job.state in state.TERMINAL or not 0 < attempt <= job.attempt:
        return False
    if attempt < job.attempt or job.state is JobState.queued:
        return True
    if (job.provider != "fal" or job.state is not JobState.submitting or job.provider_request_id is not None
            or job.submit_started_at is None):
        return False
    if as_utc(job.submit_started_at) < utcnow() - timedelta(seconds=c.settings.claim_stale_seconds):
        return True
    unknown = session.scalar(sa.select(JobEvent.id).where(
        JobEvent.job_id == job.id, JobEvent.attempt == job.attempt, JobEvent.kind == "submit_outcome_unknown"
    ).limit(1))
    return unknown is not None


def _check_and_adopt(c: Context, delivery_id: uuid.UUID, check: PollTarget) -> str:
    """Adopt a held delivery's request id if fal knows that request under our key, then apply it."""
    answer = poll_target(c, check)
    with c.session() as session:
        found = _locked(session, delivery_id)
        if isinstance(found, str):
            return found
        delivery, job = found
        if answer is None:
            delivery.outcome = binding.HELD
            return "held; the provider check failed"
        verdict = binding.judge(session, job, check.attempt, delivery.provider, delivery.body, delivery.headers or {})
        if verdict.decision == "refused":
            return _refuse(session, delivery, job, verdict.reason)
        if verdict.decision == "held":
            if not _checkable(c, session, job, delivery):
                delivery.outcome = binding.HELD
                return "held"
            unknown = isinstance(answer.error, NotFound) and not isinstance(answer.error, ResultExpired)
            if unknown or binding.claimed_by_another(session, job, check.attempt, check.request_id):
                return _refuse(session, delivery, job, f"request {check.request_id[:80]} is not ours to adopt")
            job = _adopt_request_id(session, job, check.attempt, check.request_id)
        outcome = c.adapter(delivery.provider).parse_webhook(delivery.body)
        if outcome.status == "fetch_result":
            # The check already fetched the result: use it rather than calling again.
            outcome = answer
        return _done(delivery, apply(c, session, job, check.attempt, outcome, "webhook"))


def _adopt_request_id(session: Session, job: Job, attempt: int, request_id: str) -> Job:
    """Record a confirmed request id as the one `attempt` made (the current attempt moves to submitted)."""
    detail = {"request_id": request_id, "provider": "fal",
              "adopted": "submit outcome unknown; fal knows the request under our key"}
    if attempt == job.attempt and job.state is JobState.submitting:
        state.transition(session, job.id, JobState.submitted, kind="submitted", expect=[JobState.submitting],
                         values={"provider_request_id": request_id, "submitted_at": utcnow()}, detail=detail)
    else:
        state.record(session, job.id, "submitted", attempt, **detail)
    session.flush()
    locked = lock_job(session, job.id)
    assert locked is not None
    return locked


def _done(delivery: Delivery, outcome: str) -> str:
    delivery.processed_at = utcnow()
    delivery.outcome = outcome[:200]
    return outcome


def _target(job: Job, request_id: str | None = None, attempt: int | None = None) -> PollTarget:
    """What to ask the provider about: the job's current attempt, or the named one (a delivery's)."""
    rid = request_id or job.provider_request_id or (job.task_id if job.provider == "runware" else None) or ""
    meta = dict(job.provider_meta or {}) if attempt in (None, job.attempt) else {}
    return PollTarget(job.id, attempt or job.attempt, job.provider, job.model, rid, job.num_images, meta)


def poll_target(c: Context, target: PollTarget) -> Outcome | None:
    """Ask the provider; None when the call itself failed (try again later)."""
    try:
        return c.adapter(target.provider).poll(target.model, target.request_id, target.num_images, target.meta)
    except NotFound as exc:
        return Outcome("failed", error=exc, request_id=target.request_id)
    except ProviderError as exc:
        log.info("poll failed", extra={"job_id": str(target.job_id), "error": str(exc)})
        return None


def poll_job(c: Context, job_id: uuid.UUID) -> str:
    """Poll one silent job and reconcile what the provider says through the same path."""
    with c.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state not in WAITING:
            return "skipped"
        target = _target(job)
        if not target.request_id:
            return "no request id"
        job.last_polled_at = utcnow()
    outcome = poll_target(c, target)
    with c.session() as session:
        job = lock_job(session, job_id)
        if job is None:
            return "gone"
        state.record(session, job_id, "poll", target.attempt, status=outcome.status if outcome else "error")
        metrics.incr(session, "orchestrator_provider_requests_total", provider=target.provider, call="poll",
                     outcome=outcome.status if outcome else "error", code="-")
        if outcome is None:
            return "poll failed"
        if outcome.status == "fetch_result":
            return "pending"
        return apply(c, session, job, target.attempt, outcome, "poll")


def settle_runware(c: Context, job_id: uuid.UUID, not_found_before: datetime) -> str:
    """Settle a Runware attempt whose submit outcome is unknown, by getResponse on its task UUID.

    Runware knows a task by the UUID we chose and committed with the intent, so nothing is
    resubmitted before Runware has been asked: `processing` means it has the task (the job
    waits as submitted), a result or an error is reconciled as usual, and "not found" requeues
    only once no submit call can still be on its way (intent older than `not_found_before`).
    """
    with c.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state is not JobState.submitting or not job.submit_started_at or not job.task_id:
            return "skipped"
        target, intent = _target(job, job.task_id), job.submit_started_at
        job.last_polled_at = utcnow()
    outcome = poll_target(c, target)
    with c.session() as session:
        job = lock_job(session, job_id)
        if job is None or job.attempt != target.attempt:
            return "skipped"
        state.record(session, job_id, "poll", target.attempt, status=outcome.status if outcome else "error",
                     reason="submit outcome unknown")
        if outcome is None:
            return "poll failed"
        if job.state is not JobState.submitting or job.submit_started_at != intent:
            # A callback or the submit's own answer got there first: the usual rules apply.
            return apply(c, session, job, target.attempt, outcome, "settle") if job.state in WAITING else "moved on"
        guard = [Job.attempt == target.attempt, Job.submit_started_at == intent]
        if isinstance(outcome.error, NotFound):
            if as_utc(intent) >= not_found_before:
                return "waiting"
            return requeue(c, session, job, "Runware does not know the task: the submit never arrived", 0.0,
                           {"task_uuid": target.request_id}, count=False, expect=[JobState.submitting], where=guard)
        if outcome.status in ("pending", "fetch_result"):
            # Runware has the task ("processing"): it waits for its webhooks as submitted, polled if silent.
            moved = state.transition(session, job_id, JobState.submitted, kind="submit_settled",
                                     expect=[JobState.submitting], where=guard,
                                     values={"provider_request_id": target.request_id, "submitted_at": utcnow()},
                                     detail={"via": "getResponse", "status": "processing",
                                             "task_uuid": target.request_id})
            return "settled" if moved.applied else "unchanged"
        return apply(c, session, job, target.attempt, outcome, "settle")
