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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from string import Formatter
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import sqlalchemy as sa
from croniter import croniter
from pydantic import ValidationError
from sqlalchemy.orm import Session

from orchestrator import batches, catalog_keys, catalog_runs, catalog_source, intake, metrics, netpolicy
from orchestrator.catalog_source import SourcePolicy
from orchestrator.db import as_utc, iso, utcnow
from orchestrator.errors import BatchRejected, Conflict, ItemProblem, ScheduleRejected, TooLarge
from orchestrator.lookup import owned
from orchestrator.models import FINAL_BATCH, Batch
from orchestrator.pricing import Price
from orchestrator.responses import ScheduleOut, ScheduleRunOut
from orchestrator.schedule_models import Schedule, ScheduleRun
from orchestrator.schemas import ScheduleIn, ScheduleUpdate
from orchestrator.storage.base import Storage


def next_slot(cron: str, timezone: str, after: datetime) -> datetime:
    """The first slot strictly after `after`, computed in the schedule's zone (DST-aware), in UTC."""
    local = after.astimezone(ZoneInfo(timezone))
    return croniter(cron, local).get_next(datetime).astimezone(UTC)


def effective_template(template: dict[str, Any]) -> dict[str, Any]:
    """The batch body a slot runs: schedules default to the bulk lane and to only_changed."""
    body = {**template, "lane": template.get("lane") or "bulk"}
    if isinstance(body.get("catalog"), dict):
        body["catalog"] = {**body["catalog"]}
        if body["catalog"].get("only_changed") is None:
            body["catalog"]["only_changed"] = True
    return body


def _sample_rows(catalog: dict[str, Any]) -> list[dict[str, Any]]:
    """One stand-in row with every column the template, id field and key pattern name."""
    names = {n for _, n, _, _ in Formatter().parse(str(catalog.get("template") or "")) if n}
    if catalog.get("id_field"):
        names.add(str(catalog["id_field"]))
    try:
        if catalog.get("key_pattern"):
            names |= set(catalog_keys.pattern_fields(str(catalog["key_pattern"])))
    except catalog_keys.KeyPatternError:
        pass  # reported by the pattern check
    return [{n: "sample" for n in names - set(catalog_keys.BUILTINS)}]


def template_problems(template: dict[str, Any], max_items: int, policy: SourcePolicy | None = None,
                      callback_policy: netpolicy.AddressPolicy | None = None) -> list[ItemProblem]:
    """A template checked exactly as POST /v1/batches would, so a bad one fails now, not at 2 am.

    A template with a catalog source is checked with a stand-in row (its rows only exist at
    firing time), and its source's syntax and any literal address are checked here too.
    """
    body = effective_template(template)
    catalog = body.get("catalog")
    try:
        if isinstance(catalog, dict) and catalog.get("source") is not None:
            if catalog.get("rows") is not None:
                raise BatchRejected([ItemProblem(None, None, "catalog", "give exactly one of rows or source")])
            try:
                catalog_source.parse(str(catalog["source"]), catalog.get("source_format"),
                                     policy or SourcePolicy())
            except catalog_source.SourceError as exc:
                raise BatchRejected([ItemProblem(None, None, exc.field, str(exc))]) from None
            body["catalog"] = {k: v for k, v in catalog.items() if k not in ("source", "source_format")}
            body["catalog"]["rows"] = _sample_rows(catalog)
            plan = intake.plan(intake.parse_json(json.dumps(body).encode(), max_items), max_items)
            if catalog.get("key_pattern"):
                first = plan.jobs[0]
                try:
                    catalog_keys.check_pattern(str(catalog["key_pattern"]), None, first.num_images)
                except catalog_keys.KeyPatternError as exc:
                    raise BatchRejected([ItemProblem(None, None, "catalog.key_pattern", str(exc))]) from None
        else:
            plan = intake.plan(intake.parse_json(json.dumps(body).encode(), max_items), max_items)
            if plan.request.catalog is not None:
                catalog_runs.row_refs(plan, "tenant", "check")
        if callback_policy is not None:
            intake.check_callback(plan.request, callback_policy)
    except BatchRejected as exc:
        return [ItemProblem(p.position, p.custom_id, f"template.{p.field}", p.message) for p in exc.problems]
    except TooLarge as exc:
        return [ItemProblem(None, None, "template", exc.detail)]
    return []


def field_problems(exc: ValidationError) -> list[ItemProblem]:
    """Pydantic's errors on a schedule's own fields as problems."""
    return [ItemProblem(None, None, ".".join(str(p) for p in e["loc"]) or "body",
                        e["msg"].removeprefix("Value error, ")) for e in exc.errors()]


