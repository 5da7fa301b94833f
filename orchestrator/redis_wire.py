"""Publish a Celery task message to a Redis broker with one LPUSH, as Celery and kombu would.

`Celery.send_task` costs about a millisecond of CPU per message (routing, a producer and a fresh
Redis client from kombu's pool on every call): more than verifying and storing a webhook. What
it finally does on a Redis broker is one `LPUSH <queue> <json envelope>` (the default exchange
routes by queue name, priority 0 is the bare list). This module writes that same envelope:
Celery's own `amqp.as_task_v2` builds the task headers and body (protocol 2), and the kombu
envelope around it (base64 body, delivery info, tag) is written here as kombu's virtual
transport writes it. tests/orchestrator/test_redis_wire.py checks it key for key against what
`send_task` puts in Redis, and that a real worker runs such a message.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import redis
from celery import Celery
from kombu.utils.json import dumps
from redis.backoff import NoBackoff
from redis.retry import Retry

# kombu's persistent delivery mode, and the priority a message without one gets.
PERSISTENT = 2
DEFAULT_PRIORITY = 0


def handles(broker_url: str) -> bool:
    """Whether `broker_url` is a plain Redis broker this module can publish to."""
    return broker_url.startswith(("redis://", "rediss://"))


class RedisWire:
    """Task messages straight onto a Redis broker's lists; one pooled client per process."""

    def __init__(self, app: Celery, broker_url: str, *, connect_timeout: float, timeout: float):
        self._app = app
        # No retries: a nudge is best effort (the caller logs a failure and the sweep recovers).
        self._client = redis.Redis.from_url(broker_url, socket_connect_timeout=connect_timeout,
                                            socket_timeout=timeout, retry=Retry(NoBackoff(), 0))

    def message(self, name: str, args: list[Any], queue: str, countdown: float | None) -> bytes:
        """The JSON envelope kombu would LPUSH for `send_task(name, args, queue=queue, ...)`."""
        task_id = str(uuid.uuid4())
        task = self._app.amqp.as_task_v2(task_id, name, args, {}, countdown=countdown,
                                         reply_to=self._app.thread_oid, ignore_result=True)
        body = base64.b64encode(dumps(task.body).encode()).decode()
        properties = {**task.properties, "delivery_mode": PERSISTENT,
                      "delivery_info": {"exchange": "", "routing_key": queue}, "priority": DEFAULT_PRIORITY,
                      "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
        return dumps({"body": body, "content-encoding": "utf-8", "content-type": "application/json",
                      "headers": task.headers, "properties": properties}).encode()

    def send(self, name: str, args: list[Any], queue: str, countdown: float | None = None) -> None:
        """LPUSH one task message; raises redis errors."""
        self._client.lpush(queue, self.message(name, args, queue, countdown))

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()
