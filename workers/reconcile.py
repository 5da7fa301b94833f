"""Reconciliation: turn a provider outcome (webhook or poll) into at most one state change.

Callers hold the job's row lock (SELECT ... FOR UPDATE) for the whole decision, so concurrent
duplicates serialise: the first applies, the rest see the new state and change nothing.
Images are collected by provider image id (Runware sends one webhook per image) under unique
constraints, so a repeated image is recorded once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import queue, state
from orchestrator.db import utcnow
from orchestrator.models import Asset, Job, JobState
from orchestrator.pricing import Price
from orchestrator.providers.base import ImageRef, Outcome
from orchestrator.providers.errors import NotFound, ProviderError, TransientProviderError
from workers import admission
from workers.context import Context
from workers.dispatch import retry_or_fail

WAITING = (JobState.submitting, JobState.submitted)


def lock_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job, row-locked for the rest of the transaction."""
    return session.execute(sa.select(Job).where(Job.id == job_id).with_for_update()
                           .execution_options(populate_existing=True)).scalar_one_or_none()


def apply(c: Context, session: Session, job: Job, attempt: int, outcome: Outcome, source: str) -> str:
    """Apply one outcome for `attempt` of a locked job; returns a short description."""
    if _adoptable(job, attempt, outcome):
        return _adopt(c, session, job, attempt, outcome, source)
    if job.state in state.TERMINAL or job.state in (JobState.storing, JobState.queued) or job.attempt != attempt:
        why = f"job is {job.state.value}" if job.attempt == attempt else f"stale attempt {attempt}"
        state.record(session, job.id, "late_result_ignored", attempt, source=source, status=outcome.status, why=why)
        return f"ignored: {why}"
    if outcome.status == "pending":
        return "pending"
    if outcome.status == "failed":
        return _failed(c, session, job, outcome.error, source)
    if outcome.status == "succeeded":
        return _collect(c, session, job, outcome, source)
    return "fetch_result"


def _adoptable(job: Job, attempt: int, outcome: Outcome) -> bool:
    """A valid result of an earlier attempt, or of an attempt already re-queued, for an unfinished job.

    Such a result is a paid image: throwing it away as late and running the new attempt would pay
    twice. So the job takes it; a queued retry is dropped and a later attempt is cancelled.
    """
    if outcome.status != "succeeded" or not outcome.images or attempt < 1:
        return False
    if job.state is JobState.queued:
        return attempt <= job.attempt
    return job.state in WAITING and attempt < job.attempt


def _adopt(c: Context, session: Session, job: Job, attempt: int, outcome: Outcome, source: str) -> str:
    later = job.attempt if job.state is not JobState.queued else None
    superseded = (job.provider_request_id, dict(job.provider_meta or {})) if later else (None, {})
    added = sum(_add_asset(session, job, img, attempt) for img in outcome.images)
    have = session.scalar(sa.select(sa.func.count()).select_from(Asset).where(Asset.job_id == job.id)) or 0
    if have < job.num_images:
        # Runware delivers one image per webhook: keep what arrived and wait for the rest.
        state.record(session, job.id, "image_received", attempt, source=source, have=have, of=job.num_images,
                     earlier_attempt=True, added=added)
        return f"collected {have}/{job.num_images} (attempt {attempt})"
    cost = _cost(session, job.id)
    if cost is None and outcome.cost is not None:
        cost = Decimal(str(outcome.cost))
    values: dict[str, object] = {"callback_at": utcnow()}
    if outcome.request_id:
        values["provider_request_id"] = outcome.request_id
    moved = state.transition(session, job.id, JobState.storing, kind="earlier_result_adopted",
                             expect=(JobState.queued, *WAITING), cost=cost, values=values,
                             detail={"source": source, "images": have, "attempt": attempt,
                                     "superseded_attempt": later, "request_id": outcome.request_id})
    if not moved.applied:
        return "unchanged"
    # storing: the outbox has this worker refill the slot and store the images after the commit
    request_id, meta = superseded
    if request_id and request_id != outcome.request_id:
        # The later attempt reached the provider: ask it to drop that request (fal; a no-op on Runware).
        c.publisher.after_commit(session, queue.CANCEL_AT_PROVIDER, str(job.id), request_id, meta)
    return f"adopted attempt {attempt}"


