"""Provider callbacks: verify over the raw body, store durably, answer, then process in a worker.

The request does no provider or storage I/O (the fal JWKS is cached for at most 24 h). A
delivery is answered 2xx only after it is committed; if storing fails the provider gets a 5xx
and retries. Duplicates hit a unique (provider, event_key) and are counted, not re-processed.
Forged, stale and unmatched callbacks are recorded (without an event key) and refused.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import jsonbody, queue
from orchestrator.api.context import db, services
from orchestrator.api.problems import BASE, problem
from orchestrator.callbacks import parse_target, token_matches
from orchestrator.db import upsert_insert
from orchestrator.log import bind
from orchestrator.models import Delivery, Job
from orchestrator.providers.errors import TransientProviderError
from orchestrator.providers.fal_signature import InvalidSignature, JwksCache
from orchestrator.providers.registry import PROVIDERS

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
KEPT_HEADERS = ("content-type", "user-agent", "x-fal-webhook-request-id", "x-fal-webhook-user-id",
                "x-fal-webhook-timestamp", "x-fal-webhook-signature")


@bp.post("/<provider>/<job_id>/<attempt>")
def receive(provider: str, job_id: str, attempt: str) -> Response | tuple[Response, int]:
    """Accept one provider callback."""
    if provider not in PROVIDERS:
        return problem(404, "Not found", f"no webhook endpoint for {provider!r}", BASE + "not-found")
    raw = request.get_data(cache=False)
    headers = {k: v for k, v in request.headers.items() if k.lower() in KEPT_HEADERS}
    target = parse_target(job_id, attempt)
    session = db()
    job = session.get(Job, target.job_id) if target else None
    if target is None or job is None:
        return _reject(provider, raw, headers, None, None, 404, "no such job")
    bind(job_id=job.id, batch_id=job.batch_id)
    if not token_matches(job.callback_token, request.args.get("token")):
        return _reject(provider, raw, headers, job.id, target.attempt, 401, "wrong token")
    if provider == "fal":
        rejection = _check_fal(headers, raw)
        if rejection is not None:
            return rejection if isinstance(rejection, Response) else _reject(
                provider, raw, headers, job.id, target.attempt, 401, rejection)
    return _store(provider, raw, headers, job.id, target.attempt, _event_key(provider, raw, headers))


def _check_fal(headers: dict[str, str], raw: bytes) -> str | Response | None:
    settings = services().settings
    try:
        jwks(settings.fal_jwks_url).verify(headers, raw)
    except InvalidSignature as exc:
        return f"bad signature: {exc}"
    except TransientProviderError:
        # We cannot check it right now; a 5xx makes fal deliver again later.
        return problem(503, "Verification unavailable", "signing keys could not be fetched", BASE + "unavailable")
    user = {k.lower(): v for k, v in headers.items()}.get("x-fal-webhook-user-id", "")
    if settings.fal_user_id and user != settings.fal_user_id:
        return "signed for another fal user"
    return None


@cache
def jwks(url: str) -> JwksCache:
    """One key cache per JWKS URL per process."""
    return JwksCache(url)


def _event_key(provider: str, raw: bytes, headers: dict[str, str]) -> str:
    """What identifies one provider event, so its retries are recorded once."""
    body = _json(raw)
    if provider == "fal":
        rid = {k.lower(): v for k, v in headers.items()}.get("x-fal-webhook-request-id")
        return f"fal:{(body or {}).get('request_id') or rid}"
    items: list[Any] = []
    if isinstance(body, dict):
        items = body.get("data") or body.get("errors") or ([body.get("error")] if body.get("error") else [body])
    parts = sorted(f"{i.get('taskUUID')}:{i.get('imageUUID') or 'error:' + str(i.get('code'))}"
                   for i in items if isinstance(i, dict))
    return "runware:" + ",".join(parts) if parts else "runware:sha256:" + hashlib.sha256(raw).hexdigest()


def _json(raw: bytes) -> Any:
    try:
        return jsonbody.loads(raw)
    except jsonbody.BodyProblem:
        return None  # hostile or malformed: the event key falls back to the body's digest


def _store(provider: str, raw: bytes, headers: dict[str, str], job_id: Any, attempt: int,
           key: str) -> Response | tuple[Response, int]:
    session = db()
    values = {"provider": provider, "event_key": key[:300], "job_id": job_id, "attempt": attempt, "verified": True,
              "headers": headers, "body": raw}
    try:
        new_id = session.execute(upsert_insert(session, Delivery).values(**values).on_conflict_do_nothing()
                                 .returning(Delivery.id)).scalar_one_or_none()
        if new_id is None:
            session.execute(sa.update(Delivery).where(Delivery.provider == provider, Delivery.event_key == key[:300])
                            .values(duplicates=Delivery.duplicates + 1))
        else:
            services().publisher.after_commit(session, queue.PROCESS_DELIVERY, str(new_id))
        session.commit()
    except SQLAlchemyError:
        log.exception("could not store webhook delivery")
        session.rollback()
        return problem(503, "Not stored", "the delivery could not be stored; retry", BASE + "unavailable")
    return jsonify({"status": "duplicate" if new_id is None else "accepted"}), 200


def _reject(provider: str, raw: bytes, headers: dict[str, str], job_id: Any, attempt: int | None, status: int,
            reason: str) -> tuple[Response, int]:
    session = db()
    # Callbacks with no valid job and token are unauthenticated: keep a digest and a short
    # prefix for the audit, not whatever body a stranger chose to send.
    authenticated = status == 401 and reason.startswith(("bad signature", "signed for"))
    body = raw[:65536] if authenticated else raw[:1024]
    headers = {**headers, "x-body-sha256": hashlib.sha256(raw).hexdigest(), "x-body-bytes": str(len(raw))}
    try:
        session.add(Delivery(provider=provider, job_id=job_id, attempt=attempt, verified=False, rejection=reason[:200],
                             headers=headers, body=body))
        session.commit()
    except SQLAlchemyError:
        session.rollback()
    current_app.logger.warning("webhook rejected", extra={"provider": provider, "reason": reason})
    title = "Unauthorized" if status == 401 else "Not found"
    return problem(status, title, reason, BASE + ("unauthorized" if status == 401 else "not-found")), status
