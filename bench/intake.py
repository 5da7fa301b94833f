"""Intake benchmark: a large batch through the API on Postgres vs a raw bulk insert of the same rows.

    python bench/intake.py [--items 100000] [--repeat 3] [--profile]

Creates a throwaway database next to ORCH_TEST_PG_URL (default: the local postgres database),
migrates it, and drops it at the end. Every method starts from empty tables, so each one pays the
same index maintenance. Methods:

- api:          POST /v1/batches through a real HTTP server, from request start to the 201.
- copy:         one batch row plus the same job rows with psycopg COPY (the floor).
- executemany:  the same rows with psycopg's cursor.executemany (pipelined INSERTs).
- insert_jobs:  the same rows through the app's own write path (batches.insert_jobs: COPY on
                Postgres, via orchestrator.bulk), no HTTP, no validation: the difference to `api`
                is what validation, pricing and HTTP cost.

Then, once, the API path split into phases in-process, and with --profile a cProfile of the API
request (run separately, so the profiler's overhead does not distort the timings).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import _common as common  # bench/ is on sys.path when run as `python bench/intake.py`
import httpx
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from pydantic import SecretStr
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from orchestrator import auth, batches, intake
from orchestrator.api import create_app
from orchestrator.db import make_engine, make_session_factory, new_id, session_scope, utcnow
from orchestrator.models import Batch, BatchState, Job
from orchestrator.netutil import free_port
from orchestrator.settings import Settings

TENANT = "bench"
# Column order for the raw methods: every key batches.job_rows produces, then the columns the
# app's INSERT fills from the model's Python-side defaults (provider_meta), so the rows are equal.
JOB_COLUMNS = ("id", "batch_id", "tenant", "position", "custom_id", "lane", "requested_model", "provider",
               "model", "params", "num_images", "state", "attempt", "retries", "next_attempt_at",
               "created_at", "updated_at", "provider_meta")
Row = tuple[Any, ...]


# --- the database --------------------------------------------------------------------------

def empty_tables(engine: Engine) -> None:
    """Start each measurement from empty tables (keys stay), then let autovacuum catch up."""
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE batches, jobs CASCADE")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE jobs")


# --- the request ---------------------------------------------------------------------------

def make_body(items: int) -> bytes:
    """A catalog-style batch of explicit items: distinct ids, prompts and seeds, one alias model."""
    rows = [{"custom_id": f"sku-{i:06d}", "model": "flux-schnell", "seed": i,
             "prompt": f"studio photo of product {i}, white background, soft light"} for i in range(items)]
    return json.dumps({"name": "bench", "lane": "bulk", "items": rows}).encode()


def bench_settings(url: str, redis_url: str, data_dir: Path, items: int, body_bytes: int) -> Settings:
    """Settings for the API under test: the scratch database, a local Redis, a private data dir."""
    return Settings(database_url=url, broker_url=redis_url, data_dir=data_dir, secret_key=SecretStr("bench"),
                    max_items_per_batch=max(items, 100_000), max_body_bytes=max(2 * body_bytes, 64 << 20))


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve `app` over real HTTP on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="bench-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def post_batch(base_url: str, token: str, body: bytes) -> float:
    """Seconds from request start to the 201."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    start = time.perf_counter()
    resp = httpx.post(f"{base_url}/v1/batches", content=body, headers=headers, timeout=600)
    elapsed = time.perf_counter() - start
    if resp.status_code != 201:
        raise SystemExit(f"POST /v1/batches answered {resp.status_code}: {resp.text[:500]}")
    return elapsed


# --- the baselines -------------------------------------------------------------------------

def new_batch(plan: intake.Plan, now: datetime) -> Batch:
    """A transient batch shaped like the one batches.create_batch writes."""
    return Batch(id=new_id(), tenant=TENANT, name=plan.request.name, lane=plan.request.lane,
                 metadata_=plan.request.metadata, total=len(plan.jobs), count_queued=len(plan.jobs),
                 state=BatchState.queued, created_at=now)


