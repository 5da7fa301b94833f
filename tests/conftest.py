"""Shared fixtures: a real Postgres database built by the migrations, Redis, the Flask app.

One database per test run, created from scratch and migrated with `alembic upgrade head`
(so every run exercises the migrations); every test that uses it starts with empty tables.

Isolation, two ways:
- By default a test's sessions (and the Flask app's, for the test client) share one connection
  whose outer transaction is rolled back after the test; each `commit()` only releases a
  savepoint (SQLAlchemy's "join an external transaction" recipe). Nothing is ever committed,
  so nothing needs deleting.
- Tests marked `committed` get real commits and every table is truncated afterwards. A test
  needs it when anything but its own sessions in its own thread touches the data: worker or API
  processes, threads (they cannot share one connection), code that opens its own engine
  (`workers.context.Context(settings)`, the CLI, a second app, the readiness check). Tests using
  a fixture in NEED_COMMITS are marked automatically. An unmarked test that commits through
  another connection fails (see `_assert_nothing_committed`).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import auth
from orchestrator.db import Base, make_engine, make_session_factory, session_scope
from orchestrator.scratch_db import scratch_database
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


COMMITTED = "committed"
# Fixtures whose tests are marked `committed` automatically, and why.
NEED_COMMITS = {
    "make_stack": "worker and API processes read what the test wrote",
    "api_url": "the app answers on server threads, which cannot share the test's connection",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if NEED_COMMITS.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(COMMITTED)


def is_committed(request: pytest.FixtureRequest) -> bool:
    """Whether the requesting test runs with real commits (marked `committed`)."""
    return request.node.get_closest_marker(COMMITTED) is not None


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for this run, migrated to head, its tables empty."""
    with scratch_database(PG_ADMIN_URL, "orch_test", migrate=True) as url:
        eng = make_engine(url)
        _truncate(eng)  # the migrations seed rows; every test starts from empty tables
        eng.dispose()
        yield url


@pytest.fixture(scope="session")
def engine(pg_url: str) -> Iterator[Engine]:
    """An engine on the test database."""
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(request: pytest.FixtureRequest, engine: Engine) -> Iterator[sessionmaker[Session]]:
    """A session factory on the test database: rolled back after the test, or (marked `committed`)
    committing for real, every table emptied after the test."""
    if is_committed(request):
        yield make_session_factory(engine)
        _truncate(engine)
        return
    with engine.connect() as conn:
        _only_from_this_thread(conn)
        outer = conn.begin()
        # Same options as make_session_factory; a commit releases a savepoint of `outer`.
        yield sessionmaker(bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint")
        outer.rollback()
    _assert_nothing_committed(engine)


def _only_from_this_thread(conn: Connection) -> None:
    """Fail a statement sent on the shared connection from another thread (it would interleave
    with the test's own savepoints); such a test must be marked `committed`."""
    owner = threading.get_ident()

    def check(*_args: Any) -> None:
        if threading.get_ident() != owner:
            raise RuntimeError(f"the rolled-back test connection used from another thread: mark the test "
                               f"@pytest.mark.{COMMITTED}")

    event.listen(conn, "before_cursor_execute", check)


def _truncate(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"TRUNCATE {tables} CASCADE")
            return
        except OperationalError as exc:
            # A module-scoped stack's workers keep claiming between tests, and Postgres now and then
            # picks the TRUNCATE as the deadlock victim; it is all or nothing, so trying again is safe.
            if not isinstance(exc.orig, psycopg.errors.DeadlockDetected) or attempt == 2:
                raise


def _assert_nothing_committed(engine: Engine) -> None:
    """After a rolled-back test every table is still empty; if not, the test wrote through a
    connection of its own and must be marked `committed` (the rows are removed either way)."""
    probe = " UNION ALL ".join(f"(SELECT '{t.name}' FROM \"{t.name}\" LIMIT 1)" for t in Base.metadata.sorted_tables)
    with engine.connect() as conn:
        left = conn.exec_driver_sql(probe).scalars().all()
    if left:
        _truncate(engine)
        raise AssertionError(f"rows committed outside the test's rolled-back transaction (in {', '.join(left)}): "
                             f"mark the test @pytest.mark.{COMMITTED}")


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
def app(request: pytest.FixtureRequest, settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Flask]:
    """The API app on the test database; its requests use the test's sessions unless `committed`."""
    from orchestrator.api import create_app

    application = create_app(settings)
    svc = application.extensions["orchestrator"]
    if not is_committed(request):
        svc.sessions = sessions
        svc.publisher.watch(sessions)
    yield application
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
