"""Dispatch: claim due jobs within limits and submit each exactly once per attempt.

The "about to submit" intent (`submit_started_at`) is committed before the provider call. A
job found in `submitting` with the intent set may have reached the provider, so nothing
resends it blindly: its callback (the URL names the attempt) or a provider check by the sweep
settles it. A job claimed but without the intent never left us and is safely re-queued.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from celery import shared_task

from orchestrator import catalog, queue, state
from orchestrator.binding import held_deliveries
from orchestrator.db import utcnow
from orchestrator.log import bound
from orchestrator.models import Job, JobState
from orchestrator.providers.base import Lane, SubmitRequest, Submitted
from orchestrator.providers.errors import PermanentProviderError, ProviderError, RateLimited
from orchestrator.providers.registry import PROVIDERS, build_payload
from orchestrator.webhook_urls import webhook_url
from workers import admission, direct_upload
from workers.celery_app import TASK_OPTS
from workers.context import MAX_COUNTDOWN, Context, ctx, on_slot_freed
from workers.retry import Retry, requeue, retry_or_fail

log = logging.getLogger(__name__)


class Submit(StrEnum):
    """What a submit came to (besides the retry policy's answers for a failed one)."""

    submitted = "submitted"
    submitted_late = "submitted_late"  # the job had moved on: the request id is kept for audits and callbacks
    stale = "stale"  # the claim is no longer current: nothing sent, or the failure changes nothing
    duplicate = "duplicate"  # a redelivered message: the first run may have reached the provider
    unknown = "unknown"  # the request may have been received: a callback or the sweep settles it
    failed = "failed"  # the provider refused the request for good


@shared_task(name=queue.DISPATCH, **TASK_OPTS)
def dispatch_due(provider: str | None = None) -> int:
    """Claim what the limits allow for one provider (or all) and queue their submissions."""
    return sum(dispatch_provider(ctx(), p) for p in ([provider] if provider else PROVIDERS))


def dispatch_provider(c: Context, provider: str, *, wait: bool = False) -> int:
    """One claim round for one provider account; this thread submits what it claimed."""
    claimed = claim_round(c, provider, wait=wait)
    submit_claimed(c, claimed)
    return len(claimed)


def claim_round(c: Context, provider: str, *, wait: bool = False) -> list[Any]:
    """Claim what the account's limits allow, with each attempt's submit intent, in one short transaction.

    `wait` queues behind a concurrent claimer's account lock instead of skipping: a worker that
    has just freed a slot uses it, since the holder may have counted before that slot was free.
    """
    with c.session() as session:
        result = admission.claim(session, c.settings, provider, utcnow(), wait=wait)
        if result.retry_in is not None:
            c.publisher.after_commit(session, queue.DISPATCH, provider,
                                     countdown=min(MAX_COUNTDOWN, result.retry_in))
    return result.rows


def submit_claimed(c: Context, claimed: list[Any]) -> dict[uuid.UUID, Submit | Retry]:
    """Send a claim round's jobs concurrently (one pooled HTTP client), no broker message between."""
    if len(claimed) <= 1:
        return {job.id: send(c, job) for job in claimed}
    futures = {job.id: c.submit_pool.submit(send, c, job) for job in claimed}
    return {job_id: future.result() for job_id, future in futures.items()}


@dataclass
class _Refill:
    """Per process and provider: one thread claims at a time, others leave it a note."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    again: bool = False


_refills: dict[str, _Refill] = {provider: _Refill() for provider in PROVIDERS}


@on_slot_freed
def refill(c: Context, provider: str) -> None:
    """A transition freed a slot of `provider` in this thread's transaction: claim and submit now.

    Threads of one process that free slots at the same moment do not queue on the account row
    one behind the other: the first claims (again, as long as others left a note while it did),
    the rest return at once. Its claims are submitted after the lock is released.
    """
    slot = _refills.setdefault(provider, _Refill())
    slot.again = True
    claimed: list[Any] = []
    while slot.again:
        if not slot.lock.acquire(blocking=False):
            break  # the holder sees the note and claims once more
        try:
            slot.again = False
            claimed += claim_round(c, provider, wait=True)
        finally:
            slot.lock.release()
    submit_claimed(c, claimed)


@shared_task(name=queue.SUBMIT_JOB, **TASK_OPTS)
def submit_job(job_id: str, attempt: int) -> Submit | Retry:
    """Submit one claimed job attempt (a message queued by an earlier release, which claimed
    without the intent; claims now carry it and are sent by their claimer)."""
    return submit(ctx(), uuid.UUID(job_id), attempt)


def submit(c: Context, job_id: uuid.UUID, attempt: int) -> Submit | Retry:
    """Record the intent of a job claimed without one, then send it."""
    with bound(job_id=job_id, attempt=attempt), c.session() as session:
        job = session.execute(sa.select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.state is not JobState.submitting or job.attempt != attempt:
            return Submit.stale
        if job.submit_started_at is not None:
            # A redelivered message: the first run may have reached the provider.
            state.record(session, job_id, "submit_skipped", attempt, reason="intent already recorded")
            return Submit.duplicate
        # The intent and the attempt's Runware taskUUID are committed before the call, so the
        # sweep can later ask Runware about this exact attempt.
        job.submit_started_at = utcnow()
        job.task_id = str(uuid.uuid4())
        # The job row holds the current attempt's request id only (earlier ones are on the
        # timeline), so a callback for this attempt is never matched against the last one's.
        job.provider_request_id = None
    return send(c, job)


def send(c: Context, job: Any) -> Submit | Retry:
    """Call the provider for a claimed attempt whose intent is committed, with no transaction
    open, then save the answer. `job` is the claim's row (or the job): id, attempt, provider,
    model, params, lane, task_id."""
    with bound(job_id=job.id, attempt=job.attempt):
        try:
            answer = c.adapter(job.provider).submit(build_request(c, job))
        except ProviderError as exc:
            count_call(c, job.provider, type(exc).__name__, exc.status_code or exc.code or "none")
            return submit_failed(c, job.id, job.attempt, exc)
        count_call(c, job.provider, "accepted", 200)
        return submit_succeeded(c, job.id, job.attempt, answer, job.provider)


def count_call(c: Context, provider: str, outcome: str, code: object) -> None:
    """Count a submit for /metrics in memory (flushed every second; no hot counter row per call)."""
    c.tally.add("orchestrator_provider_requests_total", provider=provider, call="submit", outcome=outcome, code=code)


def build_request(c: Context, job: Any) -> SubmitRequest:
    """The provider request for a job's current attempt."""
    spec = catalog.MODELS[job.model]
    url = webhook_url(c.settings.public_url, job.provider, job.id, job.attempt, c.settings.resolved_secret_key())
    lane: Lane = "bulk" if job.lane == "bulk" else "interactive"
    return SubmitRequest(model=job.model, payload=build_payload(spec, job.params), webhook_url=url,
                         lane=lane, task_id=job.task_id or str(uuid.uuid4()),
                         upload_url=direct_upload.upload_url(c, job))


def submit_succeeded(c: Context, job_id: uuid.UUID, attempt: int, answer: Submitted, provider: str) -> Submit:
    """Save the provider's request id; the callback may already have moved the job on."""
    now = utcnow()
    with c.session() as session:
        admission.record_success(session, provider)
        # The job's row lock orders this with workers.deliveries.process, which judges deliveries
        # under the same lock: a delivery is either seen held here or sees the id there.
        job = session.execute(sa.select(Job).where(Job.id == job_id).with_for_update()
                              .execution_options(populate_existing=True)).scalar_one()
        # Deliveries that arrived before this answer were held; now they can be matched.
        for delivery_id in held_deliveries(session, job_id, attempt):
            c.publisher.after_commit(session, queue.PROCESS_DELIVERY, str(delivery_id))
        values = {"provider_request_id": answer.request_id, "provider_meta": answer.meta, "submitted_at": now}
        if job.attempt == attempt:
            moved = state.transition(session, job_id, JobState.submitted, kind="submitted", locked=job,
                                     expect=[JobState.submitting], values=values,
                                     detail={"request_id": answer.request_id, "provider": provider})
            if moved.applied:
                return Submit.submitted
        else:
            moved = state.Transition(False, job.state)
        # The job moved on while we waited (a cancel, or a later attempt): keep the id for audits
        # and for matching this attempt's callbacks.
        session.execute(sa.update(Job).where(Job.id == job_id, Job.attempt == attempt,
                                             Job.provider_request_id.is_(None)).values(**values))
        state.record(session, job_id, "submitted", attempt, request_id=answer.request_id, provider=provider,
                     late=True)
        session.refresh(job)
        if job.attempt == attempt and moved.from_state is JobState.cancelled:
            c.publisher.after_commit(session, queue.CANCEL_AT_PROVIDER, str(job_id))
        elif job.provider_request_id not in (None, answer.request_id) or job.attempt != attempt:
            # The job took another attempt's result (or moved to a new attempt) while this one was
            # being submitted: this request is superseded, so ask the provider to drop it.
            c.publisher.after_commit(session, queue.CANCEL_AT_PROVIDER, str(job_id), answer.request_id, answer.meta)
    return Submit.submitted_late


def submit_failed(c: Context, job_id: uuid.UUID, attempt: int, exc: ProviderError) -> Submit | Retry:
    """Decide what a failed submit means: wait, retry later, fail over, or fail the job."""
    now = utcnow()
    detail: dict[str, object] = {"error": str(exc), "status_code": exc.status_code, "code": exc.code}
    with c.session() as session:
        job = session.execute(sa.select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.state is not JobState.submitting or job.attempt != attempt:
            # The sweep or a callback settled this attempt while the call was failing: theirs stands.
            if job is not None:
                state.record(session, job_id, "submit_failed_late", attempt, **detail)
            return Submit.stale
        if isinstance(exc, RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else 5.0
            admission.block(session, job.provider, wait, now)
            return requeue(c, session, job, f"rate limited (429), retry after {wait:.1f}s", wait, detail,
                           count=False)
        if isinstance(exc, PermanentProviderError):
            state.fail(session, job_id, exc.code or "provider_rejected", exc.message, detail=detail)
            return Submit.failed
        if exc.outcome_unknown:
            # The request may have been received: never resend blindly. The callback, or the
            # sweep's check with the provider, settles this attempt.
            # (The job's row is locked above, as in submit_succeeded, so no held delivery is missed.)
            state.record(session, job_id, "submit_outcome_unknown", attempt, **detail)
            # A callback held for this attempt may now be checked with the provider (workers.deliveries).
            for delivery_id in held_deliveries(session, job_id, attempt):
                c.publisher.after_commit(session, queue.PROCESS_DELIVERY, str(delivery_id))
            return Submit.unknown
        opened = admission.record_failure(session, c.settings, job.provider, now)
        return retry_or_fail(c, session, job, exc, detail, breaker_open=opened,
                             reason=f"submit failed: {exc.code or exc.status_code}")


@shared_task(name=queue.CANCEL_AT_PROVIDER, **TASK_OPTS)
def cancel_at_provider(job_id: str, request_id: str | None = None, meta: dict[str, object] | None = None) -> bool:
    """Ask the provider to drop a request (fal only; Runware has no cancel).

    Without `request_id`: the request of a cancelled job. With it: a superseded attempt's request,
    after the job took another attempt's result (never the request whose result the job keeps).
    """
    c = ctx()
    with c.session() as session:
        job = session.get(Job, uuid.UUID(job_id))
        if job is None:
            return False
        if request_id is None:
            if job.state is not JobState.cancelled or not job.provider_request_id:
                return False
            provider, model, request_id, meta = job.provider, job.model, job.provider_request_id, job.provider_meta
        elif request_id == job.provider_request_id and job.state is not JobState.cancelled:
            return False
        else:
            provider, model = job.provider, job.model
    try:
        accepted = c.adapter(provider).cancel(model, request_id, meta)
    except ProviderError as exc:
        log.warning("provider cancel failed", extra={"job_id": job_id, "error": str(exc)})
        accepted = False
    with c.session() as session:
        state.record(session, uuid.UUID(job_id), "provider_cancel", 0, accepted=accepted)
    return accepted

