"""Throwaway Postgres databases for the test suite and the benchmarks (one implementation for both).

Lives in the package because bench/ must not import tests/; nothing in the running service uses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from orchestrator.migrate import upgrade


@contextmanager
def scratch_database(admin_url: str, prefix: str, *, migrate: bool = False) -> Iterator[str]:
    """A new, uniquely named database on the server of `admin_url` (empty, or migrated to head if
    `migrate`); yields its URL and drops it afterwards, even if the block fails."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        url = admin_url.rsplit("/", 1)[0] + f"/{name}"
        if migrate:
            upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
