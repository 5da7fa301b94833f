"""The tables behind recurring catalog runs: schedules, their runs, and the catalog index that
`only_changed` reads. Importing orchestrator.models first is not needed: foreign keys name tables."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.db import Base, JSONType, Timestamp, new_id, utcnow


class Schedule(Base):
    """A cron-driven batch template (nightly catalog generation)."""

    __tablename__ = "schedules"
    __table_args__ = (sa.UniqueConstraint("tenant", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(200))
    cron: Mapped[str] = mapped_column(sa.String(120))
    timezone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    template: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    overlap_policy: Mapped[str] = mapped_column(sa.String(8), default="skip")
    catchup_window_seconds: Mapped[int] = mapped_column(default=3600)
    next_run_at: Mapped[datetime | None] = mapped_column(Timestamp())
    last_run_at: Mapped[datetime | None] = mapped_column(Timestamp())
    last_batch_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class ScheduleRun(Base):
    """One firing of a schedule: the batch it created, or why it could not create one."""

    __tablename__ = "schedule_runs"
    __table_args__ = (sa.Index("ix_schedule_runs_schedule", "schedule_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    schedule_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("schedules.id", ondelete="CASCADE"))
    slot: Mapped[datetime] = mapped_column(Timestamp())
    batch_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("batches.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(sa.String(16))  # created | failed
    error: Mapped[str | None] = mapped_column(sa.Text)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class CatalogEntry(Base):
    """The small index behind only_changed: per catalog row, its content key and verified images.

    It is switched to a row's new images only after every one of them is stored and verified,
    so a failed night leaves the previous images in place.
    """

    __tablename__ = "catalog_entries"
    __table_args__ = (sa.Index("ix_catalog_entries_content", "tenant", "catalog", "content_key"),)

    tenant: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    catalog: Mapped[str] = mapped_column(sa.String(120), primary_key=True)
    row_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    content_key: Mapped[str] = mapped_column(sa.String(64))
    # [{index, storage_key, sha256, content_type, width, height, bytes, seed}]
    images: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("jobs.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(Timestamp())
