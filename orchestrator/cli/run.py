"""Process commands: worker and beat (the only place `orchestrator` imports `workers`)."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click

from orchestrator.cli.admin import _settings
from orchestrator.settings import Settings

ALL_QUEUES = "dispatch,webhooks,storage,maintenance"


@click.command("worker")
@click.option("--queues", default=ALL_QUEUES, show_default=True, help="comma-separated queues to consume")
@click.option("--concurrency", type=int, default=None, help="parallel tasks (default ORCH_WORKER_CONCURRENCY)")
@click.option("--pool", type=click.Choice(["threads", "prefork", "solo"]), default="threads", show_default=True,
              help="threads suit the I/O-bound tasks; prefork bounds memory per child")
@click.option("--name", default="worker", show_default=True)
@click.option("--beat", "embed_beat", is_flag=True, help="also run the scheduler in this process (single-host use)")
def worker(queues: str, concurrency: int | None, pool: str, name: str, embed_beat: bool) -> None:
    """Run a Celery worker (scale out by starting more, on any machine)."""
    from workers.celery_app import make_celery

    settings = _settings()
    app = make_celery(settings)
    threads = concurrency or settings.worker_concurrency
    app.conf.worker_concurrency = threads  # the task context sizes its connection pool from it
    argv = ["worker", f"--queues={queues}", f"--concurrency={threads}",
            f"--pool={pool}", f"--hostname={name}@%h", "--loglevel=INFO", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]
    if embed_beat:
        schedule = settings.data_dir.resolve() / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={schedule}"]
    app.worker_main(argv)


@click.command("beat")
def beat() -> None:
    """Run the scheduler; a second beat waits on a lock instead of doubling every sweep."""
    from workers.celery_app import make_celery

    settings = _settings()
    with single_beat(settings):
        app = make_celery(settings)
        schedule = settings.data_dir.resolve() / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        app.start(["beat", f"--schedule={schedule}", "--loglevel=INFO"])


@contextmanager
def single_beat(settings: Settings) -> Iterator[None]:
    """Hold a cluster-wide lock while running: a Postgres advisory lock, or a file lock embedded."""
    if settings.is_embedded:
        path = settings.data_dir / "beat.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        return
    from orchestrator.db import make_engine

    engine = make_engine(settings.resolved_database_url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:
        while not conn.exec_driver_sql("SELECT pg_try_advisory_lock(7723002)").scalar():
            click.echo("another beat holds the lock; waiting", err=True)
            time.sleep(10)
        yield
    engine.dispose()


def register(main: click.Group) -> None:
    """Attach the process commands."""
    main.add_command(worker)
    main.add_command(beat)
