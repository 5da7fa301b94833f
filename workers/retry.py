"""The retry policy for a failed generation or submit: back off and re-queue, fail over, or give up.

A transient failure re-queues the job with exponential backoff until it runs out of attempts.
A job submitted by family alias (`flux-schnell`, ...) may run on either provider: when a
provider's breaker opens, its queued alias jobs move to the other provider at once (instead
of waiting out the cooldown, then failing one by one); once the breaker is closed again, alias
jobs still queued off their primary provider move back. Only queued jobs move: a job that
was claimed or submitted stays where it is, so nothing is ever sent twice. Every move is a
timeline event on the job (`failover` / `failback`) with the reason.

Used by dispatch (a failed submit), reconcile (a failed generation) and the sweep; not a task module.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import catalog, pricing, queue, state
from orchestrator.db import utcnow
from orchestrator.models import Job, JobState
from orchestrator.pricing import Price
from orchestrator.providers.errors import ProviderError
from orchestrator.providers.registry import PROVIDERS
from orchestrator.settings import Settings
from workers import admission
from workers.context import Context

PAGE = 500  # jobs moved per call; the sweep carries on with the rest


class Retry(StrEnum):
    """What the retry policy did with a job."""

    requeued = "requeued"
    unchanged = "unchanged"  # the job moved on meanwhile: the decision applied to nothing
    failed = "failed"  # out of attempts
    failed_over = "failed_over"  # moved to the other provider's model


def retry_or_fail(c: Context, session: Session, job: Job, exc: ProviderError, detail: dict[str, object],
                  *, breaker_open: bool, reason: str) -> Retry:
    """Retry a transient failure with backoff (failing over if allowed), or fail when out of attempts."""
    if job.retries + 1 >= c.settings.max_attempts:
        state.fail(session, job.id, exc.code or "provider_error",
                   f"gave up after {job.retries + 1} attempts: {exc.message}", detail=detail)
        return Retry.failed
    if breaker_open:
        # Every queued alias job leaves this provider now, not after the breaker's cooldown.
        prices = c.settings.price_table()
        rerouted = reroute_queued(session, job.provider, prices, utcnow())
        failed_over = failover(session, job, reason, prices)
        if rerouted or failed_over:
            for provider in PROVIDERS:
                kick(c, session, provider)
        if failed_over:
            return Retry.failed_over
    return requeue(c, session, job, reason, backoff(c.settings, job.retries + 1), detail)


def requeue(c: Context, session: Session, job: Job, reason: str, delay: float,
            detail: dict[str, object], *, count: bool = True, kind: str = "retry_scheduled",
            expect: Iterable[JobState] | None = None, where: Iterable[sa.ColumnElement[bool]] = ()) -> Retry:
    """Put a job back in the queue after `delay` seconds, with the reason on its timeline.

    `expect` and `where` make the move conditional on what the caller decided from (see
    state.transition): a sweep's decision never applies to a job that moved on meanwhile.
    """
    values: dict[str, object] = {"next_attempt_at": utcnow() + timedelta(seconds=delay),
                                 "submit_started_at": None}
    if count:
        values["retries"] = job.retries + 1
    moved = state.transition(session, job.id, JobState.queued, kind=kind, reason=reason,
                             detail={**detail, "delay_seconds": round(delay, 2)}, values=values,
                             expect=expect, where=where)
    # The state module queues the claim round for when it is due (and one now if a slot freed).
    return Retry.requeued if moved.applied else Retry.unchanged


def backoff(settings: Settings, retries: int) -> float:
    """Exponential backoff with full-range jitter, capped."""
    base = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** max(0, retries - 1))
    return base * random.uniform(0.5, 1.5)


def failover(session: Session, job: Job, reason: str, prices: Mapping[str, Price]) -> bool:
    """Move a failed family-alias job to the other provider's model; False if it cannot move."""
    target = catalog.fallback_model(job.requested_model, job.model)
    if target is None:
        return False
    return move(session, job, target, "failover", f"{reason}; {job.provider} breaker open", prices,
                values={"next_attempt_at": utcnow(), "submit_started_at": None, "retries": job.retries + 1})


