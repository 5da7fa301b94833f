"""Schedules: cron-driven batches (nightly catalog generation), fired exactly once per slot.

A slot's batch carries the idempotency key `schedule:<id>:<slot>`, unique per tenant, so two
schedulers racing (or a sweep run twice) still create one batch. Missed slots inside the
catch-up window fire once; older ones are skipped. The overlap policy decides what happens
while the previous run's batch is still going: `skip` the slot, `queue` it until the previous
batch ends, or `allow` both.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from orchestrator import batches, intake
from orchestrator.db import as_utc, iso, utcnow
from orchestrator.errors import BatchRejected, Conflict, ItemProblem, NotFound
from orchestrator.models import Batch, Schedule
from orchestrator.state import FINAL_BATCH


class ScheduleIn(BaseModel):
    """POST /v1/schedules (PATCH takes any subset)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(min_length=1, max_length=120, description="five-field cron expression")
    timezone: str = "UTC"
    template: dict[str, Any] = Field(description="a POST /v1/batches body run at every slot")
    enabled: bool = True
    overlap_policy: Literal["skip", "queue", "allow"] = "skip"
    catchup_window_seconds: int = Field(default=3600, ge=0, le=7 * 24 * 3600)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError("must be a valid five-field cron expression, e.g. '0 2 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like Europe/Berlin") from None
        return value


def _no_defaults(schema: dict[str, Any]) -> None:
    # An absent field means "unchanged", not null: the document must not claim a null default.
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class ScheduleUpdate(BaseModel):
    """PATCH /v1/schedules/<id>: any subset of the schedule's fields (the result is validated as a whole)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_defaults)
    name: str = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]
    cron: str = Field(default=None, min_length=1, max_length=120)  # type: ignore[assignment]
    timezone: str = Field(default=None, min_length=1, max_length=64)  # type: ignore[assignment]
    template: dict[str, Any] = Field(default=None)  # type: ignore[assignment]
    enabled: bool = Field(default=None)  # type: ignore[assignment]
    overlap_policy: Literal["skip", "queue", "allow"] = Field(default=None)  # type: ignore[assignment]
    catchup_window_seconds: int = Field(default=None, ge=0, le=7 * 24 * 3600)  # type: ignore[assignment]


class ScheduleOut(BaseModel):
    """A schedule as the API returns it."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    name: str
    cron: str
    timezone: str
    template: dict[str, Any]
    enabled: bool
    overlap_policy: str
    catchup_window_seconds: int
    next_run_at: str | None = Field(json_schema_extra={"format": "date-time"})
    last_run_at: str | None = Field(json_schema_extra={"format": "date-time"})
    last_batch_id: str | None = Field(json_schema_extra={"format": "uuid"})


class SchedulePage(BaseModel):
    """This tenant's schedules by name (one page: next_cursor is always null)."""

    data: list[ScheduleOut]
    next_cursor: str | None


def next_slot(cron: str, timezone: str, after: datetime) -> datetime:
    """The first slot strictly after `after`, computed in the schedule's zone (DST-aware), in UTC."""
    local = after.astimezone(ZoneInfo(timezone))
    return croniter(cron, local).get_next(datetime).astimezone(UTC)


def check_template(template: dict[str, Any], max_items: int) -> None:
    """Validate a template exactly as POST /v1/batches would, so a bad one fails now, not at 2 am."""
    try:
        intake.plan(intake.parse_json(json.dumps(template).encode(), max_items), max_items)
    except BatchRejected as exc:
        problems = [ItemProblem(p.position, p.custom_id, f"template.{p.field}", p.message) for p in exc.problems]
        raise BatchRejected(problems, "the template is not a valid batch; nothing was saved") from None


def create(session: Session, tenant: str, data: ScheduleIn, max_items: int) -> Schedule:
    """Save a new schedule with its first slot."""
    check_template(data.template, max_items)
    if session.scalar(sa.select(Schedule.id).where(Schedule.tenant == tenant, Schedule.name == data.name)):
        raise Conflict(f"a schedule named {data.name!r} already exists")
    schedule = Schedule(tenant=tenant, **data.model_dump(), next_run_at=next_slot(data.cron, data.timezone, utcnow()))
    session.add(schedule)
    session.flush()
    return schedule


