"""Provider callbacks: verify over the raw body, store durably, answer, then process in a worker.

The request does no provider or storage I/O (the fal JWKS is cached for at most 24 h). A
delivery is answered 2xx only after it is committed; if storing fails the provider gets a 5xx
and retries. Duplicates hit a unique (provider, event_key) and are counted, not re-processed.
Forged, stale and unmatched callbacks are recorded (without an event key) and refused, and so
is a delivery about another provider request than the attempt's (orchestrator.binding).
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from typing import Any, cast

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import binding, queue, webhook_urls
from orchestrator.api.context import db, services
from orchestrator.api.problems import problem
from orchestrator.db import dialect_insert
from orchestrator.errors import PROBLEM_TYPES as BASE
from orchestrator.log import bind
from orchestrator.models import Delivery, Job
from orchestrator.providers import registry
from orchestrator.providers.base import ProviderAdapter, ProviderSettings
from orchestrator.providers.errors import TransientProviderError, WebhookRejected

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix=webhook_urls.PREFIX)
KEPT_HEADERS = ("content-type", "user-agent", *registry.webhook_headers())


@bp.post("/<provider>/<job_id>/<attempt>")
def receive(provider: str, job_id: str, attempt: str) -> Response | tuple[Response, int]:
    """Accept one provider callback: target, token, the provider's own check, binding, store."""
    raw, headers = request.get_data(cache=False), _kept_headers()
    if provider not in registry.PROVIDERS:
        return _reject(provider, raw, headers, None, None, 404, "no webhook endpoint for this provider")
    target = webhook_urls.target(provider, job_id, attempt)
    job = _connection().execute(_JOB, {"job_id": target.job_id}).one_or_none() if target else None
    if target is None or job is None:
        return _reject(provider, raw, headers, None, None, 404, "no such job")
    bind(job_id=job.id, batch_id=job.batch_id)
    settings = services().settings
    if not webhook_urls.token_matches(settings.resolved_secret_key(), target, request.args.get("token")):
        return _reject(provider, raw, headers, job.id, target.attempt, 401, "wrong token")
    adapter = _adapter(settings.provider(provider))
    try:
        adapter.verify_webhook(headers, raw)
    except WebhookRejected as exc:
        return _reject(provider, raw, headers, job.id, target.attempt, 401, exc.reason, keep_body=True)
    except TransientProviderError:
        # We cannot check it right now (fal's signing keys); a 5xx makes the provider deliver again later.
        return problem(503, "Verification unavailable", "signing keys could not be fetched", BASE + "unavailable")
    verdict = binding.judge(db(), job, target.attempt, provider, raw, headers)
    if verdict.decision == "refused":
        return _reject(provider, raw, headers, job.id, target.attempt, 409, verdict.reason, keep_body=True)
    key = adapter.event_key(job.id, target.attempt, verdict.claimed or "", raw)
    return _store(provider, raw, headers, job.id, target.attempt, key, held=verdict.decision == "held")


# The receiver's hot path uses Core statements on the tables: no ORM object, identity map or flush.
_JOBS, _DELIVERIES = cast(sa.Table, Job.__table__), cast(sa.Table, Delivery.__table__)
# The job columns the receiver and binding.judge read (binding.JobRef).
_JOB = sa.select(_JOBS.c.id, _JOBS.c.batch_id, _JOBS.c.attempt, _JOBS.c.provider, _JOBS.c.provider_request_id,
                 _JOBS.c.task_id).where(_JOBS.c.id == sa.bindparam("job_id"))


@bp.post("/<path:rest>")
def unknown_path(rest: str) -> tuple[Response, int]:
    """Any other callback path: refused, and kept in the inbox for the audit like every other callback."""
    raw, headers = request.get_data(cache=False), _kept_headers()
    return _reject(rest.split("/", 1)[0], raw, headers, None, None, 404, "no such webhook endpoint")


def _connection() -> Connection:
    """The request session's connection, in autocommit from its first statement on.

    Every write the receiver makes is one statement (a delivery stored, counted or refused),
    committed and durable when it returns, before any answer; BEGIN and COMMIT would be two
    more round trips for nothing. Nothing here reads twice expecting the same snapshot.
    """
    session = db()
    if session.in_transaction():
        return session.connection()
    return session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def _kept_headers() -> dict[str, str]:
    """The request headers stored with a delivery (no credentials: signatures and content type)."""
    return {k: v for k, v in request.headers.items() if k.lower() in KEPT_HEADERS}


@cache
def _adapter(account: ProviderSettings) -> ProviderAdapter:
    """One adapter per provider account per process (the receiver only verifies and keys deliveries)."""
    return registry.from_settings(account)


def _store(provider: str, raw: bytes, headers: dict[str, str], job_id: Any, attempt: int,
           key: str, *, held: bool) -> Response | tuple[Response, int]:
    session = db()
    values = {"provider": provider, "event_key": key[:300], "job_id": job_id, "attempt": attempt, "verified": True,
              "headers": headers, "body": raw, "outcome": binding.HELD if held else None, "duplicates": 0}
    try:
        # One statement stores the delivery or counts the duplicate: a new row comes back with
        # duplicates 0, a repeated event key with its counter raised.
        new_id, duplicates = _connection().execute(_upsert_for(session.get_bind().dialect.name), values).one()
        session.commit()
    except SQLAlchemyError:
        log.exception("could not store webhook delivery")
        session.rollback()
        return problem(503, "Not stored", "the delivery could not be stored; retry", BASE + "unavailable")
    if duplicates:
        return jsonify({"status": "duplicate"}), 200
    # Queued only now that it is committed. A held delivery is queued too: the worker decides
    # under the job's lock, so it cannot miss a submit answer that lands in between.
    services().publisher.send(queue.PROCESS_DELIVERY, str(new_id))
    return (jsonify({"status": "held"}), 202) if held else (jsonify({"status": "accepted"}), 200)


@cache
def _upsert_for(dialect: str) -> Any:
    """INSERT a verified delivery, or on its (provider, event_key) add one to its duplicates; RETURNING both."""
    insert = dialect_insert(dialect, _DELIVERIES)
    return insert.on_conflict_do_update(index_elements=[_DELIVERIES.c.provider, _DELIVERIES.c.event_key],
                                        set_={"duplicates": _DELIVERIES.c.duplicates + 1}
                                        ).returning(_DELIVERIES.c.id, _DELIVERIES.c.duplicates)


def _reject(provider: str, raw: bytes, headers: dict[str, str], job_id: Any, attempt: int | None, status: int,
            reason: str, *, keep_body: bool = False) -> tuple[Response, int]:
    session = db()
    # Callbacks with no valid job and token are unauthenticated: keep a digest and a short
    # prefix for the audit, not whatever body a stranger chose to send.
    body = raw[:65536] if keep_body else raw[:1024]
    headers = {**headers, "x-body-sha256": hashlib.sha256(raw).hexdigest(), "x-body-bytes": str(len(raw))}
    try:
        _connection().execute(sa.insert(_DELIVERIES), {
            "provider": provider[:16], "job_id": job_id, "attempt": attempt, "verified": False,
            "rejection": reason[:200], "headers": headers, "body": body, "duplicates": 0})
        session.commit()
    except SQLAlchemyError:
        session.rollback()
    current_app.logger.warning("webhook rejected", extra={"provider": provider[:16], "reason": reason})
    title, kind = _REFUSALS[status]
    return problem(status, title, reason, BASE + kind), status


_REFUSALS = {401: ("Unauthorized", "unauthorized"), 404: ("Not found", "not-found"),
             409: ("Not this attempt's delivery", "conflict")}
