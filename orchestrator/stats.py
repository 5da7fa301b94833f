"""Operational figures for the dashboard, computed from the database so every process agrees.

Every query is bounded by time (the last hour or five minutes) or by one batch, and each has
an index (see the dashboard migration), so the pages stay fast at millions of jobs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.db import as_utc
from orchestrator.models import Job, JobEvent, JobState, ProviderAccount
from orchestrator.providers.registry import PROVIDERS
from orchestrator.settings import Settings

IN_FLIGHT = (JobState.submitting, JobState.submitted)
ERROR_KINDS = ("retry_scheduled", "failed")


@dataclass
class ProviderStats:
    """One provider account's figures."""

    provider: str
    in_flight: int
    limit: int
    rate_per_second: float
    claims_per_minute: float
    submitted_last_hour: int
    succeeded_last_hour: int
    failed_last_hour: int
    generation_p50: float | None
    generation_p95: float | None
    store_p50: float | None
    store_p95: float | None
    http_429_last_hour: int
    http_5xx_last_hour: int
    breaker_open_until: datetime | None
    blocked_until: datetime | None
    consecutive_failures: int
    last_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def success_rate(self) -> float | None:
        """Succeeded / finished over the last hour."""
        done = self.succeeded_last_hour + self.failed_last_hour
        return self.succeeded_last_hour / done if done else None

    @property
    def breaker_state(self) -> str:
        """open / closed, as the claimer sees it now."""
        return "open" if self.breaker_open_until else "closed"


def providers(session: Session, settings: Settings, now: datetime) -> list[ProviderStats]:
    """Figures for every provider account."""
    hour, five = now - timedelta(hours=1), now - timedelta(minutes=5)
    in_flight = dict(session.execute(sa.select(Job.provider, sa.func.count()).where(Job.state.in_(IN_FLIGHT))
                                     .group_by(Job.provider)).all())
    events = _event_counts(session, hour, five)
    finished = _finished(session, hour)
    errors = _errors(session, hour)
    accounts = {a.provider: a for a in session.scalars(sa.select(ProviderAccount))}
    out = []
    for provider in PROVIDERS:
        limit, rate = settings.provider_limits(provider)
        acct = accounts.get(provider)
        ev = events.get(provider, {})
        fin = finished.get(provider, {})
        out.append(ProviderStats(
            provider=provider, in_flight=in_flight.get(provider, 0), limit=limit, rate_per_second=rate,
            claims_per_minute=ev.get("claimed_5m", 0) / 5, submitted_last_hour=ev.get("submitted", 0),
            succeeded_last_hour=fin.get("succeeded", 0), failed_last_hour=fin.get("failed", 0),
            generation_p50=fin.get("gen_p50"), generation_p95=fin.get("gen_p95"),
            store_p50=fin.get("store_p50"), store_p95=fin.get("store_p95"),
            http_429_last_hour=ev.get("429", 0), http_5xx_last_hour=ev.get("5xx", 0),
            breaker_open_until=_future(acct.breaker_open_until if acct else None, now),
            blocked_until=_future(acct.blocked_until if acct else None, now),
            consecutive_failures=acct.consecutive_failures if acct else 0,
            last_errors=errors.get(provider, [])))
    return out


def _future(value: datetime | None, now: datetime) -> datetime | None:
    return as_utc(value) if value is not None and as_utc(value) > now else None


def _event_counts(session: Session, hour: datetime, five: datetime) -> dict[str, dict[str, int]]:
    # Claims and submissions carry their provider in the event detail: counted without a join.
    # (ix_job_events_recent_provider; claims over five minutes only, submissions over the hour.)
    provider = JobEvent.detail["provider"].as_string()
    rows: list[Any] = []
    for kind, since, key in (("claimed", five, "claimed_5m"), ("submitted", hour, "submitted")):
        rows += [(p, key, n) for p, n in session.execute(
            sa.select(provider, sa.func.count()).where(JobEvent.kind == kind, JobEvent.created_at >= since)
            .group_by(provider)).all()]
    # Errors are few: join them to their jobs for the provider.
    status = JobEvent.detail["status_code"].as_string()
    code = sa.case((status == "429", "429"), (status.like("5__"), "5xx"), else_=None).label("code")
    rows += session.execute(
        sa.select(Job.provider, code, sa.func.count()).join(Job, Job.id == JobEvent.job_id)
        .where(JobEvent.created_at >= hour, JobEvent.kind.in_(ERROR_KINDS)).group_by(Job.provider, code)).all()
    out: dict[str, dict[str, int]] = {}
    for name, key, n in rows:
        if name and key:
            out.setdefault(name, {})[key] = out.get(name, {}).get(key, 0) + n
    return out


