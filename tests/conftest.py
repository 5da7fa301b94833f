"""Shared fixtures: a real Postgres database built by the migrations, Redis, the Flask app.

One database per test run, created from scratch and migrated with `alembic upgrade head`
(so every run exercises the migrations); tables are truncated after each test that used it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import auth
from orchestrator.db import Base, make_engine, make_session_factory, session_scope
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from tests.stack import Stack

PG_ADMIN_URL = os.environ.get("ORCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_REDIS_BASE = re.sub(r"/\d+$", "", os.environ.get("ORCH_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/"))
# Each test run takes a Redis database of its own, so two runs on one machine never consume
# each other's task messages (workers would look the ids up in the wrong database).
REDIS_DB = 2 + os.getpid() % 13
REDIS_URL = f"{_REDIS_BASE}/{REDIS_DB}"
SPARE_REDIS_URL = f"{_REDIS_BASE}/{15 if REDIS_DB != 15 else 1}"


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """An empty Postgres database, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for this run, migrated to head."""
    from orchestrator.migrate import upgrade

    with scratch_database("orch_test") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def engine(pg_url: str) -> Iterator[Engine]:
    """An engine on the test database."""
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """A session factory; every table is emptied after the test."""
    yield make_session_factory(engine)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {tables} CASCADE")


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One session, closed after the test."""
    s = sessions()
    yield s
    s.rollback()
    s.close()


@pytest.fixture
def settings(pg_url: str, tmp_path: Path) -> Settings:
    """Settings for a test: real Postgres and Redis, a private data dir."""
    return Settings(
        database_url=pg_url, broker_url=REDIS_URL, data_dir=tmp_path / "data",
        storage_url=(tmp_path / "storage").as_uri(), secret_key="test-secret-key-0123456789",
        public_url="http://127.0.0.1:9", max_items_per_batch=100_000,
    )


@pytest.fixture
def app(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Flask]:
    """The API app on the test database."""
    from orchestrator.api import create_app

    application = create_app(settings)
    yield application
    svc = application.extensions["orchestrator"]
    svc.publisher.close()
    svc.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A Flask test client."""
    return app.test_client()


def make_key(sessions: sessionmaker[Session], tenant: str, role: str = "client") -> str:
    """Create an API key and return its bearer header."""
    with session_scope(sessions) as s:
        _, token = auth.create_key(s, tenant, role=role)
    return token


@pytest.fixture
def headers(sessions: sessionmaker[Session]) -> dict[str, str]:
    """Authorization headers for tenant 'acme'."""
    return {"Authorization": f"Bearer {make_key(sessions, 'acme')}"}


StackFactory = Callable[..., "Stack"]


@pytest.fixture
def make_stack(pg_url: str, tmp_path: Path, sessions: sessionmaker[Session]) -> Iterator[StackFactory]:
    """Start whole systems (sandboxes + API; the test starts workers), all stopped afterwards."""
    from tests.stack import start_stack

    started: list[Stack] = []

    def factory(**kw: Any) -> Stack:
        stack = start_stack(pg_url, REDIS_URL, tmp_path, **kw)
        started.append(stack)
        return stack

    yield factory
    for stack in started:
        stack.stop()
