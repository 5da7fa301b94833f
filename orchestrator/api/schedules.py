"""/v1/schedules: create, list, read, update, delete, and run a schedule now."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, g, jsonify, request
from pydantic import ValidationError

from orchestrator import batches, queue, schedules
from orchestrator.api.auth import require_key
from orchestrator.api.context import db, services
from orchestrator.db import utcnow
from orchestrator.errors import BatchRejected, ItemProblem
from orchestrator.models import Schedule

bp = Blueprint("schedules", __name__, url_prefix="/v1/schedules")


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BatchRejected([ItemProblem(None, None, "body", "must be a JSON object")])
    return data


def _invalid(exc: ValidationError) -> BatchRejected:
    return BatchRejected([ItemProblem(None, None, ".".join(str(p) for p in e["loc"]) or "body",
                                      e["msg"].removeprefix("Value error, ")) for e in exc.errors()],
                         "the schedule is invalid; nothing was saved")


@bp.post("")
@require_key()
def create() -> tuple[Response, int]:
    """Create a schedule; its template is validated like a batch."""
    try:
        data = schedules.ScheduleIn.model_validate(_body())
    except ValidationError as exc:
        raise _invalid(exc) from None
    schedule = schedules.create(db(), g.tenant, data, services().settings.max_items_per_batch)
    db().commit()
    return jsonify(schedules.schedule_json(schedule)), 201


@bp.get("")
@require_key()
def list_all() -> Response:
    """This tenant's schedules by name."""
    rows = db().scalars(sa.select(Schedule).where(Schedule.tenant == g.tenant).order_by(Schedule.name)).all()
    return jsonify({"data": [schedules.schedule_json(s) for s in rows], "next_cursor": None})


@bp.get("/<schedule_id>")
@require_key()
def read(schedule_id: str) -> Response:
    """One schedule."""
    return jsonify(schedules.schedule_json(schedules.get(db(), g.tenant, schedule_id)))


@bp.patch("/<schedule_id>")
@require_key()
def patch(schedule_id: str) -> Response:
    """Change some fields."""
    schedule = schedules.get(db(), g.tenant, schedule_id)
    try:
        schedules.update(db(), schedule, _body(), services().settings.max_items_per_batch)
    except ValidationError as exc:
        raise _invalid(exc) from None
    db().commit()
    return jsonify(schedules.schedule_json(schedule))


@bp.delete("/<schedule_id>")
@require_key()
def delete(schedule_id: str) -> tuple[str, int]:
    """Delete a schedule; batches it created stay."""
    db().delete(schedules.get(db(), g.tenant, schedule_id))
    db().commit()
    return "", 204


@bp.post("/<schedule_id>/run")
@require_key()
def run_now(schedule_id: str) -> tuple[Response, int]:
    """Run the schedule's template now, outside its cron slots."""
    session = db()
    schedule = schedules.get(session, g.tenant, schedule_id)
    batch = schedules.run_slot(session, schedule, utcnow(), services().settings.max_items_per_batch)
    services().publisher.after_commit(session, queue.DISPATCH)
    session.commit()
    return jsonify(batches.batch_json(batch)), 201
