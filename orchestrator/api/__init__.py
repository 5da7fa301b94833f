"""The Flask application factory."""

from __future__ import annotations

import uuid

from flask import Flask, Response, g, request

from orchestrator import dashboard
from orchestrator.api import auth as _auth  # noqa: F401  (problem types)
from orchestrator.api import context, health, picks, problems, results, schedules, v1, webhooks
from orchestrator.api.local_storage import make_storage_blueprint
from orchestrator.log import reset
from orchestrator.services import Services
from orchestrator.settings import Settings, get_settings
from orchestrator.storage.local import LocalStorage


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the API app: intake, webhooks, storage, health."""
    settings = settings or get_settings()
    app = Flask("orchestrator")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    svc = services or context.build_services(settings)
    context.install(app, svc)
    problems.install(app)
    app.register_blueprint(v1.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(results.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(picks.bp)
    dashboard.install(app, settings)
    if isinstance(svc.storage, LocalStorage):
        # The embedded default serves its own signed, expiring storage URLs.
        app.register_blueprint(make_storage_blueprint(svc.storage))

    @app.before_request
    def _request_id() -> None:
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
        reset(request_id=g.request_id)

    @app.after_request
    def _echo_request_id(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        return resp

    return app
