"""The webhook inbox as operators see it: a job's deliveries, shown redacted, and replay.

Replay sends a stored, verified delivery through reconciliation again. It is safe because
reconciliation is idempotent: a job that already took the outcome records a "late result
ignored" event, images are unique per provider image id, and nothing is submitted, so
replaying never pays or stores twice.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.errors import NotFound
from orchestrator.models import Delivery, Job
from orchestrator.picks import InvalidSelection
from orchestrator.redact import redact_text, redact_url

BODY_SHOWN = 20_000


def for_job(session: Session, job_id: uuid.UUID, limit: int = 100) -> list[Delivery]:
    """A job's deliveries, oldest first (ix_deliveries_job)."""
    return list(session.scalars(sa.select(Delivery).where(Delivery.job_id == job_id)
                                .order_by(Delivery.received_at, Delivery.id).limit(limit)))


def shown_body(delivery: Delivery, secrets: tuple[str, ...]) -> str:
    """The raw body for display: pretty JSON when it parses, with secrets and signatures removed."""
    raw = bytes(delivery.body or b"")
    text = raw[:BODY_SHOWN].decode("utf-8", errors="replace")
    try:
        text = json.dumps(_redact_json(json.loads(raw)), indent=2, ensure_ascii=False)[:BODY_SHOWN]
    except ValueError:
        pass
    return redact_text(text, secrets)


def shown_headers(delivery: Delivery) -> dict[str, Any]:
    """Headers as kept by the receiver (no credentials are kept); signatures shortened."""
    out: dict[str, Any] = {}
    for key, value in (delivery.headers or {}).items():
        out[key] = f"{str(value)[:12]}…" if "signature" in key.lower() else value
    return out


def _redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return redact_url(value)
    return value


def get(session: Session, delivery_id: str) -> Delivery:
    """One delivery, or NotFound."""
    try:
        did = uuid.UUID(delivery_id)
    except ValueError:
        raise NotFound(f"no delivery {delivery_id!r}") from None
    delivery = session.get(Delivery, did)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id}")
    return delivery


def reopen_for_replay(session: Session, delivery: Delivery) -> str | None:
    """Mark a verified delivery unprocessed so the worker reconciles it again; returns its last outcome.

    The caller publishes the process-delivery task after commit.
    """
    if not delivery.verified or delivery.job_id is None:
        raise InvalidSelection("only a verified delivery that belongs to a job can be replayed")
    if session.get(Job, delivery.job_id) is None:
        raise InvalidSelection("the delivery's job no longer exists")
    previous = delivery.outcome
    session.execute(sa.update(Delivery).where(Delivery.id == delivery.id)
                    .values(processed_at=None, outcome=None))
    return previous
