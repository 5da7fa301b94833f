"""GET /v1/batches/<id>/results: a JSONL manifest, streamed, one line per job."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from flask import Blueprint, Response, g, stream_with_context

from orchestrator import batches, signing
from orchestrator.api.context import db, services
from orchestrator.api.operations import Content, operation
from orchestrator.models import Asset, Job
from orchestrator.responses import CallbackSecretOut, ManifestError, ManifestImage, ManifestLine
from orchestrator.storage.base import Storage

bp = Blueprint("results", __name__, url_prefix="/v1")
PAGE = 1000
LINK_SECONDS = 3600


@operation(bp, "GET", "/batches/<uuid:batch_id>/results", "Get the results manifest of a batch",
           responses={200: Content("application/x-ndjson", ManifestLine,
                                   "JSONL: one ManifestLine per job, by position, with fresh presigned links")})
def results(batch_id: uuid.UUID) -> Response:
    """Stream the manifest with fresh presigned GET links (valid one hour)."""
    bid = batches.get_batch(db(), g.tenant, batch_id).id
    factory, storage = services().sessions, services().storage

    def lines() -> Iterator[str]:
        with factory() as session:
            yield from manifest_lines(session, bid, storage)

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson",
                    headers={"Content-Disposition": f'inline; filename="batch-{bid}.jsonl"'})


def manifest_lines(session: sa.orm.Session, batch_id: uuid.UUID, storage: Storage) -> Iterator[str]:
    """The batch's JSONL manifest: one line per job by position, read PAGE jobs at a time."""
    after = -1
    while True:
        jobs = list(session.execute(sa.select(Job).where(Job.batch_id == batch_id, Job.position > after)
                                    .order_by(Job.position).limit(PAGE)).scalars())
        if not jobs:
            return
        assets = _assets(session, [j.id for j in jobs])
        for job in jobs:
            line = manifest_line(job, assets.get(job.id, []), storage)
            yield json.dumps(line.model_dump(mode="json")) + "\n"
        after = jobs[-1].position


def _assets(session: sa.orm.Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Asset]]:
    out: dict[uuid.UUID, list[Asset]] = {}
    for asset in session.execute(sa.select(Asset).where(Asset.job_id.in_(job_ids), Asset.stored_at.is_not(None))
                                 .order_by(Asset.job_id, Asset.index)).scalars():
        out.setdefault(asset.job_id, []).append(asset)
    return out


def manifest_line(job: Job, assets: list[Asset], storage: Storage) -> ManifestLine:
    """One job's manifest entry."""
    images = [ManifestImage(asset_id=str(a.id), index=a.index, storage_key=a.storage_key,
                            url=storage.presign_get(a.storage_key, LINK_SECONDS), sha256=a.sha256, width=a.width,
                            height=a.height, content_type=a.content_type, bytes=a.bytes,
                            seed=int(a.seed) if a.seed is not None else None, nsfw=a.nsfw,
                            cost=float(a.cost) if a.cost is not None else None,
                            cost_source=a.cost_source)  # type: ignore[arg-type]
              for a in assets if a.storage_key]
    error = ManifestError(code=job.error_code, message=job.error_message) \
        if job.error_code or job.error_message else None
    return ManifestLine(custom_id=job.custom_id, position=job.position, job_id=str(job.id), status=job.state.value,
                        model=job.model, provider=job.provider, prompt=job.params.get("prompt"), images=images,
                        seed=images[0].seed if images else job.params.get("seed"),
                        cost=float(job.cost) if job.cost is not None else None,
                        cost_source=job.cost_source, error=error)  # type: ignore[arg-type]


@operation(bp, "GET", "/callback-secret", "Get the callback signing secret", responses={200: CallbackSecretOut})
def callback_secret() -> CallbackSecretOut:
    """This tenant's Standard Webhooks signing secret for batch.completed callbacks."""
    return CallbackSecretOut(secret=signing.tenant_secret(services().settings.resolved_secret_key(), g.tenant))