def update(session: Session, schedule: Schedule, changes: dict[str, Any], max_items: int) -> Schedule:
    """Apply a validated partial update; a new cron or zone recomputes the next slot."""
    changes = ScheduleUpdate.model_validate(changes).model_dump(exclude_unset=True)
    merged = ScheduleIn.model_validate({**as_input(schedule), **changes})
    if "template" in changes:
        check_template(merged.template, max_items)
    for key, value in merged.model_dump().items():
        setattr(schedule, key, value)
    if {"cron", "timezone", "enabled"} & set(changes):
        schedule.next_run_at = next_slot(merged.cron, merged.timezone, utcnow())
    return schedule


def as_input(schedule: Schedule) -> dict[str, Any]:
    """The editable fields of a schedule."""
    return {k: getattr(schedule, k) for k in ScheduleIn.model_fields}


def get(session: Session, tenant: str, schedule_id: str | uuid.UUID) -> Schedule:
    """One schedule of this tenant, or NotFound."""
    try:
        sid = schedule_id if isinstance(schedule_id, uuid.UUID) else uuid.UUID(schedule_id)
    except ValueError:
        raise NotFound(f"no schedule {schedule_id}") from None
    schedule = session.scalar(sa.select(Schedule).where(Schedule.id == sid, Schedule.tenant == tenant))
    if schedule is None:
        raise NotFound(f"no schedule {schedule_id}")
    return schedule


def run_slot(session: Session, schedule: Schedule, slot: datetime, max_items: int) -> Batch:
    """Create the batch for one slot (idempotent per slot)."""
    plan = intake.plan(intake.parse_json(json.dumps(schedule.template).encode(), max_items), max_items)
    key = f"schedule:{schedule.id}:{slot.astimezone(UTC).isoformat()}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    batch, _ = batches.create_batch(session, schedule.tenant, plan, idempotency_key=key, request_hash=digest)
    batch.schedule_id = schedule.id
    batch.name = batch.name or f"{schedule.name} {slot.astimezone(ZoneInfo(schedule.timezone)):%Y-%m-%d %H:%M}"
    schedule.last_run_at, schedule.last_batch_id = utcnow(), batch.id
    return batch


def fire_due(session: Session, now: datetime, max_items: int) -> list[uuid.UUID]:
    """Fire every due slot of every enabled schedule; returns the ids of batches created."""
    due = session.scalars(sa.select(Schedule).where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
                          .order_by(Schedule.next_run_at).with_for_update(skip_locked=True)).all()
    created = []
    for schedule in due:
        batch_id = _fire_one(session, schedule, now, max_items)
        if batch_id is not None:
            created.append(batch_id)
    return created


def _fire_one(session: Session, schedule: Schedule, now: datetime, max_items: int) -> uuid.UUID | None:
    slot = as_utc(schedule.next_run_at or now)
    following = next_slot(schedule.cron, schedule.timezone, now)
    if now - slot > timedelta(seconds=schedule.catchup_window_seconds):
        schedule.next_run_at = following  # too late: skip the missed slots
        return None
    if _previous_running(session, schedule):
        if schedule.overlap_policy == "queue":
            return None  # try again on the next tick, once the previous batch has ended
        if schedule.overlap_policy == "skip":
            schedule.next_run_at = following
            return None
    try:
        batch = run_slot(session, schedule, slot, max_items)
    except BatchRejected:
        schedule.enabled = False  # the template no longer validates (e.g. a model was removed)
        return None
    schedule.next_run_at = following
    return batch.id


def _previous_running(session: Session, schedule: Schedule) -> bool:
    if schedule.last_batch_id is None:
        return False
    state = session.scalar(sa.select(Batch.state).where(Batch.id == schedule.last_batch_id))
    return state is not None and state not in FINAL_BATCH


def schedule_out(schedule: Schedule) -> ScheduleOut:
    """The public form of a schedule."""
    return ScheduleOut(id=str(schedule.id), **as_input(schedule),
                       next_run_at=iso(schedule.next_run_at), last_run_at=iso(schedule.last_run_at),
                       last_batch_id=str(schedule.last_batch_id) if schedule.last_batch_id else None)


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    """The public form of a schedule as JSON data."""
    return schedule_out(schedule).model_dump(mode="json")
