"""Reconciliation: turn a provider outcome (webhook or poll) into at most one state change.

Also the polling of providers: for a job whose callback is late (`poll_job`), and for a submit
whose outcome is unknown, at a provider that knows our task id (`settle_by_task_id`); both
reconcile the answer through `apply`.

Callers hold the job's row lock (SELECT ... FOR UPDATE) for the whole decision, so concurrent
duplicates serialise: the first applies, the rest see the new state and change nothing.
Images are collected by provider image id (Runware sends one webhook per image) under unique
constraints, so a repeated image is recorded once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import metrics, outbox, queue, state
from orchestrator.db import as_utc, utcnow
from orchestrator.models import Asset, Job, JobState
from orchestrator.pricing import Price
from orchestrator.providers import registry
from orchestrator.providers.base import ImageRef, Outcome
from orchestrator.providers.errors import NotFound, ProviderError, TransientProviderError
from workers import admission
from workers.context import Context
from workers.retry import Retry, requeue, retry_or_fail

log = logging.getLogger(__name__)
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
    assets = _assets(session, job.id)
    added = sum(_add_asset(session, job, assets, img, attempt) for img in outcome.images)
    have = len(assets)
    if have < job.num_images:
        # Runware delivers one image per webhook: keep what arrived and wait for the rest.
        state.record(session, job.id, "image_received", attempt, source=source, have=have, of=job.num_images,
                     earlier_attempt=True, added=added)
        return f"collected {have}/{job.num_images} (attempt {attempt})"
    cost = _reported_cost(assets)
    if cost is None and outcome.cost is not None:
        cost = Decimal(str(outcome.cost))
    values: dict[str, object] = {"callback_at": utcnow()}
    if outcome.request_id:
        values["provider_request_id"] = outcome.request_id
    moved = state.transition(session, job.id, JobState.storing, kind="earlier_result_adopted",
                             expect=(JobState.queued, *WAITING), cost=cost, values=values, locked=job,
                             detail={"source": source, "images": have, "attempt": attempt,
                                     "superseded_attempt": later, "request_id": outcome.request_id})
    if not moved.applied:
        return "unchanged"
    # storing: the outbox has this worker refill the slot and store the images after the commit
    _plan_store(session, job, assets)
    request_id, meta = superseded
    if request_id and request_id != outcome.request_id:
        # The later attempt reached the provider: ask it to drop that request (fal; a no-op on Runware).
        c.publisher.after_commit(session, queue.CANCEL_AT_PROVIDER, str(job.id), request_id, meta)
    return f"adopted attempt {attempt}"


def _collect(c: Context, session: Session, job: Job, outcome: Outcome, source: str) -> str:
    assets = _assets(session, job.id)
    added = sum(_add_asset(session, job, assets, img) for img in outcome.images)
    have = len(assets)
    if added == 0 and outcome.images:
        state.record(session, job.id, "duplicate_result", job.attempt, source=source)
    if have < job.num_images:
        if registry.capabilities(job.provider).images_together or not outcome.images:
            # All images arrive at once (fal): fewer than asked for is a failed generation,
            # never a success (an empty result must not count as done).
            err = TransientProviderError(job.provider, f"{have} of {job.num_images} images returned",
                                         code="incomplete_result")
            return _failed(c, session, job, err, source)
        state.record(session, job.id, "image_received", job.attempt, source=source, have=have, of=job.num_images)
        return f"collected {have}/{job.num_images}"
    # Runware reports a cost per image, delivered one image at a time: sum what was collected.
    cost, cost_source = _reported_cost(assets), "reported"
    if cost is None and outcome.cost is not None:
        cost = Decimal(str(outcome.cost))
    if cost is None:
        # fal (like the real one) reports no cost: price each image from the table.
        cost, cost_source = _price_assets(job, assets, c.settings.price_table()), "priced"
    # Entering `storing` frees the slot and queues the store step (orchestrator.outbox): this worker
    # refills the slot and stores the images right after the commit.
    moved = state.transition(session, job.id, JobState.storing, kind="result_received", expect=WAITING,
                             detail={"source": source, "images": have}, cost=cost, locked=job,
                             values={"callback_at": utcnow(), "cost_source": cost_source})
    if moved.applied:
        _plan_store(session, job, assets)
    return "storing"


def _assets(session: Session, job_id: uuid.UUID) -> list[Asset]:
    """The job's images so far, in index order (read once per outcome; added to in memory)."""
    return list(session.scalars(sa.select(Asset).where(Asset.job_id == job_id).order_by(Asset.index)))


def _add_asset(session: Session, job: Job, assets: list[Asset], img: ImageRef, attempt: int | None = None) -> bool:
    """Add an image unless it is already collected (by provider image id) or the job has all it asked for."""
    key = img.provider_image_id or f"{attempt or job.attempt}:{img.index}"
    if any(a.provider_image_id == key for a in assets) or len(assets) >= job.num_images:
        return False
    asset = Asset(job_id=job.id, index=len(assets), provider_image_id=key, source_url=img.url,
                  width=img.width, height=img.height, content_type=img.content_type,
                  seed=str(img.seed) if img.seed is not None else None, nsfw=img.nsfw,
                  cost=Decimal(str(img.cost)) if img.cost is not None else None,
                  cost_source="reported" if img.cost is not None else None)
    # The unique constraints (job, index) and (job, provider image id) still guard a race this
    # job's row lock did not cover.
    session.add(asset)
    assets.append(asset)
    return True


def _reported_cost(assets: list[Asset]) -> Decimal | None:
    costs = [Decimal(str(a.cost)) for a in assets if a.cost is not None]
    return sum(costs, Decimal(0)) if costs else None


