"""Budget caps: a batch's `max_cost_usd` and a tenant's caps per calendar day and month.

Spend is what the provider charged (a job's recorded cost) plus, for jobs at the provider, their
table estimate. Dispatch admits a job only if its estimate still fits under every cap that
applies; `admit` runs inside the claim transaction holding the tenant's budget row lock (and the
batch row lock), so claimers for any provider in any process see each other's admissions. A job
that does not fit stays queued with the reason `budget` and is looked at again later.

A job's spend counts in the day and month (tenant timezone) in which dispatch admitted it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.db import upsert_insert, utcnow
from orchestrator.errors import BatchRejected, DomainError, ItemProblem
from orchestrator.models import Batch, Job, JobEvent, JobState, TenantBudget
from orchestrator.pricing import JobEstimate, usd

AT_PROVIDER = (JobState.submitting, JobState.submitted, JobState.storing)
MAX_CAP = Decimal("1000000")
HELD = "budget"


class BudgetExceeded(BatchRejected, slug="budget-exceeded", title="The batch can never fit its budget"):
    """The batch can never run within a cap; nothing was written."""

    def __init__(self, cap: str, limit: Decimal, estimate: Decimal, message: str):
        super().__init__([ItemProblem(None, None, cap, message)], detail=message)
        self.extra.update(cap=cap, limit=float(limit), estimated_cost=float(estimate))


class InvalidBudget(DomainError, status=422, slug="invalid-budget", title="Invalid budget"):
    """A cap or timezone that cannot be used."""


# What a job has cost or will cost: its recorded cost, else its estimate while at the provider.
SPEND = sa.case((Job.cost.is_not(None), Job.cost),
                (Job.state.in_(AT_PROVIDER), sa.func.coalesce(Job.estimated_cost, 0)), else_=0)


def windows(tz: str, now: datetime) -> tuple[datetime, datetime]:
    """The start of the current day and month in `tz`, in UTC (SQLite compares stored UTC text)."""
    local = now.astimezone(ZoneInfo(tz))
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return day.astimezone(UTC), day.replace(day=1).astimezone(UTC)


def tenant_spend(session: Session, tenant: str, tz: str, now: datetime) -> tuple[Decimal, Decimal]:
    """(spend today, spend this month) of a tenant."""
    day, month = windows(tz, now)
    row = session.execute(sa.select(
        sa.func.coalesce(sa.func.sum(sa.case((Job.charged_at >= day, SPEND), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(SPEND), 0),
    ).where(Job.tenant == tenant, Job.charged_at >= month)).one()
    return Decimal(str(row[0])), Decimal(str(row[1]))


def batch_spend(session: Session, batch_id: uuid.UUID) -> Decimal:
    """What a batch's jobs have cost or will cost at their estimates."""
    return Decimal(str(session.scalar(sa.select(sa.func.coalesce(sa.func.sum(SPEND), 0))
                                      .where(Job.batch_id == batch_id)) or 0))


@dataclass
class _Cap:
    name: str
    limit: Decimal
    spent: Decimal