def kick(c: Context, session: Session, provider: str) -> None:
    """Jobs were moved to another provider's queue: run its claim round after this commit.

    (A freed slot needs no kick: the state module's outbox runs the claim round.)"""
    c.publisher.after_commit(session, queue.DISPATCH, provider)


def move(session: Session, job: Job, target: catalog.ModelSpec, kind: str, reason: str,
         prices: Mapping[str, Price], values: Mapping[str, Any] | None = None) -> bool:
    """Point one job at `target` (params mapped for it); a job that cannot be mapped stays, saying why."""
    try:
        params = catalog.for_fallback(job.params, target)
    except catalog.CatalogError as exc:
        state.record(session, job.id, f"{kind}_impossible", job.attempt, reason=str(exc))
        return False
    if job.state is not JobState.queued:  # the caller's transition moves it back to queued
        moved = state.transition(
            session, job.id, JobState.queued, kind=kind, reason=reason, detail={"from": job.model, "to": target.id},
            values={"provider": target.provider, "model": target.id, "params": params,
                    "estimated_cost": pricing.job_cost(prices, target.id, params), **(values or {})})
        return moved.applied
    # Still queued: not a state change, only where it will be sent. Conditional on the job still
    # being queued on its old model, so a claim that won the race keeps the job where it is.
    # The job is due on its new provider at once: a backoff was earned against the old one, and
    # the nudge that follows the move goes to the new provider now, not when the backoff ends.
    old = job.model  # (the ORM UPDATE below refreshes `job` in the session)
    now = utcnow()
    done = session.execute(
        sa.update(Job).where(Job.id == job.id, Job.state == JobState.queued, Job.model == old)
        .values(**{"provider": target.provider, "model": target.id, "params": params, "updated_at": now,
                   "next_attempt_at": now, "estimated_cost": pricing.job_cost(prices, target.id, params),
                   **(values or {})}))
    if done.rowcount != 1:  # type: ignore[attr-defined]
        return False
    state.record(session, job.id, kind, job.attempt, reason=reason, **{"from": old, "to": target.id})
    return True


def reroute_queued(session: Session, provider: str, prices: Mapping[str, Price], now: datetime) -> list[uuid.UUID]:
    """`provider`'s breaker is open: move its queued alias jobs to the other provider now."""
    moved: list[uuid.UUID] = []
    for job in _queued_alias_jobs(session, Job.provider == provider):
        target = catalog.fallback_model(job.requested_model, job.model)
        if target is None or admission.breaker_open(session, target.provider, now):
            continue  # both down: leave it where it is, the breaker's cooldown decides
        if move(session, job, target, "failover", f"{provider} breaker open", prices):
            moved.append(job.id)
    return moved


def move_back(session: Session, prices: Mapping[str, Price], now: datetime) -> list[uuid.UUID]:
    """Alias jobs still queued off their primary provider go back once its breaker is closed."""
    primaries = {pair[0] for pair in catalog.ALIASES.values()}
    moved: list[uuid.UUID] = []
    closed: dict[str, bool] = {}
    for job in _queued_alias_jobs(session, Job.model.not_in(primaries)):
        primary = catalog.resolve_model(job.requested_model)
        if primary.provider not in closed:
            closed[primary.provider] = not admission.breaker_open(session, primary.provider, now)
        if closed[primary.provider] and move(session, job, primary, "failback", f"{primary.provider} breaker closed",
                                             prices):
            moved.append(job.id)
    return moved


def rebalance(session: Session, providers: tuple[str, ...], prices: Mapping[str, Price], now: datetime) -> int:
    """The sweep's pass: reroute from every open breaker (alias batches that arrived since), move back the rest."""
    moved = sum(len(reroute_queued(session, p, prices, now))
                for p in providers if admission.breaker_open(session, p, now))
    return moved + len(move_back(session, prices, now))


def _queued_alias_jobs(session: Session, where: sa.ColumnElement[bool]) -> list[Job]:
    return list(session.scalars(
        sa.select(Job).where(Job.state == JobState.queued, Job.requested_model.in_(list(catalog.ALIASES)), where)
        .order_by(Job.next_attempt_at).limit(PAGE).with_for_update(skip_locked=True)))
