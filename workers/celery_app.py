"""The Celery application, configured from the one settings object.

Messages are JSON only and carry ids. Each workload has its own queue so a slow storage
backlog never parks provider submissions. Tasks ack late and are rejected (re-queued) if their
worker dies; every task is safe to run twice because state lives in the database.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from kombu import Queue

from orchestrator.queue import QUEUES, SWEEP, broker_options
from orchestrator.settings import Settings

# The modules that define tasks. None imports another: what they share lives in context,
# admission, retry and reconcile. (A task's broker name is in orchestrator.queue, not its module's.)
TASK_MODULES = ["workers.dispatch", "workers.deliveries", "workers.store", "workers.notify", "workers.maintenance"]
QUEUE_NAMES = tuple(dict.fromkeys(QUEUES.values()))  # dispatch, webhooks, storage, maintenance
TASK_OPTS = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}


def make_celery(settings: Settings) -> Celery:
    """Build the app; importing this module does no work."""
    app = Celery("orchestrator", include=TASK_MODULES)
    app.conf.update(
        broker_options(settings),
        task_serializer="json", accept_content=["json"], result_serializer="json",
        task_ignore_result=True, result_backend=None,
        task_acks_late=True, task_reject_on_worker_lost=True, task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_time_limit=300, task_soft_time_limit=240,
        worker_max_tasks_per_child=1000, worker_max_memory_per_child=400_000,  # KiB, prefork pool
        task_queues=[Queue(name) for name in QUEUE_NAMES], task_default_queue="dispatch",
        task_routes={name: {"queue": queue} for name, queue in QUEUES.items()},
        beat_schedule={"sweep": {"task": SWEEP, "schedule": timedelta(seconds=settings.sweep_interval_seconds),
                                 "options": {"queue": QUEUES[SWEEP], "expires": settings.sweep_interval_seconds}}},
        worker_hijack_root_logger=False, worker_send_task_events=False, task_send_sent_event=False,
        broker_connection_retry_on_startup=True, worker_cancel_long_running_tasks_on_connection_loss=True,
        enable_utc=True, timezone="UTC",
    )
    return app
