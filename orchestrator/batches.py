"""Batch and job persistence: create, read, cancel, retry, and their public forms. Takes a session; never commits.

Listing (filters, sorts, cursors) is in orchestrator.batch_lists.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, object_session

from orchestrator import budget, bulk, pricing, state
from orchestrator.db import JSONType, Timestamp, iso, new_id, utcnow
from orchestrator.errors import Conflict
from orchestrator.intake import Plan
from orchestrator.lookup import owned
from orchestrator.models import Asset, Batch, BatchState, Job, JobEvent, JobState
from orchestrator.pricing import JobEstimate, Price
from orchestrator.responses import BatchOut, JobOut


@dataclass(frozen=True)
class Extras:
    """What a catalog diff adds to a new batch (see orchestrator.catalog_runs)."""

    # position -> {"catalog", "row", "content_key", "keys"}: the job's catalog identity.
    catalog_refs: Mapping[int, dict[str, Any]] = field(default_factory=dict)
    # position -> stored images to reuse: such jobs are written already succeeded, never sent.
    reused: Mapping[int, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None


def estimate_plan(session: Session, tenant: str, plan: Plan, prices: Mapping[str, Price],
                  free: Iterable[int] = ()) -> tuple[list[JobEstimate], dict[str, Any]]:
    """Price every job of a validated batch and check it can fit its caps (BudgetExceeded if not).

    Jobs at the `free` positions (reused catalog images) are never sent and cost nothing.
    """
    skip = set(free)
    estimates = [pricing.estimate_job(prices, j.requested_model, j.model, j.params) for j in plan.jobs
                 if j.position not in skip]
    cap = plan.request.max_cost_usd
    budget.check_fits(session, tenant, estimates, Decimal(str(cap)) if cap is not None else None)
    return estimates, pricing.summarize(estimates)


def create_batch(session: Session, tenant: str, plan: Plan, *, idempotency_key: str | None,
                 request_hash: str | None, extras: Extras | None = None,
                 prices: Mapping[str, Price] | None = None) -> tuple[Batch, bool]:
    """Insert a batch and all its jobs; return (batch, created). Replays an idempotent request.

    Raises BudgetExceeded (nothing written) when the batch could never fit a cap.
    """
    existing = find_replay(session, tenant, idempotency_key, request_hash)
    if existing is not None:
        return existing, False
    return insert_batch(session, tenant, plan, idempotency_key=idempotency_key, request_hash=request_hash,
                        extras=extras, prices=prices), True


def find_replay(session: Session, tenant: str, idempotency_key: str | None,
                request_hash: str | None) -> Batch | None:
    """The batch an idempotency key already created (Conflict if it was for another body).

    Two requests with the same key at once are serialised here (a transaction-scoped advisory
    lock on Postgres; SQLite runs one writer at a time): the second waits for the first to commit
    and replays its batch, instead of failing on the unique key.
    """
    if not idempotency_key:
        return None
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"{tenant}\n{idempotency_key}".encode()).digest()
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))
    existing = session.execute(sa.select(Batch).where(
        Batch.tenant == tenant, Batch.idempotency_key == idempotency_key)).scalar_one_or_none()
    if existing is not None and existing.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was already used with a different request body",
                       batch_id=str(existing.id))
    return existing


def insert_batch(session: Session, tenant: str, plan: Plan, *, idempotency_key: str | None,
                 request_hash: str | None, extras: Extras | None = None,
                 prices: Mapping[str, Price] | None = None) -> Batch:
    """Write a new batch and its jobs in the caller's transaction (BudgetExceeded: nothing written)."""
    extras = extras or Extras()
    req = plan.request
    estimates, summary = estimate_plan(session, tenant, plan, prices or pricing.DEFAULT_PRICES, extras.reused)
    costs = iter(e.cost for e in estimates)
    job_costs = {j.position: Decimal(0) if j.position in extras.reused else next(costs) for j in plan.jobs}
    now = utcnow()
    reused = len(extras.reused)
    batch = Batch(id=new_id(), tenant=tenant, name=req.name, lane=req.lane,
                  callback_url=str(req.callback_url) if req.callback_url else None,
                  metadata_=req.metadata, idempotency_key=idempotency_key, request_hash=request_hash,
                  unknown_outcome=req.unknown_outcome,
                  total=len(plan.jobs), count_queued=len(plan.jobs) - reused, count_succeeded=reused,
                  state=BatchState.queued, created_at=now, catalog_summary=extras.summary,
                  estimated_cost=Decimal(str(summary["estimated_cost"])),
                  max_cost_usd=Decimal(str(req.max_cost_usd)) if req.max_cost_usd is not None else None)
    session.add(batch)
    session.flush()
    insert_jobs(session, batch, plan, now, extras, job_costs)
    if reused:
        # Starts the batch, and finishes it at once when every row was unchanged.
        state.shift_counts(session, batch.id, {}, now=now)
    return batch