def validate(data: dict[str, Any], max_items: int, *, check_template: bool = True,
             policy: SourcePolicy | None = None, callback_policy: netpolicy.AddressPolicy | None = None) -> ScheduleIn:
    """The schedule's fields and its template checked together: one answer lists every problem."""
    problems: list[ItemProblem] = []
    parsed = None
    try:
        parsed = ScheduleIn.model_validate(data)
    except ValidationError as exc:
        problems += field_problems(exc)
    template = data.get("template")
    if check_template and isinstance(template, dict):
        problems += template_problems(template, max_items, policy, callback_policy)
    if problems or parsed is None:
        raise ScheduleRejected(problems)
    return parsed


def create(session: Session, tenant: str, body: dict[str, Any] | ScheduleIn, max_items: int,
           policy: SourcePolicy | None = None, callback_policy: netpolicy.AddressPolicy | None = None) -> Schedule:
    """Validate and save a new schedule with its first slot."""
    data = validate(body.model_dump() if isinstance(body, ScheduleIn) else body, max_items,
                    policy=policy, callback_policy=callback_policy)
    if session.scalar(sa.select(Schedule.id).where(Schedule.tenant == tenant, Schedule.name == data.name)):
        raise Conflict(f"a schedule named {data.name!r} already exists")
    schedule = Schedule(tenant=tenant, **data.model_dump(), next_run_at=next_slot(data.cron, data.timezone, utcnow()))
    session.add(schedule)
    session.flush()
    return schedule


def update(session: Session, schedule: Schedule, changes: dict[str, Any], max_items: int,
           policy: SourcePolicy | None = None, callback_policy: netpolicy.AddressPolicy | None = None) -> Schedule:
    """Apply a validated partial update; a new cron or zone recomputes the next slot."""
    try:
        changes = ScheduleUpdate.model_validate(changes).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise ScheduleRejected(field_problems(exc)) from None
    merged = validate({**as_input(schedule), **changes}, max_items, check_template="template" in changes,
                      policy=policy, callback_policy=callback_policy)
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
    return owned(session, Schedule, tenant, schedule_id, missing=f"no schedule {schedule_id}")


@dataclass(frozen=True)
class SlotEnv:
    """What a firing may touch besides the database: storage, an HTTP client, the source limits."""

    storage: Storage | None = None
    http: httpx.Client | None = None
    policy: SourcePolicy = field(default_factory=SourcePolicy)
    resolver: catalog_source.Resolver = catalog_source.system_resolver
    prices: Mapping[str, Price] | None = None  # the price table (ORCH_PRICES applied); None: the defaults


class SlotFailed(Exception):
    """A slot could not create its batch; the message says why (recorded on the run)."""


def run_slot(session: Session, schedule: Schedule, slot: datetime, max_items: int,
             env: SlotEnv | None = None) -> Batch:
    """Create the batch for one slot (idempotent per slot), reading the catalog source once.

    Object keys of removed rows to prune after commit are left in session.info["prune_keys"].
    Raises SlotFailed (source unreadable, rows invalid) with nothing written.
    """
    env = env or SlotEnv()
    key = f"schedule:{schedule.id}:{slot.astimezone(UTC).isoformat()}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    replay = batches.find_replay(session, schedule.tenant, key, digest)
    if replay is not None:
        return replay
    body = effective_template(schedule.template)
    source, read = _resolve_source(schedule.tenant, body, env)
    try:
        plan = intake.plan(intake.parse_json(json.dumps(body).encode(), max_items), max_items)
        if plan.request.catalog is not None and env.storage is not None:
            made = catalog_runs.create(
                session, schedule.tenant, plan, catalog_runs.storage_exists(env.storage),
                default_name=f"schedule-{schedule.id}", only_changed=bool(plan.request.catalog.only_changed),
                idempotency_key=key, request_hash=digest, read=read, source=source,
                prices=env.prices if env else None)
            batch = made.batch
            session.info.setdefault("prune_keys", []).extend(made.prune)
        else:
            batch, _ = batches.create_batch(session, schedule.tenant, plan, idempotency_key=key, request_hash=digest,
                                            prices=env.prices if env else None)
    except (BatchRejected, TooLarge) as exc:
        raise SlotFailed(_describe(exc)) from None
    batch.schedule_id = schedule.id
    batch.name = batch.name or f"{schedule.name} {slot.astimezone(ZoneInfo(schedule.timezone)):%Y-%m-%d %H:%M}"
    schedule.last_run_at, schedule.last_batch_id, schedule.last_error = utcnow(), batch.id, None
    session.add(ScheduleRun(schedule_id=schedule.id, slot=slot, batch_id=batch.id, status="created",
                            summary=batch.catalog_summary or ({"read": read} if read is not None else {})))
    metrics.incr(session, "orchestrator_schedule_runs_total", outcome="created")
    return batch


