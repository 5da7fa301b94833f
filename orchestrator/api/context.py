"""Per-app services and the per-request database session."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import make_engine, make_session_factory
from orchestrator.queue import Publisher
from orchestrator.settings import Settings
from orchestrator.storage.base import Storage
from orchestrator.storage.factory import storage_from_url


@dataclass
class Services:
    """Everything a request may need, built once per app."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    publisher: Publisher
    storage: Storage

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Create the engine, session factory, broker publisher and storage for `settings`."""
        engine = make_engine(settings.resolved_database_url)
        sessions, publisher = make_session_factory(engine), Publisher(settings)
        publisher.watch(sessions)  # transitions made by requests (cancel, retry) announce themselves
        return cls(settings, engine, sessions, publisher, make_storage(settings))


def make_storage(settings: Settings) -> Storage:
    """The storage backend the settings name (local directory by default)."""
    return storage_from_url(settings.resolved_storage_url, s3_endpoint_url=settings.s3_endpoint_url,
                            secret_key=settings.resolved_secret_key(), public_url=settings.public_url)


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
