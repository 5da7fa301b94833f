"""Alembic environment: the URL comes from the orchestrator settings or the caller."""

from __future__ import annotations

from alembic import context

from orchestrator import models, schedule_models  # noqa: F401  (registers every table on the metadata)
from orchestrator.db import Base, make_engine
from orchestrator.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    """Emit SQL without a database connection."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against a live database, one transaction per migration run."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    is_pg = connection.dialect.name == "postgresql"
    if is_pg:
        # Fail fast instead of queueing behind a long transaction in production.
        connection.exec_driver_sql("SET lock_timeout = '10s'")
        # Two processes upgrading at once (api + worker start-up) take turns.
        connection.exec_driver_sql("SELECT pg_advisory_lock(7723001)")
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True,
                      render_as_batch=not is_pg)
    with context.begin_transaction():
        context.run_migrations()
    if is_pg:
        connection.exec_driver_sql("SELECT pg_advisory_unlock(7723001)")
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