def _resolve_source(tenant: str, body: dict[str, Any], env: SlotEnv) -> tuple[str | None, int | None]:
    """Replace a catalog source by the rows it holds now; returns (source, rows read)."""
    catalog = body.get("catalog")
    if not isinstance(catalog, dict) or catalog.get("source") is None:
        return None, None
    value = str(catalog["source"])
    try:
        source = catalog_source.parse(value, catalog.get("source_format"), env.policy)
        if env.storage is None or (source.kind == "http" and env.http is None):
            raise catalog_source.SourceError("this process cannot read sources (no storage or HTTP client)")
        rows = catalog_source.read_rows(source, tenant, env.storage, env.http or httpx.Client(), env.policy,
                                        env.resolver)
    except catalog_source.SourceError as exc:
        raise SlotFailed(f"{exc.field}: {exc}") from None
    body["catalog"] = {k: v for k, v in catalog.items() if k not in ("source", "source_format")}
    body["catalog"]["rows"] = rows
    return value, len(rows)


def _describe(exc: BatchRejected | TooLarge) -> str:
    if isinstance(exc, TooLarge):
        return exc.detail
    shown = "; ".join(
        (f"row {p.position}" + (f" ({p.custom_id})" if p.custom_id else "") + ": " if p.position is not None else "")
        + f"{p.field}: {p.message}" for p in exc.problems[:10])
    more = f"; and {len(exc.problems) - 10} more" if len(exc.problems) > 10 else ""
    return f"{len(exc.problems)} invalid: {shown}{more}"


def record_failure(session: Session, schedule: Schedule, slot: datetime, error: str) -> None:
    """A slot that made no batch: a failed run record and the schedule's last_error, never silence."""
    schedule.last_run_at, schedule.last_error = utcnow(), error[:4000]
    session.add(ScheduleRun(schedule_id=schedule.id, slot=slot, status="failed", error=error[:4000], summary={}))
    metrics.incr(session, "orchestrator_schedule_runs_total", outcome="failed")


def fire_due(session: Session, now: datetime, max_items: int, env: SlotEnv | None = None) -> list[uuid.UUID]:
    """Fire every due slot of every enabled schedule; returns the ids of batches created."""
    due = session.scalars(sa.select(Schedule).where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
                          .order_by(Schedule.next_run_at).with_for_update(skip_locked=True)).all()
    created = []
    for schedule in due:
        batch_id = _fire_one(session, schedule, now, max_items, env)
        if batch_id is not None:
            created.append(batch_id)
    return created


def _fire_one(session: Session, schedule: Schedule, now: datetime, max_items: int,
              env: SlotEnv | None) -> uuid.UUID | None:
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
    schedule.next_run_at = following  # a failed slot is not retried; the next slot reads the source again
    savepoint = session.begin_nested()  # a failure must leave no partial write (e.g. rows marked removed)
    try:
        batch = run_slot(session, schedule, slot, max_items, env)
    except SlotFailed as exc:
        savepoint.rollback()
        record_failure(session, schedule, slot, str(exc))
        if not has_source(schedule):
            schedule.enabled = False  # an inline template no longer validates (e.g. a model was removed)
        return None
    savepoint.commit()
    return batch.id


def has_source(schedule: Schedule) -> bool:
    catalog = schedule.template.get("catalog") if isinstance(schedule.template, dict) else None
    return isinstance(catalog, dict) and catalog.get("source") is not None


def _previous_running(session: Session, schedule: Schedule) -> bool:
    if schedule.last_batch_id is None:
        return False
    state = session.scalar(sa.select(Batch.state).where(Batch.id == schedule.last_batch_id))
    return state is not None and state not in FINAL_BATCH


def recent_runs(session: Session, schedule: Schedule, limit: int = 10) -> list[ScheduleRunOut]:
    """The latest runs, newest first, each with its summary (failed counted live) and batch state."""
    rows = session.execute(
        sa.select(ScheduleRun, Batch.state, Batch.count_failed).outerjoin(Batch, Batch.id == ScheduleRun.batch_id)
        .where(ScheduleRun.schedule_id == schedule.id)
        .order_by(ScheduleRun.created_at.desc()).limit(limit)).all()
    return [ScheduleRunOut(slot=iso(run.slot) or "", status=run.status, error=run.error,
                           batch_id=str(run.batch_id) if run.batch_id else None,
                           batch_state=batch_state.value if batch_state is not None else None,
                           summary={**run.summary, "failed": failed or 0} if run.status == "created" else run.summary,
                           created_at=iso(run.created_at) or "")
            for run, batch_state, failed in rows]


def schedule_out(schedule: Schedule, runs: list[ScheduleRunOut] | None = None) -> ScheduleOut:
    """The public form of a schedule (with its last runs when given)."""
    return ScheduleOut(id=str(schedule.id), **as_input(schedule),
                       next_run_at=iso(schedule.next_run_at), last_run_at=iso(schedule.last_run_at),
                       last_batch_id=str(schedule.last_batch_id) if schedule.last_batch_id else None,
                       last_error=schedule.last_error, last_runs=runs)


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    """The public form of a schedule as JSON data."""
    return schedule_out(schedule).model_dump(mode="json")
