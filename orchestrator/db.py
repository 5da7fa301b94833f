"""Engine, sessions and the declarative base shared by every model."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

# Stable constraint names make Alembic autogenerate and downgrades deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on Postgres, JSON text on SQLite: one model definition for both.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the domain uses."""
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    """A fresh random primary key."""
    return uuid.uuid4()


def as_utc(value: datetime) -> datetime:
    """The same instant in UTC; a naive value is taken to be UTC already (every stored time is)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """The one wire format for a time: RFC 3339 in UTC with its offset, microseconds always shown."""
    return as_utc(value).isoformat(timespec="microseconds") if value is not None else None


# SQLite has no zone-aware type: store the UTC offset in the text (so the file says what it means) and
# read values written before the suffix existed too. All values are UTC, so text order is time order.
_SQLITE_UTC = sqlite.DATETIME(
    storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d+00:00",
    regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)(?:\.(\d+))?")


class Timestamp(sa.types.TypeDecorator[datetime]):
    """`timestamp with time zone` on Postgres, UTC text on SQLite; always an aware UTC datetime in Python."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(_SQLITE_UTC if dialect.name == "sqlite" else sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return as_utc(value) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return as_utc(value) if value is not None else None


def upsert_insert(session: Session, table: Any) -> Any:
    """An INSERT that supports ON CONFLICT on both backends (Postgres and SQLite)."""
    return dialect_insert(session.get_bind().dialect.name, table)


def dialect_insert(dialect_name: str, table: Any) -> Any:
    """upsert_insert for a dialect name (for a statement built once and reused)."""
    return (postgresql if dialect_name == "postgresql" else sqlite).insert(table)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so
        # SELECT-then-UPDATE sequences are serialised like on Postgres.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    # No ping on every checkout (a round trip per unit of work): connections are recycled
    # after half an hour, one idle for a while is pinged before use, and a connection that
    # fails mid-use invalidates the pool, so the next unit of work reconnects.
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_recycle", 1800)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    engine = sa.create_engine(url, **kwargs)
    event.listen(engine, "checkin", _mark_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


IDLE_PING_SECONDS = 10.0


def _mark_checkin(_dbapi_conn: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that sat idle (the server may have restarted); a dead one is replaced."""
    since = record.info.get("checked_in_at")
    if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_conn.rollback()
    except Exception as exc:
        # The pool retries the checkout with a fresh connection.
        raise sa.exc.DisconnectionError(f"idle connection is dead: {type(exc).__name__}") from exc


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    # Postgres's gen_random_uuid(), so one claim statement serves both backends.
    dbapi_conn.create_function("gen_random_uuid", 0, lambda: str(uuid.uuid4()))
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory that does not expire objects on commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
