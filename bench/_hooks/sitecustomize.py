"""Benchmark-only hook: count this process's SQL round trips at the driver (psycopg 3).

Loaded by the orchestrator processes the benchmarks start (bench/_hooks is put first on their
PYTHONPATH when BENCH_SQLSTATS_DIR is set); never part of the product. Postgres here has no
pg_stat_statements preloaded (and is shared), so statements are counted on the client side:
every execute (pool pings included), the BEGIN psycopg sends implicitly before the first
statement of a transaction, and every COMMIT / ROLLBACK. A daemon thread writes the totals to
BENCH_SQLSTATS_DIR/<pid>.json every 0.2 s, so a reader can diff them while the process runs.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("BENCH_SQLSTATS_DIR")


def _install(folder: str) -> None:
    import json
    import threading
    import time

    import psycopg
    from psycopg import pq

    counts = {"execute": 0, "begin": 0, "commit": 0, "rollback": 0, "connect": 0}
    locks = [threading.Lock()]
    # BENCH_SQLSTATS_DETAIL=1: also count each statement's shape (its first 120 characters,
    # numbers and quoted literals blanked), written to <pid>.shapes.json
    # (bench/_common.run_batch prints the commonest).
    detail: dict[str, int] | None = {} if os.environ.get("BENCH_SQLSTATS_DETAIL") else None

    def shape(query: object, n: int = 1) -> None:
        if detail is None:
            return
        import re
        text = query.decode() if isinstance(query, bytes) else str(query)
        text = re.sub(r"'[^']*'|\b\d+\b", "?", " ".join(text.split()))
        key = re.sub(r"^SELECT .*? FROM", "SELECT … FROM", text)[:200]
        with locks[0]:
            detail[key] = detail.get(key, 0) + n

    def bump(key: str, n: int = 1) -> None:
        with locks[0]:
            counts[key] += n

    def opens_transaction(cur: psycopg.Cursor) -> bool:  # type: ignore[type-arg]
        conn = cur.connection
        return not conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE

    execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def counted_execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if opens_transaction(self):
            bump("begin")
        bump("execute")
        shape(args[0] if args else kwargs.get("query", ""))
        return execute(self, *args, **kwargs)

    def counted_executemany(self, query, params_seq, *args, **kwargs):  # type: ignore[no-untyped-def]
        params_seq = list(params_seq)
        if opens_transaction(self):
            bump("begin")
        bump("execute", max(1, len(params_seq)))
        shape(query, max(1, len(params_seq)))
        return executemany(self, query, params_seq, *args, **kwargs)

    commit, rollback, connect = psycopg.Connection.commit, psycopg.Connection.rollback, psycopg.Connection.connect

    def counted_commit(self):  # type: ignore[no-untyped-def]
        if self.info.transaction_status != pq.TransactionStatus.IDLE:
            bump("commit")
        return commit(self)

    def counted_rollback(self):  # type: ignore[no-untyped-def]
        if self.info.transaction_status != pq.TransactionStatus.IDLE:
            bump("rollback")
        return rollback(self)

    def counted_connect(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        bump("connect")
        return connect.__func__(cls, *args, **kwargs)

    psycopg.Cursor.execute = counted_execute  # type: ignore[method-assign]
    psycopg.Cursor.executemany = counted_executemany  # type: ignore[method-assign]
    psycopg.Connection.commit = counted_commit  # type: ignore[method-assign]
    psycopg.Connection.rollback = counted_rollback  # type: ignore[method-assign]
    psycopg.Connection.connect = classmethod(counted_connect)  # type: ignore[method-assign,assignment]
    psycopg.connect = psycopg.Connection.connect  # SQLAlchemy calls the module-level alias

    def flush() -> None:
        while True:
            pid = os.getpid()  # after a fork the child writes its own file
            with locks[0]:
                snapshot = dict(counts)
            path = os.path.join(folder, f"{pid}.json")
            tmp = path + ".tmp"
            with open(tmp, "w") as out:
                json.dump(snapshot, out)
            os.replace(tmp, path)
            if detail is not None:
                with locks[0]:
                    shapes = dict(detail)
                with open(tmp, "w") as out:
                    json.dump(shapes, out)
                os.replace(tmp, os.path.join(folder, f"{pid}.shapes.json"))
            time.sleep(0.2)

    threading.Thread(target=flush, name="bench-sqlstats", daemon=True).start()
    def after_fork() -> None:
        locks[0] = threading.Lock()  # the parent's flusher may have held the old one at the fork
        counts.update({k: 0 for k in counts})
        if detail is not None:
            detail.clear()
        threading.Thread(target=flush, name="bench-sqlstats", daemon=True).start()

    os.register_at_fork(after_in_child=after_fork)


if os.environ.get("BENCH_TRACEMALLOC_DIR"):  # bench/memory.py --tracemalloc
    import bench_tracemalloc

    bench_tracemalloc.install(os.environ["BENCH_TRACEMALLOC_DIR"])

if _DIR:
    try:
        _install(_DIR)
    except ImportError:  # a process without psycopg has nothing to count
        pass


def _profile(folder: str) -> None:
    """BENCH_YAPPI_DIR=<dir>: CPU-profile every thread of this process (yappi), saved at exit."""
    import atexit

    import yappi  # type: ignore[import-not-found]

    def start() -> None:
        yappi.clear_stats()
        yappi.set_clock_type("cpu")
        yappi.start(builtins=False, profile_threads=True)

    def save() -> None:
        yappi.stop()
        yappi.get_func_stats().save(os.path.join(folder, f"{os.getpid()}.pstat"), type="pstat")

    start()
    atexit.register(save)
    os.register_at_fork(after_in_child=start)


if os.environ.get("BENCH_YAPPI_DIR"):
    _profile(os.environ["BENCH_YAPPI_DIR"])