def admit(session: Session, due: Sequence[Any], now: datetime, recheck_seconds: float) -> list[uuid.UUID]:
    """The row-locked queued jobs (in claim order) whose estimates fit every cap; the rest are held.

    `due` are the claim query's rows (`admit_columns()`): each job with the facts the caps need,
    so the common case (no cap anywhere) costs no statement at all. Held jobs get the reason `budget` (on their
    timeline the first time) and come due again after `recheck_seconds`, when a finished, failed
    or cheaper job, a new day or a raised cap may let them go.
    """
    if not due:
        return []
    rows = {r.id: r for r in due}
    job_ids = [r.id for r in due]
    if not any(r.has_budget or r.max_cost_usd is not None for r in due):
        return job_ids  # nothing capped: the common case
    # Locks in a fixed order (tenants, then batches by id, as state.claim does): no cycles between claimers.
    budgets = {b.tenant: b for b in session.scalars(
        sa.select(TenantBudget).where(TenantBudget.tenant.in_({r.tenant for r in rows.values()}))
        .order_by(TenantBudget.tenant).with_for_update())}
    capped = sorted({r.batch_id for r in rows.values() if r.max_cost_usd is not None})
    if not budgets and not capped:
        return job_ids
    batch_caps = dict(session.execute(sa.select(Batch.id, Batch.max_cost_usd).where(Batch.id.in_(capped))
                                      .order_by(Batch.id).with_for_update()).all())
    caps: dict[object, list[_Cap]] = {}
    for tenant, b in budgets.items():
        today, month = tenant_spend(session, tenant, b.timezone, now)
        caps[tenant] = [_Cap(n, lim, s) for n, lim, s in (("daily", b.daily_usd, today),
                                                          ("monthly", b.monthly_usd, month)) if lim is not None]
    for batch_id, limit in batch_caps.items():
        caps[batch_id] = [_Cap("max_cost_usd", Decimal(str(limit)), batch_spend(session, batch_id))]
    admitted: list[uuid.UUID] = []
    held: list[tuple[Any, _Cap, Decimal]] = []
    for job_id in job_ids:
        r = rows[job_id]
        estimate = Decimal(str(r.estimated_cost or 0))
        mine = caps.get(r.tenant, []) + caps.get(r.batch_id, [])
        over = next((c for c in mine if c.spent + estimate > c.limit), None)
        if over is not None:
            held.append((r, over, estimate))
            continue
        for c in mine:
            c.spent += estimate
        admitted.append(job_id)
    _mark(session, admitted, held, now, recheck_seconds)
    return admitted


def _mark(session: Session, admitted: list[uuid.UUID], held: list[tuple[Any, _Cap, Decimal]], now: datetime,
          recheck_seconds: float) -> None:
    if admitted:
        session.execute(sa.update(Job).where(Job.id.in_(admitted)).values(charged_at=now, hold_reason=None)
                        .execution_options(synchronize_session=False))
    if not held:
        return
    session.execute(sa.update(Job).where(Job.id.in_([r.id for r, _, _ in held]))
                    .values(hold_reason=HELD, next_attempt_at=now + timedelta(seconds=recheck_seconds))
                    .execution_options(synchronize_session=False))
    fresh = [(r, cap, est) for r, cap, est in held if r.hold_reason != HELD]
    if fresh:  # the reason goes on the timeline once per hold, not on every re-check
        session.execute(sa.insert(JobEvent), [
            {"job_id": r.id, "kind": "held", "attempt": r.attempt, "created_at": now,
             "detail": {"reason": HELD, "cap": cap.name, "limit": float(cap.limit),
                        "spent": float(usd(cap.spent)), "estimated_cost": float(est)}}
            for r, cap, est in fresh])


def admit_columns() -> tuple[Any, ...]:
    """What `admit` needs of each due job, selected by the claim query itself (jobs joined to batches)."""
    has_budget = sa.exists().where(TenantBudget.tenant == Job.tenant)
    return (Job.id, Job.tenant, Job.batch_id, Job.estimated_cost, Job.hold_reason, Job.attempt,
            Batch.max_cost_usd, has_budget.label("has_budget"))


