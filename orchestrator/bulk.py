"""Bulk inserts of a new batch's rows: COPY on Postgres, paged executemany INSERTs elsewhere (SQLite).

A 100,000-item batch spends most of its database time in INSERT round trips; COPY streams the
same rows in one statement. Both run on the session's own connection, inside its transaction,
so a batch stays all or nothing. Values go through the same SQLAlchemy bind processors (and
Python-side column defaults) as an INSERT would apply, so a row reads back the same either way.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

PAGE = 5000  # rows per executemany INSERT on the insert path
# A session with `session.info[INSERTS_ONLY]` set takes the insert path on Postgres too (the tests
# write one batch each way and compare the rows).
INSERTS_ONLY = "bulk_inserts_only"
_MISSING = object()


def insert_rows(session: Session, model: type[Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (dicts keyed by `model`'s attribute names) in the session's transaction."""
    if not rows:
        return
    conn = session.connection()
    if conn.dialect.name != "postgresql" or session.info.get(INSERTS_ONLY):
        for start in range(0, len(rows), PAGE):
            session.execute(sa.insert(model), rows[start:start + PAGE])
        return
    copy_rows(conn, model, rows)


def copy_rows(conn: sa.Connection, model: type[Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """COPY `rows` into `model`'s table over `conn`'s psycopg connection (same transaction).

    A database error is raised as SQLAlchemy's wrapper (IntegrityError, ...), as from an INSERT.
    """
    named, unnamed = _columns(conn.dialect, model, rows)
    values = _row_values(named, unnamed)
    table = sa.inspect(model).local_table
    columns = ", ".join(_quoted(conn, c.name) for c in named + unnamed)
    sql = f"COPY {_quoted(conn, table.name)} ({columns}) FROM STDIN"
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(values(row))
    except psycopg.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, psycopg.Error, dialect=conn.dialect) from exc


class _Column:
    """One COPY column: where its value comes from in a row, its default, its bind processor."""

    def __init__(self, key: str, column: sa.Column[Any], dialect: sa.Dialect) -> None:
        self.key, self.name = key, column.name
        self.process: Callable[[Any], Any] | None = column.type.dialect_impl(dialect).bind_processor(dialect)
        default = column.default
        self.default: Callable[[], Any] | None = None  # a missing key is SQL NULL, as an INSERT leaves it
        if default is None:
            pass
        elif default.is_scalar:
            value = default.arg  # type: ignore[attr-defined]
            self.default = lambda: value
        elif default.is_callable:
            make = default.arg  # type: ignore[attr-defined]  # SQLAlchemy wraps it to take a context
            self.default = lambda: make(None)
        else:
            raise TypeError(f"{column}: a SQL-side default cannot be copied")

    def value(self, row: Mapping[str, Any]) -> Any:
        value = row.get(self.key, _MISSING)
        if value is _MISSING:
            if self.default is None:
                return None
            value = self.default()
        # A present None is processed too: a JSON column stores it as JSON null, as an INSERT does.
        return value if self.process is None else self.process(value)


def _columns(dialect: sa.Dialect, model: type[Any],
             rows: Sequence[Mapping[str, Any]]) -> tuple[list[_Column], list[_Column]]:
    """The columns some row names, and those no row names that an INSERT fills from a Python-side default."""
    keys = {key for row in rows for key in row}
    named, unnamed = [], []
    for attr in sa.inspect(model).column_attrs:
        column = attr.columns[0]
        if attr.key in keys or column.default is not None:
            if column.server_default is not None:
                # A row without the key would get NULL here but the server default from an INSERT.
                raise TypeError(f"{column}: a server default cannot be copied faithfully")
            (named if attr.key in keys else unnamed).append(_Column(attr.key, column, dialect))
    unknown = keys - {c.key for c in named}
    if unknown:
        raise KeyError(f"{model.__name__} has no column for {sorted(unknown)}")
    return named, unnamed


def _row_values(named: list[_Column], unnamed: list[_Column]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """A row's values in COPY column order (named, then unnamed).

    The per-value method call of _Column.value is most of the Python cost of a large COPY; a row
    that has every named key (all rows but a catalog run's reused ones) takes one C itemgetter
    and the bind processors only.
    """
    keys = [c.key for c in named]
    get = operator.itemgetter(*keys) if len(keys) > 1 else lambda row: (row[keys[0]],)
    processed = [(i, c.process) for i, c in enumerate(named) if c.process is not None]

    def values(row: Mapping[str, Any]) -> list[Any]:
        try:
            out = list(get(row))
        except KeyError:  # a key some other row has: this row's default, or SQL NULL
            out = [c.value(row) for c in named]
        else:
            for i, process in processed:
                out[i] = process(out[i])
        out.extend(c.value(row) for c in unnamed)
        return out

    return values


def _quoted(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)
