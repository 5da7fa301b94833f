"""The operator audit log: who (which admin key) did what, to what, how many, when."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.models import AuditEntry


@dataclass(frozen=True)
class Actor:
    """The admin key acting; `label` is its name or public prefix, never the secret."""

    key_id: uuid.UUID | None
    label: str


def record(session: Session, actor: Actor, action: str, target: str, count: int, **detail: Any) -> AuditEntry:
    """Append one entry in the caller's transaction, so it commits with the action itself."""
    entry = AuditEntry(actor_key_id=actor.key_id, actor=actor.label[:120], action=action[:40], target=target[:300],
                       count=count, detail=detail)
    session.add(entry)
    return entry


def recent(session: Session, *, before: int | None = None, action: str | None = None,
           limit: int = 100) -> list[AuditEntry]:
    """Newest first, keyset-paginated on id."""
    q = sa.select(AuditEntry)
    if before is not None:
        q = q.where(AuditEntry.id < before)
    if action:
        q = q.where(AuditEntry.action == action)
    return list(session.scalars(q.order_by(AuditEntry.id.desc()).limit(limit)))
