"""Failover of family-alias jobs between providers, driven by the breaker.

A job submitted by family alias (`flux-schnell`, ...) may run on either provider. When a
provider's breaker opens, its queued alias jobs move to the other provider at once (instead
of waiting out the cooldown, then failing one by one); once the breaker is closed again, alias
jobs still queued off their primary provider move back. Only queued jobs move: a job that
was claimed or submitted stays where it is, so nothing is ever sent twice. Every move is a
timeline event on the job (`failover` / `failback`) with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import catalog, pricing, state
from orchestrator.db import as_utc, utcnow
from orchestrator.models import Job, JobState, ProviderAccount
from orchestrator.pricing import Price

PAGE = 500  # jobs moved per call; the sweep carries on with the rest


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


def breaker_is_open(session: Session, provider: str, now: datetime) -> bool:
    """Whether `provider`'s breaker is open at `now`."""
    until = session.scalar(sa.select(ProviderAccount.breaker_open_until).where(ProviderAccount.provider == provider))
    return until is not None and as_utc(until) > now


def reroute_queued(session: Session, provider: str, prices: Mapping[str, Price], now: datetime) -> list[uuid.UUID]:
    """`provider`'s breaker is open: move its queued alias jobs to the other provider now."""
    moved: list[uuid.UUID] = []
    for job in _queued_alias_jobs(session, Job.provider == provider):
        target = catalog.fallback_model(job.requested_model, job.model)
        if target is None or breaker_is_open(session, target.provider, now):
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
            closed[primary.provider] = not breaker_is_open(session, primary.provider, now)
        if closed[primary.provider] and move(session, job, primary, "failback", f"{primary.provider} breaker closed",
                                             prices):
            moved.append(job.id)
    return moved


def rebalance(session: Session, providers: tuple[str, ...], prices: Mapping[str, Price], now: datetime) -> int:
    """The sweep's pass: reroute from every open breaker (alias batches that arrived since), move back the rest."""
    moved = sum(len(reroute_queued(session, p, prices, now)) for p in providers if breaker_is_open(session, p, now))
    return moved + len(move_back(session, prices, now))


def _queued_alias_jobs(session: Session, where: sa.ColumnElement[bool]) -> list[Job]:
    return list(session.scalars(
        sa.select(Job).where(Job.state == JobState.queued, Job.requested_model.in_(list(catalog.ALIASES)), where)
        .order_by(Job.next_attempt_at).limit(PAGE).with_for_update(skip_locked=True)))