def _collect(c: Context, session: Session, job: Job, outcome: Outcome, source: str) -> str:
    added = sum(_add_asset(session, job, img) for img in outcome.images)
    have = session.scalar(sa.select(sa.func.count()).select_from(Asset).where(Asset.job_id == job.id)) or 0
    if added == 0 and outcome.images:
        state.record(session, job.id, "duplicate_result", job.attempt, source=source)
    if have < job.num_images:
        if job.provider == "fal" or not outcome.images:
            # fal returns all images at once: fewer than asked for is a failed generation,
            # never a success (an empty result must not count as done).
            err = TransientProviderError(job.provider, f"{have} of {job.num_images} images returned",
                                         code="incomplete_result")
            return _failed(c, session, job, err, source)
        state.record(session, job.id, "image_received", job.attempt, source=source, have=have, of=job.num_images)
        return f"collected {have}/{job.num_images}"
    # Runware reports a cost per image, delivered one image at a time: sum what was collected.
    cost, cost_source = _cost(session, job.id), "reported"
    if cost is None and outcome.cost is not None:
        cost = Decimal(str(outcome.cost))
    if cost is None:
        # fal (like the real one) reports no cost: price each image from the table.
        cost, cost_source = _price_assets(session, job, c.settings.price_table()), "priced"
    # Entering `storing` frees the slot and queues the store step (state.Outbox): this worker
    # refills the slot and stores the images right after the commit.
    state.transition(session, job.id, JobState.storing, kind="result_received", expect=WAITING,
                     detail={"source": source, "images": have}, cost=cost,
                     values={"callback_at": utcnow(), "cost_source": cost_source})
    return "storing"


def _add_asset(session: Session, job: Job, img: ImageRef, attempt: int | None = None) -> bool:
    key = img.provider_image_id or f"{attempt or job.attempt}:{img.index}"
    exists = session.scalar(sa.select(Asset.id).where(Asset.job_id == job.id, Asset.provider_image_id == key))
    if exists is not None:
        return False
    index = session.scalar(sa.select(sa.func.count()).select_from(Asset).where(Asset.job_id == job.id)) or 0
    if index >= job.num_images:
        return False
    session.add(Asset(job_id=job.id, index=index, provider_image_id=key, source_url=img.url,
                      width=img.width, height=img.height, content_type=img.content_type,
                      seed=str(img.seed) if img.seed is not None else None, nsfw=img.nsfw,
                      cost=Decimal(str(img.cost)) if img.cost is not None else None,
                      cost_source="reported" if img.cost is not None else None))
    session.flush()
    return True


def _cost(session: Session, job_id: uuid.UUID) -> Decimal | None:
    total = session.scalar(sa.select(sa.func.sum(Asset.cost)).where(Asset.job_id == job_id))
    return Decimal(str(total)) if total is not None else None


def _price_assets(session: Session, job: Job, prices: Mapping[str, Price]) -> Decimal:
    """Price a job's images at the size the provider returned (else the size asked for)."""
    price, total = prices[job.model], Decimal(0)
    for asset in session.scalars(sa.select(Asset).where(Asset.job_id == job.id).order_by(Asset.index)):
        asset.cost = price.image(asset.width or job.params["width"], asset.height or job.params["height"])
        asset.cost_source = "priced"
        total += asset.cost
    session.flush()
    return total


def _failed(c: Context, session: Session, job: Job, error: ProviderError | None, source: str) -> str:
    error = error or TransientProviderError(job.provider, "the provider reported a failure without details")
    detail: dict[str, object] = {"source": source, "error": str(error), "code": error.code}
    if isinstance(error, NotFound) and job.state is JobState.submitted:
        # The provider had the request and no longer has its result: resubmitting would pay
        # again, so the job fails cleanly and a user's retry decides.
        state.transition(session, job.id, JobState.failed, kind="failed", detail={**detail, "retryable": True},
                         values={"error_code": "result_expired", "error_message": error.message})
        return "failed: result expired"
    if not error.retry_job:
        state.transition(session, job.id, JobState.failed, kind="failed", detail=detail,
                         values={"error_code": error.code or "generation_failed", "error_message": error.message})
        return "failed"
    opened = admission.breaker_open(session, job.provider, utcnow()) if error.retry_call else False
    return retry_or_fail(c, session, job, error, detail, breaker_open=opened,
                         reason=f"generation failed: {error.code or error.message}")
