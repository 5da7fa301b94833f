"""Picks: the images a tenant chose on the mood board. Takes a session; never commits."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.db import upsert_insert
from orchestrator.errors import DomainError, NotFound
from orchestrator.models import Asset, Batch, Job, Pick

MAX_PER_CALL = 5000


class InvalidSelection(DomainError, status=400, slug="invalid-selection", title="Invalid selection"):
    """A selection of images or jobs that cannot be acted on as given."""


def _asset_rows(session: Session, tenant: str | None, asset_ids: Iterable[str | uuid.UUID]) -> list[Any]:
    wanted = ids(asset_ids)
    q = sa.select(Asset.id, Job.batch_id, Job.tenant).join(Job, Job.id == Asset.job_id).where(
        Asset.id.in_(wanted), Asset.stored_at.is_not(None))
    rows = list(session.execute(q if tenant is None else q.where(Job.tenant == tenant)).all())
    if len(rows) != len(wanted):
        found = {r.id for r in rows}
        missing = next(str(i) for i in wanted if i not in found)
        raise NotFound(f"no stored image {missing}")
    return rows


def add(session: Session, tenant: str | None, asset_ids: Iterable[str | uuid.UUID], *, by: str = "") -> int:
    """Pick these stored images (idempotent); returns how many were newly picked.

    `tenant=None` (an operator) picks on behalf of each image's own tenant.
    """
    rows = _asset_rows(session, tenant, asset_ids)
    if not rows:
        return 0
    values = [{"id": uuid.uuid4(), "tenant": r.tenant, "asset_id": r.id, "batch_id": r.batch_id,
               "created_by": by[:80]} for r in rows]
    result = session.execute(upsert_insert(session, Pick).values(values).on_conflict_do_nothing()
                             .returning(Pick.id))
    return len(result.all())


def remove(session: Session, tenant: str | None, asset_ids: Iterable[str | uuid.UUID]) -> int:
    """Un-pick these images; returns how many picks were removed."""
    q = sa.delete(Pick).where(Pick.asset_id.in_(ids(asset_ids)))
    result = session.execute(q if tenant is None else q.where(Pick.tenant == tenant))
    return result.rowcount  # type: ignore[attr-defined]


def only_in_batch(session: Session, batch: Batch, asset_ids: Iterable[str | uuid.UUID]) -> list[uuid.UUID]:
    """The ids, if every one is a stored image of `batch`; else InvalidSelection naming one that is not."""
    wanted = ids(asset_ids)
    found = set(session.scalars(sa.select(Asset.id).join(Job, Job.id == Asset.job_id)
                                .where(Asset.id.in_(wanted), Job.batch_id == batch.id, Asset.stored_at.is_not(None))))
    missing = [str(i) for i in wanted if i not in found]
    if missing:
        raise InvalidSelection(f"not a stored image of this batch: {missing[0]}")
    return wanted


def picked(session: Session, batch: Batch) -> set[uuid.UUID]:
    """The ids of this batch's picked images."""
    return set(session.scalars(sa.select(Pick.asset_id).where(Pick.batch_id == batch.id,
                                                               Pick.tenant == batch.tenant)))


def ids(values: Iterable[str | uuid.UUID]) -> list[uuid.UUID]:
    out: list[uuid.UUID] = []
    for value in values:
        try:
            out.append(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
        except ValueError:
            raise InvalidSelection(f"{str(value)[:60]!r} is not an image id") from None
    if len(out) > MAX_PER_CALL:
        raise InvalidSelection(f"at most {MAX_PER_CALL} images per call")
    return list(dict.fromkeys(out))
