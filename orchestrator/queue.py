"""The only link from the API and domain to the workers: task names and a publisher.

Messages are nudges ("look at job X now"), never the source of truth, and are sent only after
the transaction that made them meaningful has committed. A failed send is logged and dropped:
the periodic sweep finds the work in the database.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import outbox
from orchestrator.redis_wire import RedisWire, handles
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

# Task names, shared by name only with workers/. They are the wire contract with messages
# already in the broker, so they stay as they are when a task moves: process_delivery lives in
# workers/deliveries.py, store_job in workers/store.py, notify_batch in workers/notify.py.
DISPATCH = "workers.dispatch.dispatch_due"
SUBMIT_JOB = "workers.dispatch.submit_job"
CANCEL_AT_PROVIDER = "workers.dispatch.cancel_at_provider"
PROCESS_DELIVERY = "workers.webhooks.process_delivery"
STORE_JOB = "workers.storage.store_job"
NOTIFY_BATCH = "workers.callbacks.notify_batch"
SWEEP = "workers.maintenance.sweep"

QUEUES = {
    DISPATCH: "dispatch", SUBMIT_JOB: "dispatch", CANCEL_AT_PROVIDER: "dispatch",
    PROCESS_DELIVERY: "webhooks", STORE_JOB: "storage", NOTIFY_BATCH: "webhooks", SWEEP: "maintenance",
}


def broker_options(settings: Settings) -> dict[str, Any]:
    """Celery broker settings shared by the publisher and the workers."""
    url = settings.resolved_broker_url
    opts: dict[str, Any] = {"broker_url": url, "broker_connection_retry_on_startup": True}
    if url.startswith("filesystem://"):
        folder = (settings.data_dir / "broker").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        opts["broker_transport"] = "orchestrator.localbroker:Transport"
        opts["broker_transport_options"] = {"data_folder_in": str(folder), "data_folder_out": str(folder),
                                            # kombu's default is ./control in the current directory
                                            "control_folder": str(folder / "control"),
                                            # Local files are cheap to poll; the default 1 s adds a
                                            # second to every hop of the pipeline.
                                            "polling_interval": 0.05}
    else:
        # Longer than any task or countdown we schedule, so Redis never redelivers a live task.
        opts["broker_transport_options"] = {"visibility_timeout": 3600, "socket_connect_timeout": 3,
                                            "socket_timeout": 5}
    return opts


class Publisher:
    """Sends task messages by name; never raises."""

    def __init__(self, settings: Settings):
        self._app = Celery("orchestrator-publisher", set_as_current=False)
        options = broker_options(settings)
        if "visibility_timeout" in options["broker_transport_options"]:
            # A nudge is best effort: with Redis down, fail at once instead of holding the
            # request for seconds of reconnect attempts (the sweep recovers the work).
            options["broker_transport_options"] = {**options["broker_transport_options"], "max_retries": 0,
                                                   "socket_connect_timeout": 1}
        self._app.conf.update(options, task_serializer="json", accept_content=["json"],
                              broker_connection_retry=False, broker_connection_max_retries=0,
                              broker_connection_timeout=1)
        url = options["broker_url"]
        # On Redis, one LPUSH of the message send_task would write (orchestrator.redis_wire).
        self._wire = RedisWire(self._app, url, connect_timeout=1, timeout=5) if handles(url) else None

    def send(self, name: str, *args: Any, countdown: float | None = None) -> bool:
        """Publish one message now; False (logged) if the broker is unreachable."""
        try:
            if self._wire is not None:
                self._wire.send(name, list(args), QUEUES[name], countdown)
            else:
                self._app.send_task(name, args=list(args), queue=QUEUES[name], countdown=countdown,
                                    retry=False, ignore_result=True)
            return True
        except Exception as exc:  # the database is the source of truth; a lost nudge is recovered by the sweep
            log.warning("broker send failed", extra={"task": name, "error": type(exc).__name__})
            return False

    def after_commit(self, session: Session, name: str, *args: Any, countdown: float | None = None) -> None:
        """Publish once `session` commits; dropped if it rolls back."""
        pending: list[tuple[str, tuple[Any, ...], float | None]] = session.info.setdefault("outbox", [])
        if not pending:
            event.listen(session, "after_commit", self._flush, once=True)
            event.listen(session, "after_rollback", _discard, once=True)
        pending.append((name, args, countdown))

    def _flush(self, session: Session) -> None:
        for name, args, countdown in session.info.pop("outbox", []):
            self.send(name, *args, countdown=countdown)

    def watch(self, factory: sessionmaker[Session]) -> None:
        """Publish the consequences of every transition committed by `factory`'s sessions.

        Used where no worker runs the claim itself (the API): a freed slot or a due job becomes
        a claim nudge, a finished batch its completion notice (see orchestrator.outbox).
        """
        event.listen(factory, "after_commit", lambda session: self.publish_outbox(outbox.take(session)))
        event.listen(factory, "after_rollback", outbox.drop)

    def publish_outbox(self, box: outbox.Outbox) -> None:
        """Send the messages a committed outbox calls for."""
        for batch_id in sorted(box.finished):
            self.send(NOTIFY_BATCH, str(batch_id))
        for job_id in sorted(box.storing):
            self.send(STORE_JOB, str(job_id))
        for provider in sorted(box.freed | set(box.due)):
            delay = 0.0 if provider in box.freed else box.due[provider]
            self.send(DISPATCH, provider, countdown=min(300.0, delay) or None)

    def close(self) -> None:
        """Release broker connections."""
        if self._wire is not None:
            self._wire.close()
        self._app.close()


def _discard(session: Session) -> None:
    session.info.pop("outbox", None)
