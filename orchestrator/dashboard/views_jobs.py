"""The job page: parameters, native request, attempts, timeline, deliveries (with replay), images."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from flask import Response, redirect, render_template, url_for

from orchestrator import audit, batches, catalog, deliveries, queue
from orchestrator.api.context import db, services
from orchestrator.dashboard.blueprint import bp
from orchestrator.dashboard.security import actor, require_admin
from orchestrator.models import Asset, Job, JobEvent
from orchestrator.providers.registry import build_payload


def native_request(job: Job) -> str:
    """What the adapter sends the provider for this job's params (the webhook URL is added at submit)."""
    spec = catalog.MODELS.get(job.model)
    if spec is None:
        return "(model no longer in the catalog)"
    try:
        return json.dumps(build_payload(spec, job.params), indent=2, ensure_ascii=False)
    except Exception as exc:  # a stored job from an older catalog: show why instead of failing the page
        return f"(cannot rebuild: {type(exc).__name__})"


def attempts(job: Job, events: list[JobEvent]) -> list[dict[str, Any]]:
    """One row per attempt, assembled from the timeline (request ids come from 'submitted' events)."""
    rows: dict[int, dict[str, Any]] = {}
    for e in events:
        if e.attempt <= 0:
            continue
        row = rows.setdefault(e.attempt, {"attempt": e.attempt, "started": e.created_at, "request_id": None,
                                          "provider": None, "outcome": None, "ended": None})
        detail = e.detail or {}
        row["request_id"] = detail.get("request_id") or row["request_id"]
        row["provider"] = detail.get("provider") or row["provider"]
        # The first outcome of an attempt is what happened to it; a later user retry does not replace it.
        if row["outcome"] is None and (e.to_state in ("queued", "failed", "cancelled", "succeeded")
                                       or e.kind in ("failed", "retry_scheduled")):
            row["outcome"] = e.kind + (f": {detail.get('error') or detail.get('reason')}"
                                       if detail.get("error") or detail.get("reason") else "")
            row["ended"] = e.created_at
    if job.attempt in rows and job.provider_request_id:
        rows[job.attempt]["request_id"] = rows[job.attempt]["request_id"] or job.provider_request_id
    return [rows[k] for k in sorted(rows)]


@bp.get("/jobs/<job_id>")
@require_admin
def job_page(job_id: str) -> str:
    """Everything about one job."""
    session = db()
    job = batches.get_job(session, None, job_id)
    events = batches.job_events(session, job.id)
    inbox = deliveries.for_job(session, job.id)
    secrets = services().settings.secrets()
    shown = [{"d": d, "body": deliveries.shown_body(d, secrets), "headers": deliveries.shown_headers(d)}
             for d in inbox]
    images = list(session.scalars(sa.select(Asset).where(Asset.job_id == job.id).order_by(Asset.index)))
    batch = batches.get_batch(session, None, str(job.batch_id))
    return render_template("job.html", job=job, batch=batch, events=events, deliveries=shown, images=images,
                           attempts=attempts(job, events), native=native_request(job),
                           params=json.dumps(job.params, indent=2, ensure_ascii=False))


@bp.post("/deliveries/<delivery_id>/replay")
@require_admin
def replay(delivery_id: str) -> Response:
    """Send a stored, verified delivery through reconciliation again (idempotent)."""
    session = db()
    delivery = deliveries.get(session, delivery_id)
    previous = deliveries.reopen_for_replay(session, delivery)
    audit.record(session, actor(), "replay_delivery", f"delivery {delivery.id}", 1, job_id=str(delivery.job_id),
                 previous_outcome=previous)
    services().publisher.after_commit(session, queue.PROCESS_DELIVERY, str(delivery.id))
    session.commit()
    return redirect(url_for("dashboard.job_page", job_id=delivery.job_id, replayed=delivery.id))  # type: ignore[return-value]