def _price_assets(job: Job, assets: list[Asset], prices: Mapping[str, Price]) -> Decimal:
    """Price a job's images at the size the provider returned (else the size asked for)."""
    price, total = prices[job.model], Decimal(0)
    for asset in assets:
        asset.cost = price.image(asset.width or job.params["width"], asset.height or job.params["height"])
        asset.cost_source = "priced"
        total += asset.cost
    return total


def _plan_store(session: Session, job: Job, assets: list[Asset]) -> None:
    """Hand the store step what this transaction knows, so it starts without reading it again."""
    session.flush()  # the new assets get their ids
    outbox.of(session).storing[job.id] = (job, list(assets))


def _failed(c: Context, session: Session, job: Job, error: ProviderError | None, source: str) -> str | Retry:
    error = error or TransientProviderError(job.provider, "the provider reported a failure without details")
    detail: dict[str, object] = {"source": source, "error": str(error), "code": error.code}
    if isinstance(error, NotFound) and job.state is JobState.submitted:
        # The provider had the request and no longer has its result: resubmitting would pay
        # again, so the job fails cleanly and a user's retry decides.
        state.fail(session, job.id, "result_expired", error.message, detail={**detail, "retryable": True})
        return "failed: result expired"
    if not error.retry_job:
        state.fail(session, job.id, error.code or "generation_failed", error.message, detail=detail)
        return "failed"
    opened = admission.breaker_open(session, job.provider, utcnow()) if error.retry_call else False
    return retry_or_fail(c, session, job, error, detail, breaker_open=opened,
                         reason=f"generation failed: {error.code or error.message}")


class Poll(StrEnum):
    """What asking a provider about a job came to, when `apply` did not get to decide."""

    skipped = "skipped"  # nothing to ask about (any more)
    no_request_id = "no request id"
    gone = "gone"
    failed = "poll failed"  # the call itself failed: ask again later
    pending = "pending"
    waiting = "waiting"  # Runware does not know the task, but the submit may still be on its way
    settled = "settled"  # Runware has the task: the job waits as submitted
    moved_on = "moved on"
    unchanged = "unchanged"


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


def target_of(job: Job, request_id: str | None = None, attempt: int | None = None) -> PollTarget:
    """What to ask the provider about: the job's current attempt, or the named one (a delivery's)."""
    ours = job.task_id if registry.capabilities(job.provider).knows_our_task_id else None
    rid = request_id or job.provider_request_id or ours or ""
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


def poll_job(c: Context, job_id: uuid.UUID) -> Poll | str:
    """Poll one silent job and reconcile what the provider says through the same path."""
    with c.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state not in WAITING:
            return Poll.skipped
        target = target_of(job)
        if not target.request_id:
            return Poll.no_request_id
        job.last_polled_at = utcnow()
    outcome = poll_target(c, target)
    with c.session() as session:
        job = lock_job(session, job_id)
        if job is None:
            return Poll.gone
        state.record(session, job_id, "poll", target.attempt, status=outcome.status if outcome else "error")
        metrics.incr(session, "orchestrator_provider_requests_total", provider=target.provider, call="poll",
                     outcome=outcome.status if outcome else "error", code="-")
        if outcome is None:
            return Poll.failed
        if outcome.status == "fetch_result":
            return Poll.pending
        return apply(c, session, job, target.attempt, outcome, "poll")


def settle_by_task_id(c: Context, job_id: uuid.UUID, not_found_before: datetime) -> Poll | Retry | str:
    """Settle an attempt whose submit outcome is unknown, by asking for the task id we chose (Runware's
    getResponse on its taskUUID).

    Runware knows a task by the UUID we chose and committed with the intent, so nothing is
    resubmitted before Runware has been asked: `processing` means it has the task (the job
    waits as submitted), a result or an error is reconciled as usual, and "not found" requeues
    only once no submit call can still be on its way (intent older than `not_found_before`).
    """
    with c.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state is not JobState.submitting or not job.submit_started_at or not job.task_id:
            return Poll.skipped
        target, intent = target_of(job, job.task_id), job.submit_started_at
        job.last_polled_at = utcnow()
    outcome = poll_target(c, target)
    with c.session() as session:
        job = lock_job(session, job_id)
        if job is None or job.attempt != target.attempt:
            return Poll.skipped
        state.record(session, job_id, "poll", target.attempt, status=outcome.status if outcome else "error",
                     reason="submit outcome unknown")
        if outcome is None:
            return Poll.failed
        if job.state is not JobState.submitting or job.submit_started_at != intent:
            # A callback or the submit's own answer got there first: the usual rules apply.
            return apply(c, session, job, target.attempt, outcome, "settle") if job.state in WAITING else Poll.moved_on
        guard = [Job.attempt == target.attempt, Job.submit_started_at == intent]
        if isinstance(outcome.error, NotFound):
            if as_utc(intent) >= not_found_before:
                return Poll.waiting
            return requeue(c, session, job, "Runware does not know the task: the submit never arrived", 0.0,
                           {"task_uuid": target.request_id}, count=False, expect=[JobState.submitting], where=guard)
        if outcome.status in ("pending", "fetch_result"):
            # Runware has the task ("processing"): it waits for its webhooks as submitted, polled if silent.
            moved = state.transition(session, job_id, JobState.submitted, kind="submit_settled",
                                     expect=[JobState.submitting], where=guard,
                                     values={"provider_request_id": target.request_id, "submitted_at": utcnow()},
                                     detail={"via": "getResponse", "status": "processing",
                                             "task_uuid": target.request_id})
            return Poll.settled if moved.applied else Poll.unchanged
        return apply(c, session, job, target.attempt, outcome, "settle")