def job_rows(batch: Batch, plan: Plan, now: datetime, extras: Extras | None = None,
             costs: Mapping[int, Decimal] | None = None) -> list[dict[str, Any]]:
    """The `jobs` rows of a new batch, keyed by column attribute (also used by bench/intake.py).

    `costs` are the table estimates by position (what a budget counts while the job is in flight).
    """
    refs = extras.catalog_refs if extras else {}
    reused = extras.reused if extras else {}
    rows = []
    for j in plan.jobs:
        row = {"id": new_id(), "batch_id": batch.id, "tenant": batch.tenant, "position": j.position,
               "custom_id": j.custom_id, "lane": batch.lane, "requested_model": j.requested_model,
               "provider": j.provider, "model": j.model, "params": j.params, "num_images": j.num_images,
               "state": JobState.queued, "attempt": 0, "retries": 0, "next_attempt_at": now,
               "created_at": now, "updated_at": now,
               "estimated_cost": costs.get(j.position) if costs else None}
        if refs:
            row["catalog_ref"] = refs.get(j.position)
        if j.position in reused:
            row.update(state=JobState.succeeded, next_attempt_at=None, completed_at=now, cost=Decimal(0),
                       cost_source="priced")
        rows.append(row)
    return rows


def insert_jobs(session: Session, batch: Batch, plan: Plan, now: datetime, extras: Extras | None = None,
                costs: Mapping[int, Decimal] | None = None) -> None:
    """Bulk-insert the jobs of a new batch (COPY on Postgres), with reused images as assets."""
    rows = job_rows(batch, plan, now, extras, costs)
    bulk.insert_rows(session, Job, rows)
    if extras and extras.reused:
        by_position = {r["position"]: r["id"] for r in rows}
        assets = [{"id": new_id(), "job_id": by_position[position], "index": im["index"],
                   "storage_key": im["storage_key"], "content_type": im.get("content_type"), "width": im.get("width"),
                   "height": im.get("height"), "bytes": im.get("bytes"), "sha256": im.get("sha256"),
                   "seed": im.get("seed"), "cost": Decimal(0), "cost_source": "priced", "created_at": now,
                   "stored_at": now}
                  for position, images in extras.reused.items() for im in images]
        bulk.insert_rows(session, Asset, assets)
        # One server-side statement for the timeline of every reused job (no row per job from here).
        detail = {"reason": "content unchanged: the stored image is reused (see the job's catalog_ref)"}
        source = sa.select(Job.id, sa.literal("unchanged"), sa.literal(0), sa.literal(JobState.succeeded.value),
                           sa.literal(detail, JSONType), sa.literal(now, Timestamp())).where(
            Job.batch_id == batch.id, Job.state == JobState.succeeded)
        session.execute(sa.insert(JobEvent).from_select(
            ["job_id", "kind", "attempt", "to_state", "detail", "created_at"], source))


def get_batch(session: Session, tenant: str | None, batch_id: str | uuid.UUID) -> Batch:
    """One batch of this tenant, or NotFound (another tenant's batch is also NotFound).

    `tenant=None` is the operator's view (the dashboard): any tenant's batch.
    """
    return owned(session, Batch, tenant, batch_id, missing=f"no batch {batch_id}",
                 malformed=f"no resource {batch_id!r}")


