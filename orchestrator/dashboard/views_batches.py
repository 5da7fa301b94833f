"""Batches list (filters, search, sorting, keyset pages), its live fragment, and bulk actions."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, redirect, render_template, request, url_for

from orchestrator import batch_lists, batches, catalog
from orchestrator.api.context import db
from orchestrator.dashboard import actions
from orchestrator.dashboard.blueprint import bp
from orchestrator.dashboard.helpers import filter_args, parse_filter
from orchestrator.dashboard.security import require_admin
from orchestrator.errors import DomainError
from orchestrator.models import Batch, BatchState
from orchestrator.picks import InvalidSelection
from orchestrator.providers.registry import PROVIDERS
from orchestrator.schedule_models import Schedule

PAGE = 50
ACTIONS = ("cancel", "retry", "rerender")


@bp.get("/")
@require_admin
def index() -> Response:
    """The dashboard opens on the batches list."""
    return redirect(url_for("dashboard.batches"))  # type: ignore[return-value]


def _page() -> dict[str, Any]:
    states, filt, sort = parse_filter()
    session = db()
    rows, nxt = batch_lists.list_batches(session, None, states=states, cursor=request.args.get("cursor"),
                                     limit=PAGE, filters=filt, sort=sort)
    mix = batch_lists.provider_mix(session, [b.id for b in rows])
    schedule_ids = {b.schedule_id for b in rows if b.schedule_id}
    names = dict(session.execute(sa.select(Schedule.id, Schedule.name).where(Schedule.id.in_(schedule_ids))).all()) \
        if schedule_ids else {}
    return {"rows": rows, "next_cursor": nxt, "mix": mix, "schedule_names": names, "args": filter_args(),
            "states": states, "sort": sort}


@bp.get("/batches", endpoint="batches")
@require_admin
def batches_page() -> str:
    """Every tenant's batches, live."""
    return render_template("batches.html", **_page(), batch_states=[s.value for s in BatchState],
                           providers=PROVIDERS, models=sorted(catalog.MODELS), aliases=sorted(catalog.ALIASES),
                           actions=ACTIONS)


@bp.get("/fragments/batches")
@require_admin
def batches_fragment() -> str:
    """The table body alone, for polling."""
    return render_template("_batch_rows.html", **_page())


def _targets() -> tuple[list[Batch], str]:
    """The bulk action's batches: the ticked rows, or everything matching the filter (capped)."""
    session = db()
    if request.form.get("scope") == "filter":
        states, filt, sort = parse_filter()
        rows, more = batch_lists.list_batches(session, None, states=states, cursor=None, limit=actions.BULK_CAP,
                                          filters=filt, sort=sort)
        if more:
            raise InvalidSelection(f"more than {actions.BULK_CAP} batches match this filter; narrow it down "
                                   f"(bulk actions are capped at {actions.BULK_CAP} batches)")
        return rows, "all matching the filter"
    ids = request.form.getlist("batch")
    if not ids:
        raise InvalidSelection("tick at least one batch, or choose 'everything matching the filter'")
    if len(ids) > actions.BULK_CAP:
        raise InvalidSelection(f"{len(ids)} batches selected; bulk actions are capped at {actions.BULK_CAP}")
    return [batches.get_batch(session, None, i) for i in ids], "selection"


def _action() -> tuple[str, str | None, bool]:
    action = request.form.get("action", "")
    if action not in ACTIONS:
        raise InvalidSelection(f"unknown action {action[:40]!r}; use one of {', '.join(ACTIONS)}")
    model = (request.form.get("model") or "").strip() or None
    new_seeds = request.form.get("seeds") == "new"
    if action == "rerender" and model:
        try:
            catalog.resolve_model(model)
        except catalog.CatalogError as exc:
            raise InvalidSelection(f"model: {exc.problems[0][1] if exc.problems else model}") from None
    return action, model, new_seeds


@bp.post("/bulk/preview")
@require_admin
def bulk_preview() -> str:
    """Show how many batches and jobs an action would touch, and ask to confirm."""
    action, model, new_seeds = _action()
    targets, scope = _targets()
    counts = {b.id: actions.affected(action, b) for b in targets}
    return render_template("bulk_preview.html", action=action, model=model, new_seeds=new_seeds, targets=targets,
                           counts=counts, total=sum(counts.values()), scope=scope, cap=actions.BULK_CAP,
                           form=request.form, query=request.query_string.decode())


@bp.post("/bulk/apply")
@require_admin
def bulk_apply() -> Response:
    """Do it, audited, then show the audit log."""
    action, model, new_seeds = _action()
    targets, scope = _targets()
    session = db()
    try:
        outcome = actions.apply_bulk(session, action, targets, model=model, new_seeds=new_seeds, scope=scope)
    except DomainError:
        session.rollback()
        raise
    session.commit()
    return redirect(url_for("dashboard.audit_page", done=f"{action}: {outcome.batches} batches, {outcome.jobs} jobs"))  # type: ignore[return-value]
