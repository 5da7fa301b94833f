"""The publisher's one-LPUSH messages are the ones Celery's send_task writes, and a real worker runs them."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from orchestrator import queue
from orchestrator.settings import Settings
from tests.conftest import SPARE_REDIS_URL
from tests.stack import wait_for

# Fresh per message: the task id (and what repeats it) and kombu's delivery tag.
PER_MESSAGE = {("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"),
               ("properties", "delivery_tag"), ("headers", "eta")}


@pytest.fixture
def broker() -> Any:
    client = redis.Redis.from_url(SPARE_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def publisher(settings: Settings) -> Any:
    settings.broker_url = SPARE_REDIS_URL
    pub = queue.Publisher(settings)
    yield pub
    pub.close()


def _pop(broker: redis.Redis, queue_name: str) -> dict[str, Any]:
    raw = broker.rpop(queue_name)
    assert raw is not None, f"nothing in {queue_name}"
    return json.loads(raw)


def _shape(message: dict[str, Any]) -> dict[tuple[str, str], Any]:
    flat = {(part, key): value for part in ("headers", "properties") for key, value in message[part].items()}
    flat.update({("envelope", k): v for k, v in message.items() if k not in ("headers", "properties")})
    return flat


@pytest.mark.parametrize(("task", "args", "countdown"), [(queue.PROCESS_DELIVERY, ["d-1"], None),
                                                         (queue.DISPATCH, ["fal"], 30.0)])
def test_message_is_what_send_task_writes(broker: redis.Redis, publisher: queue.Publisher, task: str,
                                          args: list[str], countdown: float | None) -> None:
    name = queue.QUEUES[task]
    publisher._app.send_task(task, args=args, queue=name, countdown=countdown, retry=False, ignore_result=True)
    by_celery = _shape(_pop(broker, name))
    assert publisher.send(task, *args, countdown=countdown)
    by_us = _shape(_pop(broker, name))
    assert by_us.keys() == by_celery.keys()
    assert {k: v for k, v in by_us.items() if k not in PER_MESSAGE} == \
           {k: v for k, v in by_celery.items() if k not in PER_MESSAGE}
    assert by_us["headers", "id"] == by_us["headers", "root_id"] == by_us["properties", "correlation_id"]
    if countdown is None:
        assert by_us["headers", "eta"] is None
    else:
        eta_us, eta_celery = (datetime.fromisoformat(m["headers", "eta"]) for m in (by_us, by_celery))
        assert abs((eta_us - eta_celery).total_seconds()) < 5


def test_a_real_worker_runs_the_message(broker: redis.Redis, publisher: queue.Publisher) -> None:
    # A queue of the test's own: a worker of the system left on this Redis database by another
    # test would otherwise consume from "webhooks" first.
    own_queue = f"wire-test-{uuid.uuid4().hex[:8]}"
    app = Celery("wire-test", broker=SPARE_REDIS_URL, set_as_current=False)
    app.conf.update(task_default_queue=own_queue, accept_content=["json"], broker_connection_retry_on_startup=True)
    ran: list[str] = []
    done = threading.Event()

    # A task name of the test's own too: the project's shared tasks join every Celery app once
    # imported (the whole suite imports them), and the first registration of a name wins.
    task_name = f"wire-test.echo-{uuid.uuid4().hex[:8]}"

    @app.task(name=task_name)
    def echo(delivery_id: str) -> None:
        ran.append(delivery_id)
        done.set()

    assert publisher._wire is not None
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        publisher._wire.send(task_name, ["delivery-42"], own_queue)
        wait_for(done.is_set, 30, "the worker to run the task")
    assert ran == ["delivery-42"]