def get_job(session: Session, tenant: str | None, job_id: str | uuid.UUID) -> Job:
    """One job of this tenant (any tenant's for `tenant=None`), or NotFound."""
    return owned(session, Job, tenant, job_id, missing=f"no job {job_id}", malformed=f"no resource {job_id!r}")


def job_events(session: Session, job_id: uuid.UUID) -> list[JobEvent]:
    """A job's timeline, oldest first."""
    return list(session.execute(sa.select(JobEvent).where(JobEvent.job_id == job_id)
                                .order_by(JobEvent.id)).scalars())


def cancel(session: Session, batch: Batch) -> tuple[int, list[uuid.UUID]]:
    """Cancel a batch's unfinished jobs; returns (count, job ids to cancel at the provider)."""
    return state.cancel_batch(session, batch.id)


def retry(session: Session, batch: Batch) -> int:
    """Re-queue a batch's failed jobs."""
    return state.retry_failed(session, batch.id)


def batch_out(batch: Batch, held: int | None = None) -> BatchOut:
    """The public form of a batch (the model the API returns and documents).

    `held` is its count of jobs held by a budget cap; looked up when not given (lists pass it in,
    from one budget.held_counts query for the page).
    """
    session = object_session(batch)
    if held is None:
        held = budget.held_counts(session, [batch.id]).get(batch.id, 0) if session and batch.count_queued else 0
    return BatchOut(
        id=str(batch.id), name=batch.name, lane=batch.lane, state=batch.state.value,
        total=batch.total, counts=batch.counts(), cost=float(batch.cost or 0),
        estimated_cost=float(batch.estimated_cost or 0),
        max_cost_usd=float(batch.max_cost_usd) if batch.max_cost_usd is not None else None, held_by_budget=held,
        callback_url=batch.callback_url, unknown_outcome=batch.unknown_outcome, metadata=batch.metadata_,
        created_at=iso(batch.created_at) or "", started_at=iso(batch.started_at),
        completed_at=iso(batch.completed_at), catalog=catalog_summary(batch),
        parent_batch_id=str(batch.parent_batch_id) if batch.parent_batch_id else None,
        schedule_id=str(batch.schedule_id) if batch.schedule_id else None,
    )


def batch_json(batch: Batch) -> dict[str, Any]:
    """The public form of a batch as JSON data (e.g. for the batch.completed callback)."""
    return batch_out(batch).model_dump(mode="json")


def catalog_summary(batch: Batch) -> dict[str, Any] | None:
    """A catalog batch's diff counts; `failed` is live (jobs of this run that failed so far)."""
    if not batch.catalog_summary:
        return None
    summary = dict(batch.catalog_summary)
    summary["failed"] = batch.count_failed
    return summary


def job_fields(job: Job) -> dict[str, Any]:
    """The fields of JobOut for a job."""
    return {
        "id": str(job.id), "batch_id": str(job.batch_id), "position": job.position,
        "custom_id": job.custom_id, "model": job.model, "requested_model": job.requested_model,
        "provider": job.provider, "state": job.state.value, "attempt": job.attempt, "params": job.params,
        "provider_request_id": job.provider_request_id, "error_code": job.error_code,
        "error_message": job.error_message, "cost": float(job.cost) if job.cost is not None else None,
        "cost_source": job.cost_source,
        "estimated_cost": float(job.estimated_cost) if job.estimated_cost is not None else None,
        "hold_reason": job.hold_reason if job.state is JobState.queued else None,
        "created_at": iso(job.created_at) or "", "completed_at": iso(job.completed_at),
    }


def job_out(job: Job) -> JobOut:
    """The public form of a job."""
    return JobOut(**job_fields(job))


def job_json(job: Job) -> dict[str, Any]:
    """The public form of a job as JSON data."""
    return job_out(job).model_dump(mode="json")
