"""The batch page (mood board): grid, picks, exports, re-render, cancel/retry, chart, failures."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Response, abort, redirect, render_template, request, url_for
from sqlalchemy.orm import Session

from orchestrator import audit, batch_lists, batches, catalog, gallery, picks, rerender, stats
from orchestrator.api.context import db, services
from orchestrator.api.results import manifest_lines
from orchestrator.dashboard import actions
from orchestrator.dashboard.blueprint import bp
from orchestrator.dashboard.security import actor, require_admin
from orchestrator.db import as_utc, utcnow
from orchestrator.models import FINAL_BATCH, Asset, Batch, CallbackAttempt, Job, JobState
from orchestrator.picks import InvalidSelection
from orchestrator.schedule_models import Schedule

GRID_PAGE = 1000
IMAGE_LINK_SECONDS = 300  # the signed link behind each grid image lives five minutes


def _batch(batch_id: str) -> Batch:
    return batches.get_batch(db(), None, batch_id)


def _grid(batch: Batch) -> dict[str, Any]:
    picks_only = request.args.get("picks") == "1"
    after = request.args.get("after", "-1")
    try:
        after_pos = int(after)
    except ValueError:
        raise InvalidSelection(f"after: {after[:20]!r} is not a position") from None
    rows = gallery.tiles(db(), batch, picks_only=picks_only, after=after_pos, limit=GRID_PAGE)
    more = len(rows) == GRID_PAGE
    return {"tiles": rows, "picks_only": picks_only, "next_after": rows[-1].position if more else None}


@bp.get("/batches/<batch_id>")
@require_admin
def batch_page(batch_id: str) -> str:
    """The mood board of one batch."""
    session = db()
    batch = _batch(batch_id)
    start = as_utc(batch.started_at or batch.created_at)
    end = as_utc(batch.completed_at) if batch.completed_at else utcnow()
    failed = list(session.scalars(sa.select(Job).where(Job.batch_id == batch.id, Job.state == JobState.failed)
                                  .order_by(Job.position).limit(100)))
    callbacks = list(session.scalars(sa.select(CallbackAttempt).where(CallbackAttempt.batch_id == batch.id)
                                     .order_by(CallbackAttempt.id.desc()).limit(50)))
    children = list(session.scalars(sa.select(Batch).where(Batch.parent_batch_id == batch.id)
                                    .order_by(Batch.created_at.desc()).limit(20)))
    schedule = session.get(Schedule, batch.schedule_id) if batch.schedule_id else None
    return render_template("batch.html", batch=batch, **_grid(batch), chart=_chart(session, batch, start, end),
                           mix=batch_lists.provider_mix(session, [batch.id]).get(batch.id, []), failed=failed,
                           callbacks=callbacks, children=children, schedule=schedule,
                           pick_count=len(picks.picked(session, batch)), models=sorted(catalog.MODELS),
                           aliases=sorted(catalog.ALIASES), final=batch.state in FINAL_BATCH)


def _chart(session: Any, batch: Batch, start: datetime, end: datetime) -> dict[str, Any]:
    points = stats.throughput(session, batch.id, start, end)
    peak = max((n for _, n in points), default=0) or 1
    width, height, n = 600, 120, len(points)
    bars = [{"x": round(i * width / n, 1), "w": round(width / n - 1, 1), "h": round(c * (height - 10) / peak, 1),
             "n": c, "t": t} for i, (t, c) in enumerate(points)]
    return {"bars": bars, "width": width, "height": height, "peak": peak, "start": start, "end": end}


@bp.get("/batches/<batch_id>/progress")
@require_admin
def batch_progress(batch_id: str) -> str:
    """The progress block alone, polled while the batch runs."""
    batch = _batch(batch_id)
    return render_template("_batch_progress.html", batch=batch, final=batch.state in FINAL_BATCH)


@bp.get("/batches/<batch_id>/tiles")
@require_admin
def batch_tiles(batch_id: str) -> str:
    """Tiles stored since a time (polled to append new images), or the next page."""
    batch = _batch(batch_id)
    since_raw = request.args.get("since")
    try:
        since = as_utc(datetime.fromisoformat(since_raw)) if since_raw else None
    except ValueError:
        raise InvalidSelection("since: not a time") from None
    rows = gallery.tiles(db(), batch, since=since, limit=GRID_PAGE)
    return render_template("_tiles.html", tiles=rows, batch=batch)


@bp.get("/images/<asset_id>")
@require_admin
def image(asset_id: str) -> Response:
    """A short-lived signed link to one stored image (the grid's src stays stable, so browsers cache)."""
    try:
        aid = uuid.UUID(asset_id)
    except ValueError:
        abort(404)
    key = db().scalar(sa.select(Asset.storage_key).where(Asset.id == aid, Asset.stored_at.is_not(None)))
    if not key:
        abort(404)
    resp = redirect(services().storage.presign_get(key, IMAGE_LINK_SECONDS))
    resp.headers["Cache-Control"] = f"private, max-age={IMAGE_LINK_SECONDS - 60}"
    return resp  # type: ignore[return-value]


def _selected_assets() -> list[str]:
    ids = [v for raw in request.form.getlist("asset") for v in raw.split(",") if v]
    if not ids:
        raise InvalidSelection("select at least one image first")
    return ids


def _back(batch: Batch, **extra: Any) -> Response:
    keep: dict[str, Any] = {k: v for k in ("picks",) if (v := request.form.get("keep_" + k))}
    return redirect(url_for("dashboard.batch_page", batch_id=batch.id, **keep, **extra))  # type: ignore[return-value]


@bp.post("/batches/<batch_id>/picks")
@require_admin
def batch_picks(batch_id: str) -> Response:
    """Star or un-star the selected images."""
    session = db()
    batch = _batch(batch_id)
    ids = _selected_assets()
    picks.only_in_batch(session, batch, ids)
    op = request.form.get("op", "add")
    count = picks.add(session, batch.tenant, ids, by=actor().label) if op == "add" else \
        picks.remove(session, batch.tenant, ids)
    audit.record(session, actor(), f"picks_{'add' if op == 'add' else 'remove'}", f"batch {batch.id}", count)
    session.commit()
    if request.headers.get("X-Fragment"):
        return Response(json.dumps({"changed": count}), mimetype="application/json")
    return _back(batch)


@bp.post("/batches/<batch_id>/rerender")
@require_admin
def batch_rerender(batch_id: str) -> Response:
    """Re-render the selected images (or all) as a new linked batch."""
    session = db()
    batch = _batch(batch_id)
    ids = [v for raw in request.form.getlist("asset") for v in raw.split(",") if v]
    if ids:
        picks.only_in_batch(session, batch, ids)
    selection = rerender.Selection.parse(asset_ids=ids)
    model = (request.form.get("model") or "").strip() or None
    new_seeds = request.form.get("seeds") == "new"
    child = actions.rerender_batch(session, batch, selection, model, new_seeds)
    audit.record(session, actor(), "rerender", f"batch {batch.id}", child.total, child=str(child.id), model=model,
                 new_seeds=new_seeds, images=len(ids))
    session.commit()
    return redirect(url_for("dashboard.batch_page", batch_id=child.id))  # type: ignore[return-value]


@bp.post("/batches/<batch_id>/cancel")
@require_admin
def batch_cancel(batch_id: str) -> Response:
    """Cancel the batch's unfinished jobs."""
    return _apply("cancel", actions.cancel, batch_id)


@bp.post("/batches/<batch_id>/retry")
@require_admin
def batch_retry(batch_id: str) -> Response:
    """Re-queue the batch's failed jobs."""
    return _apply("retry", actions.retry, batch_id)


def _apply(name: str, action: Callable[[Session, Batch], int], batch_id: str) -> Response:
    """Run one action on the batch, audit it with the jobs it touched, and go back to the batch."""
    session = db()
    batch = _batch(batch_id)
    count = action(session, batch)
    audit.record(session, actor(), name, f"batch {batch.id}", count)
    session.commit()
    return _back(batch)


@bp.get("/batches/<batch_id>/manifest.jsonl")
@require_admin
def batch_manifest(batch_id: str) -> Response:
    """The same JSONL manifest as /v1/batches/<id>/results (fresh signed links)."""
    batch = _batch(batch_id)
    body = "".join(manifest_lines(db(), batch.id, services().storage))
    return Response(body, mimetype="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="batch-{batch.id}.jsonl"'})


@bp.get("/batches/<batch_id>/picks.zip")
@require_admin
def batch_picks_zip(batch_id: str) -> Response:
    """The picked images, their manifest and a contact sheet, as one zip."""
    batch = _batch(batch_id)
    data = gallery.picks_zip(db(), services().storage, batch)
    return Response(data, mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="picks-{batch.id}.zip"'})


@bp.get("/batches/<batch_id>/contact-sheet.png")
@require_admin
def batch_contact_sheet(batch_id: str) -> Response:
    """A contact sheet of the batch (or, with picks=1, of its picks)."""
    batch = _batch(batch_id)
    data = gallery.contact_sheet(db(), services().storage, batch, picks_only=request.args.get("picks") == "1")
    return Response(data, mimetype="image/png")
