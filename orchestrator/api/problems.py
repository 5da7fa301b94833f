"""Every error the API returns is an RFC 9457 problem document; nothing escapes as a 5xx page."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from orchestrator.errors import PROBLEM_TYPES, DomainError

log = logging.getLogger(__name__)


def problem(status: int, title: str, detail: str, type_: str = "about:blank", **extra: Any) -> Response:
    """A problem+json response."""
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    resp = jsonify(body)
    resp.status_code = status
    resp.mimetype = "application/problem+json"
    return resp


def install(app: Flask) -> None:
    """Register the handlers."""

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        return problem(exc.status, exc.title, exc.detail, exc.type, **exc.extra)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return problem(413, "Request body too large", exc.description or "", PROBLEM_TYPES + "body-too-large")
        return problem(status, exc.name, exc.description or "", PROBLEM_TYPES + exc.name.lower().replace(" ", "-"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Logged with its traceback for operators; the client sees a stable, secret-free problem.
        log.exception("unhandled error")
        return problem(500, "Internal error", "the server failed to handle this request", PROBLEM_TYPES + "internal")