def held_counts(session: Session, batch_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Queued jobs held by a budget cap, per batch."""
    ids = list(batch_ids)
    if not ids:
        return {}
    return dict(session.execute(held_query(ids)).all())


def held_query(batch_ids: list[uuid.UUID]) -> sa.Select[tuple[uuid.UUID, int]]:
    """Held jobs per batch (read through the partial index ix_jobs_held)."""
    return (sa.select(Job.batch_id, sa.func.count())
            .where(Job.batch_id.in_(batch_ids), Job.state == JobState.queued, Job.hold_reason == HELD)
            .group_by(Job.batch_id))


def check_fits(session: Session, tenant: str, estimates: Sequence[JobEstimate], max_cost: Decimal | None) -> None:
    """Reject a batch that could never run within its own cap or the tenant's caps."""
    total = usd(sum((e.cost for e in estimates), Decimal(0)))
    if max_cost is not None and total > max_cost:
        raise BudgetExceeded("max_cost_usd", max_cost, total,
                             f"the batch's estimated cost ${total} is above its max_cost_usd ${max_cost}")
    b = session.get(TenantBudget, tenant)
    if b is None or not estimates:
        return
    dearest = max(e.cost for e in estimates)
    for name, limit in (("daily", b.daily_usd), ("monthly", b.monthly_usd)):
        if limit is not None and dearest > limit:
            raise BudgetExceeded(f"tenant.{name}", Decimal(str(limit)), dearest,
                                 f"a job of this batch is estimated at ${dearest}, above the tenant's "
                                 f"{name} cap ${Decimal(str(limit))}: it could never be dispatched")


def parse_cap(name: str, value: Any) -> Decimal | None:
    """A cap in USD (null clears it), or InvalidBudget naming the field."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidBudget(f"{name} must be a number of USD or null", field=name)
    try:
        cap = Decimal(str(value))
    except InvalidOperation:
        raise InvalidBudget(f"{name} must be a number of USD or null, not {value!r}", field=name) from None
    if not cap.is_finite() or cap < 0 or cap > MAX_CAP:
        raise InvalidBudget(f"{name} must be between 0 and {MAX_CAP} USD", field=name)
    return usd(cap)


def parse_timezone(value: Any) -> str:
    """An IANA timezone name, or InvalidBudget."""
    if not isinstance(value, str) or not value:
        raise InvalidBudget("timezone must be an IANA name such as UTC or Europe/Berlin", field="timezone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidBudget(f"unknown timezone {value!r}; use an IANA name such as Europe/Berlin",
                            field="timezone") from None
    return value


def set_budget(session: Session, tenant: str, changes: Mapping[str, Any]) -> TenantBudget:
    """Create or change a tenant's caps; keys not given keep their value. Call release_held after commit."""
    unknown = set(changes) - {"daily_usd", "monthly_usd", "timezone"}
    if unknown:
        raise InvalidBudget(f"unknown field(s) {', '.join(sorted(unknown))}; use daily_usd, monthly_usd, timezone",
                            field=sorted(unknown)[0])
    values: dict[str, Any] = {k: parse_cap(k, changes[k]) for k in ("daily_usd", "monthly_usd") if k in changes}
    if "timezone" in changes:
        values["timezone"] = parse_timezone(changes["timezone"])
    table = TenantBudget.__table__
    session.execute(upsert_insert(session, table).values(tenant=tenant, timezone="UTC", updated_at=utcnow())
                    .on_conflict_do_nothing())
    budget = session.execute(sa.select(TenantBudget).where(TenantBudget.tenant == tenant).with_for_update()
                             .execution_options(populate_existing=True)).scalar_one()
    for key, value in values.items():
        setattr(budget, key, value)
    budget.updated_at = utcnow()
    session.flush()
    return budget


def release_held(session: Session, *, tenant: str | None = None, batch_id: uuid.UUID | None = None) -> int:
    """Make held jobs due now (after a cap was raised). Run in its own transaction, not under the budget lock."""
    q = sa.update(Job).where(Job.state == JobState.queued, Job.hold_reason == HELD)
    q = q.where(Job.tenant == tenant) if tenant is not None else q.where(Job.batch_id == batch_id)
    result = session.execute(q.values(next_attempt_at=utcnow()).execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def budget_json(session: Session, tenant: str, now: datetime | None = None) -> dict[str, Any]:
    """A tenant's caps and what it has spent against them."""
    b = session.get(TenantBudget, tenant)
    tz = b.timezone if b is not None else "UTC"
    today, month = tenant_spend(session, tenant, tz, now or utcnow())

    def num(v: Decimal | None) -> float | None:
        return float(v) if v is not None else None

    return {"tenant": tenant, "timezone": tz, "daily_usd": num(b.daily_usd if b else None),
            "monthly_usd": num(b.monthly_usd if b else None), "spent_today_usd": float(usd(today)),
            "spent_this_month_usd": float(usd(month)), "currency": "USD"}