def _finished(session: Session, hour: datetime) -> dict[str, dict[str, Any]]:
    if session.get_bind().dialect.name != "postgresql":
        return _finished_in_python(session, hour)  # the embedded SQLite default has no percentile_cont
    gen = sa.extract("epoch", Job.callback_at - Job.submitted_at)
    store = sa.extract("epoch", Job.completed_at - Job.callback_at)
    ok = Job.state == JobState.succeeded
    rows = session.execute(
        sa.select(Job.provider,
                  sa.func.count().filter(ok), sa.func.count().filter(Job.state == JobState.failed),
                  sa.func.percentile_cont(0.5).within_group(gen).filter(ok),
                  sa.func.percentile_cont(0.95).within_group(gen).filter(ok),
                  sa.func.percentile_cont(0.5).within_group(store).filter(ok),
                  sa.func.percentile_cont(0.95).within_group(store).filter(ok))
        .where(Job.provider.in_(PROVIDERS), Job.completed_at >= hour).group_by(Job.provider)).all()
    return {r[0]: {"succeeded": r[1], "failed": r[2], "gen_p50": _f(r[3]), "gen_p95": _f(r[4]),
                   "store_p50": _f(r[5]), "store_p95": _f(r[6])} for r in rows}


def _finished_in_python(session: Session, hour: datetime) -> dict[str, dict[str, Any]]:
    rows = session.execute(sa.select(Job.provider, Job.state, Job.submitted_at, Job.callback_at, Job.completed_at)
                           .where(Job.completed_at >= hour)).all()
    out: dict[str, dict[str, Any]] = {}
    for provider in PROVIDERS:
        mine = [r for r in rows if r.provider == provider]
        ok = [r for r in mine if r.state == JobState.succeeded and r.callback_at and r.submitted_at]
        gen = sorted((as_utc(r.callback_at) - as_utc(r.submitted_at)).total_seconds() for r in ok)
        store = sorted((as_utc(r.completed_at) - as_utc(r.callback_at)).total_seconds() for r in ok if r.completed_at)
        out[provider] = {"succeeded": sum(r.state == JobState.succeeded for r in mine),
                         "failed": sum(r.state == JobState.failed for r in mine),
                         "gen_p50": percentile(gen, 0.5), "gen_p95": percentile(gen, 0.95),
                         "store_p50": percentile(store, 0.5), "store_p95": percentile(store, 0.95)}
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile of sorted values (as Postgres percentile_cont)."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _f(value: Any) -> float | None:
    return float(value) if value is not None else None


def _errors(session: Session, hour: datetime, per_provider: int = 5) -> dict[str, list[dict[str, Any]]]:
    rows = session.execute(
        sa.select(Job.provider, Job.id, JobEvent.kind, JobEvent.detail, JobEvent.created_at)
        .join(Job, Job.id == JobEvent.job_id)
        .where(JobEvent.created_at >= hour, JobEvent.kind.in_(ERROR_KINDS))
        .order_by(JobEvent.created_at.desc()).limit(50)).all()
    out: dict[str, list[dict[str, Any]]] = {}
    for provider, job_id, kind, detail, at in rows:
        bucket = out.setdefault(provider, [])
        if len(bucket) < per_provider:
            bucket.append({"job_id": job_id, "kind": kind, "at": at,
                           "error": str((detail or {}).get("error") or (detail or {}).get("reason") or "")[:300],
                           "status_code": (detail or {}).get("status_code")})
    return out


def throughput(session: Session, batch_id: uuid.UUID, start: datetime, end: datetime,
               buckets: int = 30) -> list[tuple[datetime, int]]:
    """Jobs of a batch finished per time bucket between `start` and `end` (one indexed read of the batch)."""
    span = max((end - start).total_seconds(), 1.0)
    counts = [0] * buckets
    for (done,) in session.execute(sa.select(Job.completed_at).where(Job.batch_id == batch_id,
                                                                      Job.completed_at.is_not(None))):
        if done is None:
            continue
        i = int((as_utc(done) - start).total_seconds() / span * buckets)
        counts[min(max(i, 0), buckets - 1)] += 1
    return [(start + timedelta(seconds=i * span / buckets), n) for i, n in enumerate(counts)]
