"""Batch and job persistence: create, read, list, cancel, retry. Takes a session; never commits."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, object_session

from orchestrator import budget, catalog, pricing, state
from orchestrator.db import JSONType, Timestamp, iso, new_id, utcnow
from orchestrator.errors import Conflict, NotFound
from orchestrator.intake import Plan
from orchestrator.models import Asset, Batch, BatchState, Job, JobEvent, JobState
from orchestrator.pricing import JobEstimate, Price
from orchestrator.schemas import BatchOut, JobOut

PAGE_MAX = 500


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
    """The batch an idempotency key already created (Conflict if it was for another body)."""
    if not idempotency_key:
        return None
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
    """Bulk-insert the jobs of a new batch (executemany in pages), with reused images as assets."""
    rows = job_rows(batch, plan, now, extras, costs)
    for start in range(0, len(rows), 5000):
        session.execute(sa.insert(Job), rows[start:start + 5000])
    if extras and extras.reused:
        by_position = {r["position"]: r["id"] for r in rows}
        assets = [{"id": new_id(), "job_id": by_position[position], "index": im["index"],
                   "storage_key": im["storage_key"], "content_type": im.get("content_type"), "width": im.get("width"),
                   "height": im.get("height"), "bytes": im.get("bytes"), "sha256": im.get("sha256"),
                   "seed": im.get("seed"), "cost": Decimal(0), "cost_source": "priced", "created_at": now,
                   "stored_at": now}
                  for position, images in extras.reused.items() for im in images]
        table = cast(sa.Table, Asset.__table__)
        for start in range(0, len(assets), 5000):
            session.execute(sa.insert(table), assets[start:start + 5000])
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
    bid = _uuid(batch_id)
    q = sa.select(Batch).where(Batch.id == bid)
    batch = session.execute(q if tenant is None else q.where(Batch.tenant == tenant)).scalar_one_or_none()
    if batch is None:
        raise NotFound(f"no batch {batch_id}")
    return batch


def get_job(session: Session, tenant: str | None, job_id: str | uuid.UUID) -> Job:
    """One job of this tenant (any tenant's for `tenant=None`), or NotFound."""
    jid = _uuid(job_id)
    q = sa.select(Job).where(Job.id == jid)
    job = session.execute(q if tenant is None else q.where(Job.tenant == tenant)).scalar_one_or_none()
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def job_events(session: Session, job_id: uuid.UUID) -> list[JobEvent]:
    """A job's timeline, oldest first."""
    return list(session.execute(sa.select(JobEvent).where(JobEvent.job_id == job_id)
                                .order_by(JobEvent.id)).scalars())


def list_batches(session: Session, tenant: str | None, *, states: list[str], cursor: str | None, limit: int,
                 filters: BatchFilter | None = None, sort: str = "-created") -> tuple[list[Batch], str | None]:
    """Batches matching `filters`, keyset-paginated on (sort key, id); newest first by default.

    The API passes the key's tenant; the dashboard passes None (every tenant) or the tenant filter.
    """
    f = filters or BatchFilter()
    q = f.apply(sa.select(Batch), tenant, session)
    if states:
        q = q.where(Batch.state.in_([_enum(BatchState, s) for s in states]))
    column, descending = _sort_column(sort)
    if cursor:
        parts = _decode_cursor(cursor)
        if len(parts) != 2:
            raise InvalidQuery("the cursor is not one this API issued")
        value, bid = parts
        key = (_cursor_value(sort, value), _cursor_uuid(bid))
        q = q.where(sa.tuple_(column, Batch.id) < key if descending else sa.tuple_(column, Batch.id) > key)
    order = (column.desc(), Batch.id.desc()) if descending else (column.asc(), Batch.id.asc())
    rows = list(session.execute(q.order_by(*order).limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = _encode_cursor([_cursor_text(getattr(rows[-1], column.key)), str(rows[-1].id)]) if more else None
    return rows, nxt


SORTS = {"created": Batch.created_at, "cost": Batch.cost, "total": Batch.total, "name": Batch.name}


@dataclass(frozen=True)
class BatchFilter:
    """What a batch list may be narrowed by (the dashboard's filter bar, also /v1/batches)."""

    provider: str | None = None
    model: str | None = None
    lane: str | None = None
    schedule_id: uuid.UUID | None = None
    tenant: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    search: str | None = None
    parent_batch_id: uuid.UUID | None = None

    def apply(self, q: sa.Select[Any], tenant: str | None, session: Session | None = None) -> sa.Select[Any]:
        """Add this filter's conditions to a SELECT over batches (`session` lets the search pick its plan)."""
        if tenant is not None:
            q = q.where(Batch.tenant == tenant)
        if self.tenant:
            q = q.where(Batch.tenant == self.tenant)
        if self.lane:
            q = q.where(Batch.lane == self.lane)
        if self.schedule_id:
            q = q.where(Batch.schedule_id == self.schedule_id)
        if self.parent_batch_id:
            q = q.where(Batch.parent_batch_id == self.parent_batch_id)
        if self.created_from:
            q = q.where(Batch.created_at >= self.created_from)
        if self.created_to:
            q = q.where(Batch.created_at < self.created_to)
        if self.provider or self.model:
            # Answered from ix_jobs_batch_provider_model, one short index probe per batch.
            uses = sa.select(Job.id).where(Job.batch_id == Batch.id)
            if self.provider:
                uses = uses.where(Job.provider == self.provider)
            if self.model:
                # A family alias means any of its models; jobs store the resolved model id (indexed).
                uses = uses.where(Job.model.in_(catalog.ALIASES.get(self.model, (self.model,))))
            q = q.where(uses.exists())
        if self.search:
            pattern = "%" + self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            q = q.where(sa.or_(Batch.name.ilike(pattern), _prompt_match(session, pattern)))
        return q


# Above this many estimated matching jobs, probing each listed batch beats collecting all matches.
PROBE_ABOVE_ROWS = 20_000


def _prompt_match(session: Session | None, pattern: str) -> sa.ColumnElement[bool]:
    """Batches with a job whose prompt matches, planned by how common the text is.

    A rare text: collect the matching jobs' batches through the trigram index (a few rows). A
    common one ("lighthouse" in 90k prompts): fetching every match costs seconds, while probing
    each batch as the list is walked newest first finds a match within its first rows, so a page
    costs about 50 short index probes. Postgres's own estimate (EXPLAIN) chooses.
    """
    prompt = Job.params["prompt"].as_string()
    matches = sa.select(Job.batch_id).where(prompt.ilike(pattern))
    if session is not None and session.get_bind().dialect.name == "postgresql" \
            and _estimated_rows(session, matches) > PROBE_ABOVE_ROWS:
        probe = (sa.select(sa.literal(1)).where(Job.batch_id == Batch.id, prompt.ilike(pattern))
                 .limit(1).correlate(Batch).scalar_subquery())
        return probe.is_not(None)
    return Batch.id.in_(matches)


def _estimated_rows(session: Session, stmt: sa.Select[Any]) -> float:
    compiled = stmt.compile(dialect=session.get_bind().dialect)
    plan = session.connection().exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar()
    doc = json.loads(plan) if isinstance(plan, str) else plan
    return float(doc[0]["Plan"]["Plan Rows"])


def _sort_column(sort: str) -> tuple[Any, bool]:
    descending = sort.startswith("-")
    column = SORTS.get(sort.lstrip("-"))
    if column is None:
        raise InvalidQuery(f"unknown sort {sort!r}; use one of {', '.join(SORTS)} (prefix - for descending)")
    return column, descending


def _cursor_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _cursor_value(sort: str, value: Any) -> Any:
    try:
        name = sort.lstrip("-")
        if name == "created":
            return datetime.fromisoformat(value)
        if name == "cost":
            return Decimal(value)
        if name == "total":
            return int(value)
        return str(value)
    except (ValueError, ArithmeticError, TypeError):
        raise InvalidQuery("the cursor is not one this API issued") from None


def _cursor_uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidQuery("the cursor is not one this API issued") from None


def list_jobs(session: Session, batch: Batch, *, states: list[str], cursor: str | None,
              limit: int) -> tuple[list[Job], str | None]:
    """Jobs by position, keyset-paginated on position."""
    q = sa.select(Job).where(Job.batch_id == batch.id)
    if states:
        q = q.where(Job.state.in_([_enum(JobState, s) for s in states]))
    if cursor:
        (after,) = _decode_cursor(cursor)
        q = q.where(Job.position > int(after))
    rows = list(session.execute(q.order_by(Job.position).limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_encode_cursor([rows[-1].position]) if more else None)


def cancel(session: Session, batch: Batch) -> tuple[int, list[uuid.UUID]]:
    """Cancel a batch's unfinished jobs; returns (count, job ids to cancel at the provider)."""
    return state.cancel_batch(session, batch.id)


def retry(session: Session, batch: Batch) -> int:
    """Re-queue a batch's failed jobs."""
    return state.retry_failed(session, batch.id)


def _uuid(value: str | uuid.UUID) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no resource {value!r}") from None


def _enum(cls: Any, value: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise InvalidQuery(f"unknown state {value!r}; use one of {allowed}") from None


class InvalidQuery(NotFound):
    """A bad list filter or cursor."""

    status = 400
    type = "https://orchestrator.dev/problems/invalid-query"
    title = "Invalid query"


def _encode_cursor(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> list[Any]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(parts, list) or not parts:
            raise ValueError
        return parts
    except ValueError:
        raise InvalidQuery("the cursor is not one this API issued") from None


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



def provider_mix(session: Session, batch_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, str, int]]]:
    """Per batch: (provider, model, jobs), from ix_jobs_batch_provider_model."""
    out: dict[uuid.UUID, list[tuple[str, str, int]]] = {}
    if not batch_ids:
        return out
    rows = session.execute(sa.select(Job.batch_id, Job.provider, Job.model, sa.func.count())
                           .where(Job.batch_id.in_(batch_ids)).group_by(Job.batch_id, Job.provider, Job.model)
                           .order_by(Job.batch_id, sa.func.count().desc())).all()
    for batch_id, provider, model, n in rows:
        out.setdefault(batch_id, []).append((provider, model, n))
    return out
