"""Providers, schedules and the audit log."""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Response, redirect, render_template, request, url_for

from orchestrator import audit, queue, schedules, stats
from orchestrator.api.context import db, services
from orchestrator.dashboard.blueprint import bp
from orchestrator.dashboard.security import actor, require_admin
from orchestrator.db import as_utc, utcnow
from orchestrator.models import Batch
from orchestrator.picks import InvalidSelection
from orchestrator.schedule_models import Schedule

OVERLAP = ("skip", "queue", "allow")


@bp.get("/providers")
@require_admin
def providers_page() -> str:
    """Per provider account: load, rates, latencies, errors, breaker."""
    return render_template("providers.html", rows=stats.providers(db(), services().settings, utcnow()))


@bp.get("/fragments/providers")
@require_admin
def providers_fragment() -> str:
    """The providers table alone, for polling."""
    return render_template("_providers.html", rows=stats.providers(db(), services().settings, utcnow()))


def _schedule_rows() -> list[dict[str, Any]]:
    session = db()
    rows = list(session.scalars(sa.select(Schedule).order_by(Schedule.tenant, Schedule.name).limit(500)))
    last = {b.id: b for b in session.scalars(sa.select(Batch).where(
        Batch.id.in_([s.last_batch_id for s in rows if s.last_batch_id])))}
    out = []
    for s in rows:
        nxt = as_utc(s.next_run_at) if s.next_run_at else None
        out.append({"s": s, "next_local": nxt.astimezone(ZoneInfo(s.timezone)) if nxt else None,
                    "next_utc": nxt.astimezone(UTC) if nxt else None,
                    "last_batch": last.get(s.last_batch_id) if s.last_batch_id else None})
    return out


@bp.get("/schedules")
@require_admin
def schedules_page() -> str:
    """Every schedule with its next fire times and last batch."""
    return render_template("schedules.html", rows=_schedule_rows(), overlap=OVERLAP)


def _schedule(schedule_id: str) -> Schedule:
    session = db()
    found = session.scalar(sa.select(Schedule.tenant).where(Schedule.id == _sid(schedule_id)))
    if found is None:
        raise InvalidSelection(f"no schedule {schedule_id}")
    return schedules.get(session, found, schedule_id)


def _sid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidSelection(f"no schedule {value[:60]!r}") from None


@bp.post("/schedules/<schedule_id>")
@require_admin
def schedule_change(schedule_id: str) -> Response:
    """Pause, resume or change the overlap policy (through the schedules module, as PATCH does)."""
    session = db()
    schedule = _schedule(schedule_id)
    op = request.form.get("op", "")
    if op in ("pause", "resume"):
        changes: dict[str, Any] = {"enabled": op == "resume"}
    elif op == "overlap" and request.form.get("overlap_policy") in OVERLAP:
        changes = {"overlap_policy": request.form["overlap_policy"]}
    else:
        raise InvalidSelection("choose pause, resume, or an overlap policy of skip, queue or allow")
    schedules.update(session, schedule, changes, services().settings.max_items_per_batch)
    audit.record(session, actor(), f"schedule_{op}", f"schedule {schedule.name}", 1, schedule_id=str(schedule.id),
                 **changes)
    session.commit()
    return redirect(url_for("dashboard.schedules_page"))  # type: ignore[return-value]


@bp.post("/schedules/<schedule_id>/run")
@require_admin
def schedule_run(schedule_id: str) -> Response:
    """Run the schedule's template now."""
    session = db()
    schedule = _schedule(schedule_id)
    batch = schedules.run_slot(session, schedule, utcnow(), services().settings.max_items_per_batch)
    audit.record(session, actor(), "schedule_run", f"schedule {schedule.name}", batch.total, batch_id=str(batch.id))
    services().publisher.after_commit(session, queue.DISPATCH)
    session.commit()
    return redirect(url_for("dashboard.batch_page", batch_id=batch.id))  # type: ignore[return-value]


@bp.get("/audit")
@require_admin
def audit_page() -> str:
    """Who did what, newest first."""
    before = request.args.get("before", "")
    rows = audit.recent(db(), before=int(before) if before.isdigit() else None,
                        action=request.args.get("action") or None, limit=100)
    return render_template("audit.html", rows=rows, done=request.args.get("done"),
                           next_before=rows[-1].id if len(rows) == 100 else None)
