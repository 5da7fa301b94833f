"""Tenant-scoped lookups by id: another tenant's row answers NotFound, exactly like a missing one,
so an id never tells a client that something exists outside its tenant."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.errors import NotFound

T = TypeVar("T")


def owned(session: Session, model: type[T], tenant: str | None, row_id: str | uuid.UUID, *, missing: str,
          malformed: str | None = None) -> T:
    """The `model` row with this id of this tenant (any tenant's for `tenant=None`, the operator's view).

    NotFound(missing) when there is none; NotFound(malformed, or missing) when the id is not a UUID.
    """
    try:
        rid = row_id if isinstance(row_id, uuid.UUID) else uuid.UUID(row_id)
    except ValueError:
        raise NotFound(missing if malformed is None else malformed) from None
    table: Any = model  # a mapped class with `id` and `tenant` columns
    q = sa.select(model).where(table.id == rid)
    row = session.execute(q if tenant is None else q.where(table.tenant == tenant)).scalar_one_or_none()
    if row is None:
        raise NotFound(missing)
    return row
