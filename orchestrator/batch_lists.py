"""Listing batches and jobs: filters, sorts and keyset cursors (the API's lists and the dashboard's).

Takes a session; never commits.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import catalog
from orchestrator.errors import NotFound
from orchestrator.models import Batch, BatchState, Job, JobState

PAGE_MAX = 500


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

def _enum(cls: Any, value: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise InvalidQuery(f"unknown state {value!r}; use one of {allowed}") from None


class InvalidQuery(NotFound, status=400, slug="invalid-query", title="Invalid query"):
    """A bad list filter or cursor."""


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