def insert_batch_row(conn: Connection, batch: Batch) -> None:
    """The one batch row; columns left unset get the model's defaults, as through the ORM."""
    values = {c.key: getattr(batch, c.key) for c in sa.inspect(Batch).column_attrs}
    conn.execute(sa.insert(Batch).values({k: v for k, v in values.items() if v is not None}))


def raw_rows(plan: intake.Plan, batch: Batch, now: datetime) -> list[Row]:
    """The app's job rows as tuples in JOB_COLUMNS order, adapted for psycopg."""
    out = []
    for row in batches.job_rows(batch, plan, now):
        row.setdefault("provider_meta", {})  # Job.provider_meta's default=dict
        row["params"] = Jsonb(row["params"])
        row["provider_meta"] = Jsonb(row["provider_meta"])
        row["state"] = row["state"].value  # stored as the enum's value (non-native enum)
        out.append(tuple(row[c] for c in JOB_COLUMNS))
    return out


def timed_insert(engine: Engine, plan: intake.Plan, write: Callable[[Connection, Batch, datetime], None]) -> float:
    """Seconds for one transaction: the batch row, the job rows via `write`, the commit."""
    now = utcnow()
    batch = new_batch(plan, now)
    start = time.perf_counter()
    with engine.begin() as conn:
        insert_batch_row(conn, batch)
        write(conn, batch, now)
    return time.perf_counter() - start


