"""/v1 picks and re-render: the mood board's operations for API clients and the CLI."""

from __future__ import annotations

import hashlib
import uuid

from flask import Blueprint, g, request
from pydantic import ValidationError

from orchestrator import batches, gallery, jsonbody, picks, queue, rerender
from orchestrator.api.context import db, services
from orchestrator.api.operations import Body, operation
from orchestrator.api.params import BatchHeaders
from orchestrator.errors import BatchRejected, ItemProblem
from orchestrator.models import Batch
from orchestrator.responses import BatchOut, PickOut, PicksOut
from orchestrator.schemas import PicksIn, RerenderIn

bp = Blueprint("picks", __name__, url_prefix="/v1")
LINK_SECONDS = 3600


def _body(model: type[PicksIn] | type[RerenderIn]) -> PicksIn | RerenderIn:
    data = jsonbody.loads_batch_body(request.get_data(cache=False) or b"{}")
    if not isinstance(data, dict):
        raise BatchRejected([ItemProblem(None, None, "body", "must be a JSON object")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BatchRejected([ItemProblem(None, None, ".".join(str(p) for p in e["loc"]) or "body",
                                         e["msg"].removeprefix("Value error, ")) for e in exc.errors()],
                            "the request is invalid; nothing was changed") from None


def _picks_out(batch: Batch, added: int = 0, removed: int = 0) -> PicksOut:
    storage = services().storage
    rows = gallery.tiles(db(), batch, picks_only=True, limit=gallery.EXPORT_MAX_IMAGES)
    return PicksOut(added=added, removed=removed, data=[
        PickOut(asset_id=str(t.asset_id), job_id=str(t.job_id), custom_id=t.custom_id, position=t.position,
                index=t.index,
                prompt=t.prompt, seed=int(t.seed) if t.seed is not None else None, width=t.width, height=t.height,
                provider=t.provider, model=t.model, sha256=t.sha256, content_type=t.content_type, bytes=t.bytes,
                storage_key=t.storage_key, url=storage.presign_get(t.storage_key, LINK_SECONDS)) for t in rows])


@operation(bp, "GET", "/batches/<uuid:batch_id>/picks", "List the picked images of a batch",
           responses={200: PicksOut})
def list_picks(batch_id: uuid.UUID) -> PicksOut:
    """The batch's picks in grid order, with presigned links (valid one hour)."""
    return _picks_out(batches.get_batch(db(), g.tenant, batch_id))


@operation(bp, "POST", "/batches/<uuid:batch_id>/picks", "Pick or un-pick images of a batch",
           body=Body(PicksIn), responses={200: PicksOut})
def change_picks(batch_id: uuid.UUID) -> PicksOut:
    """Add and remove picks (idempotent); every id must be a stored image of this batch."""
    data = _body(PicksIn)
    assert isinstance(data, PicksIn)
    session = db()
    batch = batches.get_batch(session, g.tenant, batch_id)
    picks.only_in_batch(session, batch, [*data.add, *data.remove])
    added = picks.add(session, g.tenant, data.add, by="api") if data.add else 0
    removed = picks.remove(session, g.tenant, data.remove) if data.remove else 0
    session.commit()
    return _picks_out(batch, added, removed)


@operation(bp, "POST", "/batches/<uuid:batch_id>/rerender", "Re-render images of a batch as a new linked batch",
           headers=BatchHeaders, body=Body(RerenderIn), responses={201: BatchOut, 200: BatchOut}, problems=(409,))
def rerender_batch(batch_id: uuid.UUID, headers: BatchHeaders) -> tuple[BatchOut, int, dict[str, str]]:
    """Same prompts and seeds on another model, or new seeds; the new batch has parent_batch_id set."""
    data = _body(RerenderIn)
    assert isinstance(data, RerenderIn)
    session = db()
    parent = batches.get_batch(session, g.tenant, batch_id)
    asset_ids = list(data.asset_ids)
    if data.picks:
        asset_ids += [str(a) for a in picks.picked(session, parent)]
        if not asset_ids and not data.job_ids:
            raise picks.InvalidSelection("this batch has no picks to re-render")
    selection = rerender.Selection.parse(job_ids=data.job_ids, asset_ids=asset_ids)
    batch, created = rerender.rerender(session, parent, selection, model=data.model, new_seeds=data.new_seeds,
                                       max_items=services().settings.max_items_per_batch, name=data.name,
                                       idempotency_key=headers.idempotency_key,
                                       request_hash=hashlib.sha256(request.get_data()).hexdigest())
    if created:
        services().publisher.after_commit(session, queue.DISPATCH)
    session.commit()
    return batches.batch_out(batch), 201 if created else 200, {"Location": f"/v1/batches/{batch.id}"}
