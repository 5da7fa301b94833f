"""The operator dashboard under /admin/: server-rendered pages, small polled fragments, no inline script.

Sign-in takes an admin API key and keeps only its id in a signed session cookie (HttpOnly,
SameSite=Lax, Secure over HTTPS, path /admin so the API never sees it). Every POST carries a
CSRF token; every response carries a strict Content-Security-Policy. Pages read through the
same domain functions as /v1 and change state only through the state and domain modules.
"""

from __future__ import annotations

from flask import Flask

from orchestrator.dashboard import security
from orchestrator.dashboard.blueprint import bp
from orchestrator.settings import Settings


def install(app: Flask, settings: Settings) -> None:
    """Register the dashboard on the API app."""
    from orchestrator.dashboard import tiles, views_batch, views_batches, views_jobs, views_ops  # noqa: F401  (routes)

    security.configure(app, settings)
    app.register_blueprint(bp)
