"""Process stored webhook deliveries: bind each to its attempt, then reconcile it exactly once."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import sqlalchemy as sa
from celery import shared_task
from sqlalchemy.orm import Session

from orchestrator import binding, queue, state
from orchestrator.db import as_utc, utcnow
from orchestrator.log import bound
from orchestrator.models import Delivery, Job, JobEvent, JobState
from orchestrator.providers import registry
from orchestrator.providers.errors import NotFound, ResultExpired
from workers.celery_app import TASK_OPTS
from workers.context import Context, ctx
from workers.reconcile import PollTarget, apply, lock_job, poll_target, target_of

log = logging.getLogger(__name__)


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
            verdict = _judge(c, session, delivery, job, attempt)
            if isinstance(verdict, str):
                return verdict
            if verdict.decision == "held":
                # Our submit call never got its answer: ask fal, with our key, whether the signed
                # request id is one of ours before adopting it (never on the delivery's word alone).
                check = target_of(job, verdict.claimed, attempt)
            else:
                outcome = c.adapter(delivery.provider).parse_webhook(delivery.body)
                if outcome.status != "fetch_result":
                    return _done(delivery, apply(c, session, job, attempt, outcome, "webhook"))
                target = target_of(job, outcome.request_id, attempt)
                state.record(session, job.id, "webhook", job.attempt, status="fetch_result")
    if verdict.decision == "held":
        return _check_and_adopt(c, delivery_id, check)
    # fal said OK but sent no payload: fetch the result, with no transaction open during the call.
    result = poll_target(c, target)
    with c.session() as session:
        fetched_for, locked = session.get(Delivery, delivery_id), lock_job(session, target.job_id)
        if fetched_for is None or locked is None or fetched_for.processed_at is not None:
            return "skipped"
        if result is None:
            return "fetch failed; will retry"
        return _done(fetched_for, apply(c, session, locked, target.attempt, result, "result_fetch"))


def _locked(session: Session, delivery_id: uuid.UUID) -> tuple[Delivery, Job] | str:
    """The unprocessed verified delivery and its job, both row-locked; or why there is nothing to do."""
    both = session.execute(sa.select(Delivery, Job).join(Job, Job.id == Delivery.job_id)
                           .where(Delivery.id == delivery_id, Delivery.processed_at.is_(None),
                                  Delivery.verified.is_(True))
                           .with_for_update().execution_options(populate_existing=True)).one_or_none()
    if both is not None:
        return both[0], both[1]  # the usual case: one statement locks both rows
    delivery = session.execute(sa.select(Delivery).where(Delivery.id == delivery_id).with_for_update()
                               ).scalar_one_or_none()
    if delivery is None or delivery.processed_at is not None or not delivery.verified or not delivery.job_id:
        return "skipped"
    job = lock_job(session, delivery.job_id)
    if job is None:
        return _done(delivery, "job gone")
    return delivery, job


def _judge(c: Context, session: Session, delivery: Delivery, job: Job, attempt: int) -> binding.Verdict | str:
    """binding's verdict on a delivery for `attempt`, or what it came to: refused, or held until its id is known."""
    verdict = binding.judge(session, job, attempt, delivery.provider, delivery.body, delivery.headers or {})
    if verdict.decision == "refused":
        return _refuse(session, delivery, job, verdict.reason)
    if verdict.decision == "held" and job.state in state.TERMINAL:
        # The job ended on another attempt's result: nothing can use this one any more (a finished
        # job never moves), so it is closed on the timeline instead of staying held forever.
        why = f"job is {job.state.value}"
        state.record(session, job.id, "late_result_ignored", attempt, source="webhook", why=why,
                     request_id=verdict.claimed)
        return _done(delivery, f"ignored: {why}")
    if verdict.decision == "held" and not _checkable(c, session, job, delivery):
        delivery.outcome = binding.HELD
        return "held"
    return verdict


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
    if registry.capabilities(delivery.provider).knows_our_task_id:
        return False  # the sweep looks such an attempt up by our task id (settle_by_task_id)
    if job.state in state.TERMINAL or not 0 < attempt <= job.attempt:
        return False
    if attempt < job.attempt or job.state is JobState.queued:
        return True
    if (registry.capabilities(job.provider).knows_our_task_id or job.state is not JobState.submitting
            or job.provider_request_id is not None or job.submit_started_at is None):
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
        verdict = _judge(c, session, delivery, job, check.attempt)
        if isinstance(verdict, str):
            return verdict
        if verdict.decision == "held":
            unknown = isinstance(answer.error, NotFound) and not isinstance(answer.error, ResultExpired)
            if unknown or binding.claimed_by_another(session, job, check.attempt, check.request_id):
                return _refuse(session, delivery, job, f"request {check.request_id[:80]} is not ours to adopt")
            job = _adopt_request_id(session, job, check.attempt, check.request_id, delivery.provider)
        outcome = c.adapter(delivery.provider).parse_webhook(delivery.body)
        if outcome.status == "fetch_result":
            # The check already fetched the result: use it rather than calling again.
            outcome = answer
        return _done(delivery, apply(c, session, job, check.attempt, outcome, "webhook"))


def _adopt_request_id(session: Session, job: Job, attempt: int, request_id: str, provider: str) -> Job:
    """Record a confirmed request id as the one `attempt` made (the current attempt moves to submitted)."""
    detail = {"request_id": request_id, "provider": provider,
              "adopted": f"submit outcome unknown; {provider} knows the request under our key"}
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
