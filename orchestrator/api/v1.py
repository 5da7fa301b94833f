"""The /v1 client API: batches, jobs, models, OpenAPI."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from orchestrator import batches, catalog, intake, queue, state
from orchestrator.api.auth import require_key
from orchestrator.api.context import db, services
from orchestrator.api.problems import BASE, problem
from orchestrator.log import bind
from orchestrator.schemas import openapi_document

bp = Blueprint("v1", __name__, url_prefix="/v1")
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson")


@bp.post("/batches")
@require_key()
def create_batch() -> Response | tuple[Response, int]:
    """Validate a whole batch, write it in one transaction, then nudge dispatch."""
    settings = services().settings
    raw = request.get_data(cache=False)
    if not raw:
        return problem(400, "Empty body", "send a JSON batch or a JSONL body", BASE + "empty-body")
    mimetype = request.mimetype or "application/json"
    if mimetype in JSONL_TYPES:
        req = intake.parse_jsonl(raw, request.args, settings.max_items_per_batch)
    elif mimetype == "application/json":
        req = intake.parse_json(raw, settings.max_items_per_batch)
    else:
        return problem(415, "Unsupported media type",
                       f"use application/json or application/x-ndjson, not {mimetype}", BASE + "media-type")
    plan = intake.plan(req, settings.max_items_per_batch)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        return problem(400, "Invalid Idempotency-Key", "must be 1 to 200 characters", BASE + "idempotency-key")
    digest = hashlib.sha256(mimetype.encode() + b"\n" + request.query_string + b"\n" + raw).hexdigest()
    session = db()
    batch, created = batches.create_batch(session, g.tenant, plan, idempotency_key=key, request_hash=digest)
    if created:
        services().publisher.after_commit(session, queue.DISPATCH)
    session.commit()
    bind(batch_id=batch.id)
    body = jsonify(batches.batch_json(batch))
    body.headers["Location"] = f"/v1/batches/{batch.id}"
    return body, 201 if created else 200


@bp.get("/batches")
@require_key()
def list_batches() -> Response:
    """This tenant's batches, newest first."""
    rows, nxt = batches.list_batches(db(), g.tenant, states=_states(), cursor=request.args.get("cursor"),
                                     limit=_limit())
    return jsonify({"data": [batches.batch_json(b) for b in rows], "next_cursor": nxt})


@bp.get("/batches/<batch_id>")
@require_key()
def get_batch(batch_id: str) -> Response:
    """One batch with its counts."""
    return jsonify(batches.batch_json(batches.get_batch(db(), g.tenant, batch_id)))


@bp.get("/batches/<batch_id>/jobs")
@require_key()
def list_jobs(batch_id: str) -> Response:
    """A batch's jobs by position, filtered by state."""
    batch = batches.get_batch(db(), g.tenant, batch_id)
    rows, nxt = batches.list_jobs(db(), batch, states=_states(), cursor=request.args.get("cursor"),
                                  limit=_limit())
    return jsonify({"data": [batches.job_json(j) for j in rows], "next_cursor": nxt})


@bp.post("/batches/<batch_id>/cancel")
@require_key()
def cancel_batch(batch_id: str) -> Response:
    """Cancel unfinished jobs at once; ask the provider to drop requests it already has."""
    session = db()
    batch = batches.get_batch(session, g.tenant, batch_id)
    count, at_provider = batches.cancel(session, batch)
    for job_id in at_provider:
        services().publisher.after_commit(session, queue.CANCEL_AT_PROVIDER, str(job_id))
    for finished in state.finished_batches(session):
        services().publisher.after_commit(session, queue.NOTIFY_BATCH, str(finished))
    session.commit()
    session.refresh(batch)
    return jsonify({**batches.batch_json(batch), "cancelled_jobs": count})


@bp.post("/batches/<batch_id>/retry")
@require_key()
def retry_batch(batch_id: str) -> Response:
    """Re-queue the failed jobs of a batch; succeeded jobs are untouched."""
    session = db()
    batch = batches.get_batch(session, g.tenant, batch_id)
    count = batches.retry(session, batch)
    if count:
        services().publisher.after_commit(session, queue.DISPATCH)
    session.commit()
    session.refresh(batch)
    return jsonify({**batches.batch_json(batch), "requeued_jobs": count})


@bp.get("/jobs/<job_id>")
@require_key()
def get_job(job_id: str) -> Response:
    """One job with its timeline."""
    job = batches.get_job(db(), g.tenant, job_id)
    events = [{"kind": e.kind, "attempt": e.attempt, "from": e.from_state, "to": e.to_state,
               "detail": e.detail, "at": e.created_at.isoformat()} for e in batches.job_events(db(), job.id)]
    return jsonify({**batches.job_json(job), "events": events})


@bp.get("/models")
def list_models() -> Response:
    """The model catalog and family aliases (public, no key needed)."""
    return jsonify({"data": [m.public() for m in catalog.MODELS.values()],
                    "aliases": {k: list(v) for k, v in catalog.ALIASES.items()}})


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document, generated from the pydantic models."""
    return jsonify(openapi_document())


def _states() -> list[str]:
    return [s for value in request.args.getlist("state") for s in value.split(",") if s]


def _limit() -> int:
    raw: Any = request.args.get("limit", "100")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 1 <= value <= batches.PAGE_MAX:
        raise batches.InvalidQuery(f"limit must be an integer from 1 to {batches.PAGE_MAX}")
    return value
