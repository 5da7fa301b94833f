"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from orchestrator.api.context import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """The database and the broker answer."""
    checks = {"database": _database(), "broker": _broker()}
    ok = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ok else "unavailable", "checks": checks}), 200 if ok else 503


def _database() -> str:
    try:
        with services().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


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
