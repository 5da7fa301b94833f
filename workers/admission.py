"""Admission control: claim due jobs within each provider account's limits.

The limits live in Postgres, not in a worker: a claimer locks the account's row, counts the
account's requests in flight, refills its token bucket, and claims at most what both allow.
Any number of worker processes on any number of machines therefore share one in-flight cap
and one request rate per account.

The account row is locked before anything is written (rows are created once, not upserted on
every round, so a claimer that skips a busy row never waits behind the holder's update). Due
jobs are read through the partial index `ix_jobs_claim` (queued jobs only, in claim order:
interactive lane first, then due time, then position), so a claim reads only the rows it takes
however deep the queue is. Every free slot is taken under one lock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import budget, state
from orchestrator.db import as_utc, upsert_insert, utcnow
from orchestrator.models import Batch, Job, JobState, ProviderAccount
from orchestrator.settings import Settings

IN_FLIGHT = (JobState.submitting, JobState.submitted)
BUSY_RETRY = 0.2


@dataclass(frozen=True)
class Claim:
    """Jobs claimed for submission, and how long to wait before claiming again (if limited)."""

    # The claimed rows with what their submit needs (state.claim's RETURNING), in claim order.
    rows: list[Any]
    retry_in: float | None = None

    @property
    def jobs(self) -> list[tuple[uuid.UUID, int]]:
        """(job id, attempt) of each claimed job."""
        return [(r.id, r.attempt) for r in self.rows]


def account(session: Session, provider: str, *, skip_locked: bool = False) -> ProviderAccount | None:
    """Lock the provider account row (created on first use only); None if skip_locked and it is busy."""
    for _ in range(2):
        acct = session.execute(
            sa.select(ProviderAccount).where(ProviderAccount.provider == provider)
            .with_for_update(skip_locked=skip_locked).execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if acct is not None:
            return acct
        exists = session.scalar(sa.select(sa.func.count()).select_from(ProviderAccount)
                                .where(ProviderAccount.provider == provider))
        if exists:
            return None  # it exists and another claimer holds it
        create_account(session, provider)
    return None


def create_account(session: Session, provider: str) -> None:
    """Create the account row if it is missing (once per database, not per claim)."""
    table = cast(sa.Table, ProviderAccount.__table__)
    # A new account starts with a full bucket (the claim clamps it to the burst size).
    session.execute(upsert_insert(session, table).values(provider=provider, tokens=1e9, consecutive_failures=0,
                                                          refilled_at=utcnow()).on_conflict_do_nothing())


def locked_account(session: Session, provider: str) -> ProviderAccount:
    """The provider account row, waiting for its lock."""
    acct = account(session, provider)
    assert acct is not None
    return acct


def in_flight(session: Session, provider: str) -> int:
    """Requests of this account at the provider (or about to be)."""
    return session.scalar(sa.select(sa.func.count()).select_from(Job)
                          .where(Job.provider == provider, Job.state.in_(IN_FLIGHT))) or 0


def due_jobs(provider: str, now: datetime, n: int) -> sa.Select[Any]:
    """The next `n` due jobs of a provider in claim order (an index range scan of ix_jobs_claim),
    row-locked, with what the budget caps need to know of each (orchestrator.budget.admit)."""
    return (sa.select(*budget.admit_columns()).join(Batch, Batch.id == Job.batch_id)
            .where(Job.provider == provider, Job.state == JobState.queued, Job.next_attempt_at <= now)
            .order_by(Job.lane.desc(), Job.next_attempt_at, Job.position)  # "interactive" > "bulk"
            .limit(n).with_for_update(of=Job, skip_locked=True))


def claim(session: Session, settings: Settings, provider: str, now: datetime, max_claim: int = 32,
          *, wait: bool = False) -> Claim:
    """Claim up to the free slots and available tokens of due jobs, interactive lane first.

    With `wait`, queue behind another claimer's lock instead of skipping (used by a worker that
    has just freed a slot: the holder may have counted before that slot was free).
    """
    acct = account(session, provider, skip_locked=not wait)
    if acct is None:
        # Another worker is claiming for this account right now. Waiting behind its lock would
        # only pile up nudges (each holding a thread and a connection); come back shortly in
        # case it counted its slots before ours was freed.
        return Claim([], BUSY_RETRY)
    if acct.consecutive_failures:
        _failures_seen[provider] = True  # counted elsewhere: our next success must reset it
    for until in (acct.blocked_until, acct.breaker_open_until):
        if until is not None and as_utc(until) > now:
            return Claim([], (as_utc(until) - now).total_seconds())
    limit, rate = settings.provider_limits(provider)
    burst = max(1.0, rate)
    elapsed = max(0.0, (now - as_utc(acct.refilled_at)).total_seconds())
    # The bucket is written only when tokens are taken: untouched, (tokens, refilled_at) describe
    # the same bucket at any later time, so a round that claims nothing writes nothing.
    tokens = min(burst, acct.tokens + elapsed * rate)
    slots = limit - in_flight(session, provider)
    n = min(slots, int(tokens), max_claim)
    if n <= 0:
        # Slot-limited: a finishing job kicks dispatch. Token-limited: come back when one accrues.
        return Claim([], None if slots <= 0 else (1.0 - tokens) / rate)
    due = session.execute(due_jobs(provider, now, n)).all()
    # Budget caps (batch max_cost_usd, tenant day/month): jobs that do not fit stay queued, held.
    rows = state.claim(session, budget.admit(session, due, now, settings.budget_recheck_seconds), now, provider)
    if rows:
        acct.tokens, acct.refilled_at = tokens - len(rows), now
    if len(due) < n:
        return Claim(rows)  # nothing more is due right now
    if n == max_claim and slots > n and tokens - n >= 1:
        return Claim(rows, 0.0)  # more fits at once: claim the next page
    if int(tokens) < slots:
        return Claim(rows, 1.0 / rate)  # token-limited: come back when a token accrues
    return Claim(rows)  # slot-limited: a finishing job kicks dispatch


def block(session: Session, provider: str, seconds: float, now: datetime) -> None:
    """Stop every worker from sending to this account for `seconds` (429 Retry-After)."""
    acct = locked_account(session, provider)
    until = now + timedelta(seconds=seconds)
    if acct.blocked_until is None or as_utc(acct.blocked_until) < until:
        acct.blocked_until = until


def record_failure(session: Session, settings: Settings, provider: str, now: datetime) -> bool:
    """Count a provider-side failure; returns True when this opens (or keeps open) the breaker."""
    acct = locked_account(session, provider)
    _failures_seen[provider] = True
    acct.consecutive_failures += 1
    if acct.consecutive_failures >= settings.breaker_threshold:
        acct.breaker_open_until = now + timedelta(seconds=settings.breaker_cooldown_seconds)
        return True
    return False


def record_success(session: Session, provider: str) -> None:
    """A provider answered: close the breaker (no statement at all while it is closed)."""
    if _failures_seen.get(provider, True):
        done = session.execute(sa.update(ProviderAccount)
                               .where(ProviderAccount.provider == provider, ProviderAccount.consecutive_failures > 0)
                               .values(consecutive_failures=0, breaker_open_until=None))
        # Zero rows: it was closed. Remember that until this process sees a failure again; a
        # failure counted by another process is reset by the next claim round that sees it.
        _failures_seen[provider] = bool(done.rowcount)  # type: ignore[attr-defined]


# provider -> whether this process may have left consecutive_failures above zero.
_failures_seen: dict[str, bool] = {}


def breaker_open(session: Session, provider: str, now: datetime) -> bool:
    """Whether the provider's breaker is open right now."""
    until = session.scalar(sa.select(ProviderAccount.breaker_open_until)
                           .where(ProviderAccount.provider == provider))
    return until is not None and as_utc(until) > now
