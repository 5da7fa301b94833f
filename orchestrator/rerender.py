"""Re-render: some of a batch's images again, as a new batch linked to its parent.

Either the same prompts and seeds on another model (schnell drafts -> Juggernaut finals) or
the same model with new seeds (variations). The new batch goes through intake exactly like a
submitted one, so it is validated against the target model and rejected as a whole.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import batches, intake
from orchestrator.models import Asset, Batch, Job
from orchestrator.picks import InvalidSelection
from orchestrator.schemas import BatchRequest, Item

# Parameters that mean the same on every model. Steps and guidance are tuned per model,
# so a change of model lets the target's defaults apply.
PORTABLE = ("prompt", "negative_prompt", "width", "height", "output_format", "loras")
SAME_MODEL = (*PORTABLE, "steps", "guidance", "native")
MAX_ITEMS = 10_000


@dataclass(frozen=True)
class Selection:
    """What to re-render: whole jobs, single images, or both (none = every job of the batch)."""

    job_ids: tuple[uuid.UUID, ...] = ()
    asset_ids: tuple[uuid.UUID, ...] = ()

    @classmethod
    def parse(cls, job_ids: Iterable[str] = (), asset_ids: Iterable[str] = ()) -> Selection:
        """From client text; a malformed id is a 400 naming it."""
        return cls(_uuids(job_ids, "job_ids"), _uuids(asset_ids, "asset_ids"))


def rerender(session: Session, parent: Batch, selection: Selection, *, model: str | None, new_seeds: bool,
             max_items: int, name: str | None = None, idempotency_key: str | None = None,
             request_hash: str | None = None) -> tuple[Batch, bool]:
    """Create the linked batch (not committed); returns (batch, created)."""
    items = _items(session, parent, selection, model, new_seeds)
    if not items:
        raise InvalidSelection("nothing to re-render: the selection has no jobs of this batch")
    if len(items) > min(max_items, MAX_ITEMS):
        raise InvalidSelection(f"{len(items)} items selected; at most {min(max_items, MAX_ITEMS)} per re-render")
    lane: Literal["interactive", "bulk"] = "bulk" if parent.lane == "bulk" else "interactive"
    request = BatchRequest(name=(name or f"{parent.name or 'batch'} (re-render)")[:200], lane=lane,
                           metadata={"parent_batch_id": str(parent.id)}, items=items)
    plan = intake.plan(request, max_items)
    batch, created = batches.create_batch(session, parent.tenant, plan, idempotency_key=idempotency_key,
                                          request_hash=request_hash)
    if created:
        batch.parent_batch_id = parent.id
    return batch, created


def _items(session: Session, parent: Batch, sel: Selection, model: str | None, new_seeds: bool) -> list[Item]:
    jobs_q = sa.select(Job).where(Job.batch_id == parent.id).order_by(Job.position)
    if sel.job_ids or sel.asset_ids:
        in_assets = sa.select(Asset.job_id).where(Asset.id.in_(sel.asset_ids))
        jobs_q = jobs_q.where(sa.or_(Job.id.in_(sel.job_ids), Job.id.in_(in_assets)))
    jobs = list(session.scalars(jobs_q))
    assets = _assets(session, [j.id for j in jobs])
    chosen = set(sel.asset_ids)
    items: list[Item] = []
    for job in jobs:
        whole = not (sel.job_ids or sel.asset_ids) or job.id in sel.job_ids
        picked = [a for a in assets.get(job.id, []) if a.id in chosen]
        if whole or not picked:
            seed = job.params.get("seed") or next((a.seed for a in assets.get(job.id, []) if a.seed), None)
            items.append(_item(job, job.custom_id, seed, job.num_images, model, new_seeds))
        else:
            items.extend(_item(job, f"{job.custom_id}~{a.index}" if a.index else job.custom_id, a.seed, 1,
                               model, new_seeds) for a in picked)
    return items


def _item(job: Job, custom_id: str, seed: object, num_images: int, model: str | None, new_seeds: bool) -> Item:
    target = model or job.requested_model
    keep = SAME_MODEL if target in (job.requested_model, job.model) else PORTABLE
    params = {k: job.params[k] for k in keep if job.params.get(k) is not None}
    params["seed"] = secrets.randbelow(2**31) if new_seeds or seed is None else int(str(seed))
    return Item.model_validate({**params, "custom_id": custom_id[:200], "model": target, "num_images": num_images})


def _assets(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Asset]]:
    out: dict[uuid.UUID, list[Asset]] = {}
    for asset in session.scalars(sa.select(Asset).where(Asset.job_id.in_(job_ids)).order_by(Asset.job_id, Asset.index)):
        out.setdefault(asset.job_id, []).append(asset)
    return out


def _uuids(values: Iterable[str], field: str) -> tuple[uuid.UUID, ...]:
    out = []
    for value in values:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            raise InvalidSelection(f"{field}: {str(value)[:60]!r} is not an id") from None
    return tuple(dict.fromkeys(out))
