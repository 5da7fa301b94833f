"""/v1/schedules: create, list, read, update, delete, and run a schedule now."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, g, request

from orchestrator import batches, catalog_runs, jsonbody, queue, schedules
from orchestrator.api.context import db, services
from orchestrator.api.operations import Body, operation
from orchestrator.db import utcnow
from orchestrator.errors import BatchRejected, ItemProblem, ScheduleRejected
from orchestrator.netpolicy import AddressPolicy
from orchestrator.responses import BatchOut, ScheduleOut, SchedulePage
from orchestrator.schedule_models import Schedule
from orchestrator.schemas import ScheduleIn, ScheduleUpdate

bp = Blueprint("schedules", __name__, url_prefix="/v1/schedules")


def _body() -> dict[str, Any]:
    try:
        data = jsonbody.loads_batch_body(request.get_data(cache=False))
    except BatchRejected as exc:  # unreadable JSON: the same problems, titled for a schedule
        raise ScheduleRejected(exc.problems) from None
    if not isinstance(data, dict):
        raise ScheduleRejected([ItemProblem(None, None, "body", "must be a JSON object")])
    return data


@operation(bp, "POST", "", "Create a schedule", body=Body(ScheduleIn), responses={201: ScheduleOut},
           problems=(409,))
def create() -> tuple[ScheduleOut, int]:
    """Create a schedule; its fields and its template (validated like a batch) are checked together."""
    settings = services().settings
    schedule = schedules.create(db(), g.tenant, _body(), settings.max_items_per_batch, settings.source_policy(),
                                AddressPolicy(settings.callback_allow_private))
    db().commit()
    return schedules.schedule_out(schedule), 201


@operation(bp, "GET", "", "List schedules", responses={200: SchedulePage})
def list_all() -> SchedulePage:
    """This tenant's schedules by name."""
    rows = db().scalars(sa.select(Schedule).where(Schedule.tenant == g.tenant).order_by(Schedule.name)).all()
    return SchedulePage(data=[schedules.schedule_out(s) for s in rows], next_cursor=None)


@operation(bp, "GET", "/<uuid:schedule_id>", "Get a schedule", responses={200: ScheduleOut})
def read(schedule_id: uuid.UUID) -> ScheduleOut:
    """One schedule, with its last runs (what each read, generated, reused, removed, failed)."""
    schedule = schedules.get(db(), g.tenant, schedule_id)
    return schedules.schedule_out(schedule, schedules.recent_runs(db(), schedule))


@operation(bp, "PATCH", "/<uuid:schedule_id>", "Change a schedule", body=Body(ScheduleUpdate),
           responses={200: ScheduleOut})
def patch(schedule_id: uuid.UUID) -> ScheduleOut:
    """Change some fields; the result is validated as a whole."""
    schedule = schedules.get(db(), g.tenant, schedule_id)
    settings = services().settings
    schedules.update(db(), schedule, _body(), settings.max_items_per_batch, settings.source_policy(),
                     AddressPolicy(settings.callback_allow_private))
    db().commit()
    return schedules.schedule_out(schedule)


@operation(bp, "DELETE", "/<uuid:schedule_id>", "Delete a schedule", responses={204: None})
def delete(schedule_id: uuid.UUID) -> tuple[str, int]:
    """Delete a schedule; batches it created stay."""
    db().delete(schedules.get(db(), g.tenant, schedule_id))
    db().commit()
    return "", 204


@operation(bp, "POST", "/<uuid:schedule_id>/run", "Run a schedule now",
           responses={201: BatchOut, 202: ScheduleOut}, problems=(422,))
def run_now(schedule_id: uuid.UUID) -> tuple[BatchOut | ScheduleOut, int]:
    """Run the schedule's template now, outside its cron slots.

    A template with a catalog source is read by a worker, not in this request: the schedule
    is made due now and the answer is 202 with the schedule; the run then shows in its last_runs.
    """
    session = db()
    schedule = schedules.get(session, g.tenant, schedule_id)
    if schedules.has_source(schedule):
        schedule.next_run_at = utcnow()
        session.commit()
        return schedules.schedule_out(schedule), 202
    env = schedules.SlotEnv(storage=services().storage, prices=services().settings.price_table())
    slot = utcnow()
    try:
        batch = schedules.run_slot(session, schedule, slot, services().settings.max_items_per_batch, env)
    except schedules.SlotFailed as exc:
        session.rollback()
        raise BatchRejected([ItemProblem(None, None, "template", str(exc))],
                            "the schedule's template is not a valid batch now") from None
    services().publisher.after_commit(session, queue.DISPATCH)
    prune = session.info.pop("prune_keys", [])
    session.commit()
    catalog_runs.prune(services().storage, prune)
    return batches.batch_out(batch), 201
