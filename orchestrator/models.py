"""The domain's tables: batches, jobs, assets, deliveries, job events, API keys, provider and budget state,
picks, audit. Schedules and the catalog index are in orchestrator.schedule_models."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.db import Base, JSONType, Timestamp, new_id, utcnow

Money = sa.Numeric(12, 6)


class JobState(enum.StrEnum):
    """A job's lifecycle; see orchestrator.state for the allowed moves."""

    queued = "queued"
    submitting = "submitting"
    submitted = "submitted"
    storing = "storing"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class BatchState(enum.StrEnum):
    """A batch's lifecycle: it takes one final state exactly once."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    partially_failed = "partially_failed"
    failed = "failed"
    cancelled = "cancelled"


# The states a batch ends in (the one list of them). StrEnum members compare and hash as their
# values, so `"failed" in FINAL_BATCH` holds for a state read from JSON too.
FINAL_BATCH = frozenset({BatchState.succeeded, BatchState.partially_failed, BatchState.failed,
                         BatchState.cancelled})


def _enum(cls: type[enum.Enum], name: str) -> sa.Enum:
    # Stored as plain strings with a CHECK constraint: portable to SQLite and
    # cheap to extend in a migration, unlike native Postgres enums.
    return sa.Enum(cls, name=name, native_enum=False, create_constraint=True, length=24,
                   values_callable=lambda e: [m.value for m in e])


class Batch(Base):
    """A set of jobs submitted together."""

    __tablename__ = "batches"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "idempotency_key"),
        sa.Index("ix_batches_tenant_created", "tenant", "created_at", "id"),
        # The dashboard lists every tenant's batches newest first.
        sa.Index("ix_batches_created", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    lane: Mapped[str] = mapped_column(sa.String(16), default="interactive")
    state: Mapped[BatchState] = mapped_column(_enum(BatchState, "batch_state"), default=BatchState.queued)
    callback_url: Mapped[str | None] = mapped_column(sa.String(2000))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("schedules.id", ondelete="SET NULL"))
    # A re-render of some of another batch's jobs (same prompts and seeds on another model, or new seeds).
    parent_batch_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("batches.id", ondelete="SET NULL"), index=True)
    total: Mapped[int] = mapped_column(default=0)
    count_queued: Mapped[int] = mapped_column(default=0)
    count_submitting: Mapped[int] = mapped_column(default=0)
    count_submitted: Mapped[int] = mapped_column(default=0)
    count_storing: Mapped[int] = mapped_column(default=0)
    count_succeeded: Mapped[int] = mapped_column(default=0)
    count_failed: Mapped[int] = mapped_column(default=0)
    count_cancelled: Mapped[int] = mapped_column(default=0)
    cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    # The table estimate at submit, and the batch's own cap (dispatch never crosses it).
    estimated_cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    max_cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp())
    completed_at: Mapped[datetime | None] = mapped_column(Timestamp())
    cancel_requested_at: Mapped[datetime | None] = mapped_column(Timestamp())
    completion_round: Mapped[int] = mapped_column(default=0)
    notified_round: Mapped[int] = mapped_column(default=0)
    # A catalog batch's diff: rows read / new / changed / unchanged / removed (failed is live).
    catalog_summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # "wait" | "resubmit" for fal submits whose outcome is unknown; None = ORCH_UNKNOWN_OUTCOME_POLICY.
    unknown_outcome: Mapped[str | None] = mapped_column(sa.String(16))

    def counts(self) -> dict[str, int]:
        """Job counts by state."""
        return {s.value: getattr(self, f"count_{s.value}") for s in JobState}


class Job(Base):
    """One provider request: one prompt and its parameters, possibly several images."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("batch_id", "custom_id"),
        sa.UniqueConstraint("batch_id", "position"),
        sa.Index("ix_jobs_due", "state", "provider", "lane", "next_attempt_at"),
        # Queued jobs only, in claim order ("interactive" sorts after "bulk", hence DESC): a claim
        # reads exactly the rows it takes, however deep the queue (workers/admission.due_jobs).
        sa.Index("ix_jobs_claim", "provider", sa.desc(sa.column("lane")), "next_attempt_at", "position",
                 postgresql_where=sa.text("state = 'queued'"), sqlite_where=sa.text("state = 'queued'")),
        # Budget-held queued jobs per batch (a batch's status counts them on every poll).
        sa.Index("ix_jobs_held", "batch_id", postgresql_where=sa.text("state = 'queued' AND hold_reason IS NOT NULL"),
                 sqlite_where=sa.text("state = 'queued' AND hold_reason IS NOT NULL")),
        sa.Index("ix_jobs_provider_request_id", "provider", "provider_request_id"),
        sa.Index("ix_jobs_state_updated", "state", "updated_at"),
        # Provider mix per batch and "batches using provider/model X" filters, without reading jobs.
        sa.Index("ix_jobs_batch_provider_model", "batch_id", "provider", "model"),
        # The providers page: what finished in the last hour, per provider.
        # Covering (INCLUDE), so the latency percentiles are an index-only scan.
        sa.Index("ix_jobs_provider_completed", "provider", "completed_at",
                 postgresql_include=["state", "submitted_at", "callback_at"]),
        # The dashboard's prompt search (ILIKE '%...%') at a million jobs; needs pg_trgm (the migration adds it).
        sa.Index("ix_jobs_prompt_trgm", sa.literal_column("(params ->> 'prompt')").label("prompt"),
                 postgresql_using="gin", postgresql_ops={"prompt": "gin_trgm_ops"}),
        sa.Index("ix_jobs_tenant_charged", "tenant", "charged_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    batch_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("batches.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(sa.String(64))
    position: Mapped[int] = mapped_column()
    custom_id: Mapped[str] = mapped_column(sa.String(200))
    lane: Mapped[str] = mapped_column(sa.String(16), default="interactive")
    requested_model: Mapped[str] = mapped_column(sa.String(120))
    provider: Mapped[str] = mapped_column(sa.String(16))
    model: Mapped[str] = mapped_column(sa.String(120))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    num_images: Mapped[int] = mapped_column(default=1)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.queued)
    # `attempt` only grows (callback URLs name it); `retries` counts transient
    # failures in the current round and is reset when a user retries the job.
    attempt: Mapped[int] = mapped_column(default=0)
    retries: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp())
    provider_request_id: Mapped[str | None] = mapped_column(sa.String(120))
    # Provider extras from the submit answer (fal's status/response/cancel URLs).
    provider_meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Runware taskUUID of the current attempt, chosen before the call so we can ask about it.
    task_id: Mapped[str | None] = mapped_column(sa.String(64))
    # Set (and committed) just before the provider call: the "about to submit" intent. A job in
    # `submitting` with this set may have reached the provider, so it is never resent blindly.
    submit_started_at: Mapped[datetime | None] = mapped_column(Timestamp())
    last_polled_at: Mapped[datetime | None] = mapped_column(Timestamp())
    # Unused: callback tokens are now derived per attempt (orchestrator.webhook_urls). Kept, and no
    # longer written, so the previous release still runs against this schema; a later contract
    # migration drops it.
    callback_token: Mapped[str | None] = mapped_column(sa.String(64))
    error_code: Mapped[str | None] = mapped_column(sa.String(80))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    cost: Mapped[Decimal | None] = mapped_column(Money)
    # `reported` by the provider or `priced` from the price table.
    cost_source: Mapped[str | None] = mapped_column(sa.String(16))
    # The table price of the current model and size: what a budget counts while the job is in flight.
    estimated_cost: Mapped[Decimal | None] = mapped_column(Money)
    # When dispatch admitted the job against the budgets: the day and month its spend counts in.
    charged_at: Mapped[datetime | None] = mapped_column(Timestamp())
    # Why a queued job is waiting (`budget`), shown as the batch's held_by_budget count.
    hold_reason: Mapped[str | None] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(Timestamp())
    callback_at: Mapped[datetime | None] = mapped_column(Timestamp())
    completed_at: Mapped[datetime | None] = mapped_column(Timestamp())
    # A catalog row's identity: {"catalog", "row", "content_key", "keys": [stable key per image]}.
    catalog_ref: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class Asset(Base):
    """One image of a job: where the provider had it and where we stored it."""

    __tablename__ = "assets"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "index"),
        sa.UniqueConstraint("job_id", "provider_image_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column()
    provider_image_id: Mapped[str | None] = mapped_column(sa.String(120))
    source_url: Mapped[str | None] = mapped_column(sa.Text)
    storage_key: Mapped[str | None] = mapped_column(sa.String(1000))
    content_type: Mapped[str | None] = mapped_column(sa.String(40))
    width: Mapped[int | None] = mapped_column()
    height: Mapped[int | None] = mapped_column()
    bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    # Seeds can exceed 2**63 (fal); a decimal string keeps them exact everywhere.
    seed: Mapped[str | None] = mapped_column(sa.String(40))
    nsfw: Mapped[bool | None] = mapped_column()
    cost: Mapped[Decimal | None] = mapped_column(Money)
    cost_source: Mapped[str | None] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    stored_at: Mapped[datetime | None] = mapped_column(Timestamp())


class Delivery(Base):
    """The webhook inbox: every callback received, verified or not."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # NULL event keys (unverified deliveries) never collide, so forgeries are all kept.
        sa.UniqueConstraint("provider", "event_key"),
        sa.Index("ix_deliveries_unprocessed", "processed_at"),
        sa.Index("ix_deliveries_job", "job_id", "received_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    provider: Mapped[str] = mapped_column(sa.String(16))
    event_key: Mapped[str | None] = mapped_column(sa.String(300))
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("jobs.id", ondelete="SET NULL"))
    attempt: Mapped[int | None] = mapped_column()
    verified: Mapped[bool] = mapped_column(default=False)
    rejection: Mapped[str | None] = mapped_column(sa.String(200))
    headers: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    duplicates: Mapped[int] = mapped_column(default=0)
    received_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(Timestamp())
    outcome: Mapped[str | None] = mapped_column(sa.String(200))


class JobEvent(Base):
    """Append-only timeline of a job, for the dashboard and audits."""

    __tablename__ = "job_events"
    __table_args__ = (
        sa.Index("ix_job_events_job", "job_id", "id"),
        # Append-only, so time follows physical order: a BRIN index answers "events of the last
        # hour" (claim rate, 429s) for a few pages of index instead of a B-tree over every event.
        sa.Index("ix_job_events_created_brin", "created_at", postgresql_using="brin"),
        # The providers page counts the last hour's claims and submissions per provider from this
        # index alone (the provider is in the event detail), without decoding each event's JSON.
        sa.Index("ix_job_events_recent_provider", "created_at", "kind",
                 sa.literal_column("(detail ->> 'provider')").label("provider"),
                 postgresql_where=sa.text("kind IN ('claimed', 'submitted')")),
        # Errors are rare: a small partial index finds the last hour's 429s, 5xx and failures.
        sa.Index("ix_job_events_errors", "created_at", sqlite_where=sa.text("kind IN ('retry_scheduled', 'failed')"),
                 postgresql_where=sa.text("kind IN ('retry_scheduled', 'failed')")),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(sa.String(40))
    attempt: Mapped[int] = mapped_column(default=0)
    from_state: Mapped[str | None] = mapped_column(sa.String(24))
    to_state: Mapped[str | None] = mapped_column(sa.String(24))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class ApiKey(Base):
    """A client or admin credential; only a hash of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    role: Mapped[str] = mapped_column(sa.String(16), default="client")
    prefix: Mapped[str] = mapped_column(sa.String(16), index=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    revoked: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp())


class ProviderAccount(Base):
    """Shared admission state per provider account: token bucket and breaker.

    Workers lock this row to admit a submission, so the limits hold across any number
    of processes and machines without a second coordination service.
    """

    __tablename__ = "provider_accounts"

    provider: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    tokens: Mapped[float] = mapped_column(sa.Float, default=0.0)
    refilled_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    blocked_until: Mapped[datetime | None] = mapped_column(Timestamp())
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    breaker_open_until: Mapped[datetime | None] = mapped_column(Timestamp())


class TenantBudget(Base):
    """A tenant's spending caps per calendar day and month, in its timezone.

    Dispatch locks this row while it admits the tenant's jobs, so the caps hold across any
    number of workers claiming for any provider (the same mechanism as provider_accounts).
    """

    __tablename__ = "tenant_budgets"

    tenant: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    daily_usd: Mapped[Decimal | None] = mapped_column(Money)
    monthly_usd: Mapped[Decimal | None] = mapped_column(Money)
    timezone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    updated_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class Heartbeat(Base):
    """Proof that a worker consumed a message recently (for /readyz), one row per queue."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class Counter(Base):
    """A monotonic counter for /metrics, shared by every worker process."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(sa.String(80), primary_key=True)
    labels: Mapped[str] = mapped_column(sa.String(300), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class Pick(Base):
    """An image a tenant chose (a star on the mood board)."""

    __tablename__ = "picks"
    __table_args__ = (sa.UniqueConstraint("tenant", "asset_id"), sa.Index("ix_picks_batch", "batch_id", "asset_id"))

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    asset_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("assets.id", ondelete="CASCADE"))
    # Denormalised from the asset's job, so "picks of this batch" needs no join through jobs.
    batch_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("batches.id", ondelete="CASCADE"))
    created_by: Mapped[str] = mapped_column(sa.String(80), default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class AuditEntry(Base):
    """One operator action: who (the admin key), what, on what, how many, when."""

    __tablename__ = "audit_entries"
    __table_args__ = (sa.Index("ix_audit_entries_created", "created_at", "id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    actor: Mapped[str] = mapped_column(sa.String(120), default="")
    action: Mapped[str] = mapped_column(sa.String(40))
    target: Mapped[str] = mapped_column(sa.String(300), default="")
    count: Mapped[int] = mapped_column(default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class CallbackAttempt(Base):
    """One try at delivering a batch's completion callback to the client (for the dashboard)."""

    __tablename__ = "callback_attempts"
    __table_args__ = (sa.Index("ix_callback_attempts_batch", "batch_id", "id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("batches.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(default=0)
    status_code: Mapped[int | None] = mapped_column()
    outcome: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