def write_copy(plan: intake.Plan) -> Callable[[Connection, Batch, datetime], None]:
    def write(conn: Connection, batch: Batch, now: datetime) -> None:
        rows = raw_rows(plan, batch, now)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY jobs ({', '.join(JOB_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return write


def write_executemany(plan: intake.Plan) -> Callable[[Connection, Batch, datetime], None]:
    def write(conn: Connection, batch: Batch, now: datetime) -> None:
        rows = raw_rows(plan, batch, now)
        sql = f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join(['%s'] * len(JOB_COLUMNS))})"
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.executemany(sql, rows)
    return write


def write_insert_jobs(plan: intake.Plan) -> Callable[[Connection, Batch, datetime], None]:
    def write(conn: Connection, batch: Batch, now: datetime) -> None:
        session = Session(bind=conn)  # joins the transaction timed_insert opened
        batches.insert_jobs(session, batch, plan, now)
    return write


# --- measuring and reporting ---------------------------------------------------------------

def measure(methods: dict[str, Callable[[], float]], repeat: int, engine: Engine) -> dict[str, list[float]]:
    """Each method once per round, `repeat` rounds, each run from empty tables; the seconds of each run.

    Round-robin rather than one method's runs in a row, so a load that comes and goes on a
    shared machine falls on every method alike.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, once in methods.items():
            empty_tables(engine)
            times[name].append(once())
            print(f"  {name:<12} {times[name][-1]:8.3f} s", file=sys.stderr)
    return times


def print_table(results: dict[str, list[float]], items: int) -> None:
    """Method, best and median seconds, rows/s, and the ratios of the medians against COPY and executemany."""
    best = {name: min(times) for name, times in results.items()}
    median = {name: statistics.median(times) for name, times in results.items()}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{items:,} items, {len(next(iter(results.values())))} runs each; rows/s and ratios from the medians"
          f" (load average now {load})")
    print(f"{'method':<12} {'best s':>8} {'median s':>9} {'rows/s':>10} {'vs COPY':>8} {'vs execmany':>11}")
    for name in results:
        print(f"{name:<12} {best[name]:8.3f} {median[name]:9.3f} {items / median[name]:10,.0f} "
              f"{median[name] / median['copy']:7.2f}x {median[name] / median['executemany']:10.2f}x")


def phases(engine: Engine, body: bytes, max_items: int) -> list[tuple[str, float]]:
    """The API's work split into its steps, run in-process (no HTTP, no auth)."""
    empty_tables(engine)
    out: list[tuple[str, float]] = []

    def step(label: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        out.append((label, time.perf_counter() - start))
        return result

    request = step("parse_json (JSON + pydantic)", lambda: intake.parse_json(body, max_items))
    plan = step("plan (catalog checks)", lambda: intake.plan(request, max_items))
    step("job_rows (build dicts)", lambda: batches.job_rows(new_batch(plan, utcnow()), plan, utcnow()))
    def create_and_commit() -> None:
        with session_scope(make_session_factory(engine)) as session:
            batches.create_batch(session, TENANT, plan, idempotency_key=None, request_hash=None)

    step("create_batch + commit", create_and_commit)
    return out


def print_phases(rows: Iterable[tuple[str, float]]) -> None:
    """The phase table."""
    print("\nAPI path by phase (in-process, one run; create_batch includes building the rows)")
    for label, seconds in rows:
        print(f"  {label:<32} {seconds:8.3f} s")


class Profiled:
    """WSGI middleware profiling each request in the thread that serves it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.profile = cProfile.Profile()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.profile.enable()
        try:
            return list(self.app(environ, start_response))
        finally:
            self.profile.disable()

    def report(self, top: int) -> str:
        """The top functions by own time and by cumulative time."""
        buf = io.StringIO()
        stats = pstats.Stats(self.profile, stream=buf).strip_dirs()
        for key in ("tottime", "cumulative"):
            buf.write(f"\n--- top {top} by {key}\n")
            stats.sort_stats(key).print_stats(top)
        return buf.getvalue()


# --- main ----------------------------------------------------------------------------------

def check_columns() -> None:
    """Fail early if the jobs table gained a column the raw methods would leave NULL."""
    needed = {c.name for c in Job.__table__.columns if not c.nullable and c.server_default is None}
    missing = needed - set(JOB_COLUMNS)
    if missing:
        raise SystemExit(f"bench/intake.py: JOB_COLUMNS lacks {sorted(missing)}")


def run(items: int, repeat: int, profile: bool, redis_url: str) -> None:
    """Everything, against one scratch database."""
    check_columns()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
    body = make_body(items)
    with common.scratch_database() as url, tempfile.TemporaryDirectory() as tmp:
        common.flush_redis(redis_url)  # the API's dispatch nudges land here; nothing consumes them
        settings = bench_settings(url, redis_url, Path(tmp), items, len(body))
        # Plan once outside any timing: the baselines insert exactly the rows the API would.
        plan = intake.plan(intake.parse_json(body, settings.max_items_per_batch), settings.max_items_per_batch)
        engine = make_engine(url)
        with session_scope(make_session_factory(engine)) as session:
            _, token = auth.create_key(session, TENANT)
        app = create_app(settings)
        print(f"body {len(body) / 1e6:.1f} MB, {items:,} items", file=sys.stderr)
        with serve(app) as base_url:
            results = measure({
                "api": lambda: post_batch(base_url, token, body),
                "copy": lambda: timed_insert(engine, plan, write_copy(plan)),
                "executemany": lambda: timed_insert(engine, plan, write_executemany(plan)),
                "insert_jobs": lambda: timed_insert(engine, plan, write_insert_jobs(plan)),
            }, repeat, engine)
        print_table(results, items)
        print_phases(phases(engine, body, settings.max_items_per_batch))
        if profile:
            profiled = Profiled(app)
            empty_tables(engine)
            with serve(profiled) as base_url:
                post_batch(base_url, token, body)
            print(profiled.report(30))
        engine.dispose()
        app.extensions["orchestrator"].engine.dispose()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=100_000, help="items in the batch (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the median is compared")
    parser.add_argument("--profile", action="store_true", help="also cProfile one API request")
    parser.add_argument("--redis-url", default=common.REDIS_URL,
                        help="the broker the API publishes to; flushed (default ORCH_BENCH_REDIS_URL or db 12)")
    args = parser.parse_args(argv)
    run(args.items, args.repeat, args.profile, args.redis_url)


if __name__ == "__main__":
    main()
