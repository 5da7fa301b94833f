"""Liveness and readiness."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from orchestrator import metrics
from orchestrator.api.context import services
from orchestrator.db import as_utc, utcnow
from orchestrator.models import Heartbeat

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """The database and the broker answer."""
    checks = {"database": _database(), "broker": _broker(), "worker": _worker()}
    ok = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ok else "unavailable", "checks": checks}), 200 if ok else 503


def _database() -> str:
    try:
        with services().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _worker() -> str:
    """A worker consumed a sweep message recently: proof of consumption, not just a live PID."""
    settings = services().settings
    try:
        with services().engine.connect() as conn:
            seen = conn.execute(sa.select(Heartbeat.seen_at).where(Heartbeat.name == "maintenance")).scalar()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    if seen is None:
        return "error: no worker has consumed a message yet"
    age = (utcnow() - as_utc(seen)).total_seconds()
    limit = 3 * settings.sweep_interval_seconds + 10
    return "ok" if age <= limit else f"error: last consumed {age:.0f}s ago"


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    """Prometheus text exposition."""
    with services().sessions() as session:
        body = metrics.render(session, services().settings)
    return Response(body, mimetype="text/plain; version=0.0.4")


def _broker() -> str:
    url = services().settings.resolved_broker_url
    if url.startswith("filesystem://"):
        return "ok"
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
