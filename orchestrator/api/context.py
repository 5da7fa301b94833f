"""The app's services (orchestrator.services) and the per-request database session."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from orchestrator.services import Services
from orchestrator.settings import Settings


def build_services(settings: Settings) -> Services:
    """The services of an API process, built once per app."""
    svc = Services(settings)
    svc.publisher.watch(svc.sessions)  # transitions made by requests (cancel, retry) announce themselves
    return svc


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["orchestrator"]


def db() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = services().sessions()
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    """Roll back anything uncommitted and close the request's session."""
    session = g.pop("db", None)
    if session is not None:
        session.rollback()
        session.close()


def install(app: Flask, svc: Services) -> None:
    """Attach services to the app."""
    app.extensions["orchestrator"] = svc
    app.teardown_appcontext(close_db)
