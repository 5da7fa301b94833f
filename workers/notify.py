"""Tell the client a batch finished: one signed `batch.completed` event per completion."""

from __future__ import annotations

import json
import logging
import uuid

import httpx
from celery import shared_task

from orchestrator import batches, queue, signing
from orchestrator.db import iso, utcnow
from orchestrator.models import Batch, CallbackAttempt
from orchestrator.netpolicy import AddressRefused
from orchestrator.redact import redact_url
from workers.celery_app import TASK_OPTS
from workers.context import Context, ctx

log = logging.getLogger(__name__)


class CallbackFailed(Exception):
    """The client's endpoint did not accept the event."""


@shared_task(name=queue.NOTIFY_BATCH, bind=True, max_retries=8, **TASK_OPTS)
def notify_batch(self, batch_id: str) -> str:
    """Send the event; retry with backoff; the sweep tries again later if all retries fail."""
    try:
        return notify(ctx(), uuid.UUID(batch_id))
    except CallbackFailed as exc:
        if self.request.retries >= self.max_retries:
            return f"gave up for now: {exc}"
        raise self.retry(countdown=min(300, 2 ** (self.request.retries + 1)), exc=exc) from None


def notify(c: Context, batch_id: uuid.UUID) -> str:
    """POST batch.completed for the batch's latest completion, once."""
    with c.session() as session:
        batch = session.get(Batch, batch_id)
        if batch is None or batch.completion_round <= batch.notified_round:
            return "nothing to send"
        if not batch.callback_url:
            batch.notified_round = batch.completion_round
            return "no callback url"
        url, rnd, tenant = batch.callback_url, batch.completion_round, batch.tenant
        results_url = f"{c.settings.public_url.rstrip('/')}/v1/batches/{batch.id}/results"
        payload = {"type": "batch.completed", "timestamp": iso(utcnow()),
                   "data": {**batches.batch_json(batch), "results_url": results_url}}
    body = json.dumps(payload, separators=(",", ":")).encode()
    msg_id = f"msg_{batch_id.hex}_{rnd}"
    secret = signing.tenant_secret(c.settings.resolved_secret_key(), tenant)
    try:
        # The guarded client re-checks the address it actually connects to (names can change
        # since intake) and follows no redirect.
        resp = c.callback_http.post(url, content=body, headers=signing.headers(secret, msg_id, utcnow(), body),
                                    timeout=httpx.Timeout(15.0, connect=5.0), follow_redirects=False)
    except AddressRefused as exc:
        # Not retried: we never connect inside. The round counts as handled so it is not retried
        # forever by the sweep; the refusal is logged for the operator.
        log.warning("batch callback refused", extra={"batch_id": str(batch_id), "reason": str(exc)})
        with c.session() as session:
            session.add(CallbackAttempt(batch_id=batch_id, round=rnd, outcome=f"address refused: {exc}"[:200]))
            refused = session.get(Batch, batch_id)
            if refused is not None and refused.notified_round < rnd:
                refused.notified_round = rnd
        return f"refused: {exc}"
    except httpx.HTTPError as exc:
        _attempt(c, batch_id, rnd, None, type(exc).__name__)
        raise CallbackFailed(f"{redact_url(url)}: {type(exc).__name__}") from None
    if not 200 <= resp.status_code < 300:
        _attempt(c, batch_id, rnd, resp.status_code, "not accepted")
        raise CallbackFailed(f"{redact_url(url)} answered {resp.status_code}")
    with c.session() as session:
        session.add(CallbackAttempt(batch_id=batch_id, round=rnd, status_code=resp.status_code, outcome="delivered"))
        batch = session.get(Batch, batch_id)
        if batch is not None and batch.notified_round < rnd:
            batch.notified_round = rnd
    return "sent"


def _attempt(c: Context, batch_id: uuid.UUID, rnd: int, status: int | None, outcome: str) -> None:
    """Keep a failed try for the dashboard (the URL is not stored: it may carry a secret)."""
    with c.session() as session:
        session.add(CallbackAttempt(batch_id=batch_id, round=rnd, status_code=status, outcome=outcome[:200]))
