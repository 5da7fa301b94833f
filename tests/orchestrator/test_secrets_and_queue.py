"""Secrets stay out of logs and answers; broker messages go out only after commit."""

from __future__ import annotations

import io
import json
import logging
import time

import redis
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import auth, log, queue
from orchestrator.redact import redact_url
from orchestrator.settings import Settings
from tests.conftest import SPARE_REDIS_URL

FAL_SECRET = "f4l-key-id:very-secret-part-123"
URL = "https://bucket.s3.amazonaws.com/a/b.jpg?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeefcafe&X-Amz-Expires=900"


def test_logs_never_carry_keys_tokens_or_signatures() -> None:
    stream = io.StringIO()
    log.configure(json_logs=True, secrets=(FAL_SECRET,))
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_orchestrator", False))
    handler.stream = stream  # type: ignore[attr-defined]
    with log.bound(job_id="j-1", batch_id="b-1"):
        logging.getLogger("t").warning("calling fal with %s and Authorization: Key %s, upload to %s", FAL_SECRET,
                                       FAL_SECRET, URL, extra={"webhook": "https://x/hook?token=abc123secret"})
    record = json.loads(stream.getvalue().strip().splitlines()[-1])
    text = json.dumps(record)
    for secret in (FAL_SECRET, "very-secret-part-123", "deadbeefcafe", "AKIA123", "abc123secret"):
        assert secret not in text
    assert record["job_id"] == "j-1" and record["batch_id"] == "b-1"
    assert "X-Amz-Expires=900" in text  # only the secret parts go
    logging.getLogger().removeHandler(handler)


def test_redact_url_keeps_the_path() -> None:
    assert redact_url(URL).startswith("https://bucket.s3.amazonaws.com/a/b.jpg?")
    assert "deadbeefcafe" not in redact_url(URL) and "X-Amz-Signature=***" in redact_url(URL)


def test_api_never_returns_the_key_or_secrets(client: FlaskClient, headers: dict[str, str]) -> None:
    token = headers["Authorization"].split()[1]
    bodies = [client.get("/v1/batches", headers=headers).get_data(as_text=True),
              client.get("/v1/nope", headers=headers).get_data(as_text=True),
              client.post("/v1/batches", data=b"{", headers={**headers, "Content-Type": "application/json"})
              .get_data(as_text=True)]
    assert all(token not in body for body in bodies)


def test_messages_are_sent_only_after_commit(settings: Settings, sessions: sessionmaker[Session]) -> None:
    # A Redis database of its own: no worker of another test may consume the message first.
    settings.broker_url = SPARE_REDIS_URL
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete("dispatch")
    publisher = queue.Publisher(settings)
    try:
        with sessions() as session:
            auth.create_key(session, "acme")
            publisher.after_commit(session, queue.DISPATCH, "fal")
            assert broker.llen("dispatch") == 0  # not before the commit
            session.rollback()
        assert broker.llen("dispatch") == 0  # a rolled-back write sends nothing
        with sessions() as session:
            auth.create_key(session, "acme")
            publisher.after_commit(session, queue.DISPATCH, "fal")
            assert broker.llen("dispatch") == 0
            session.commit()
        assert broker.llen("dispatch") == 1
    finally:
        publisher.close()
        broker.delete("dispatch")


def test_unreachable_broker_never_fails_or_stalls_the_caller(settings: Settings) -> None:
    settings.broker_url = "redis://127.0.0.1:1/0"
    publisher = queue.Publisher(settings)
    started = time.monotonic()
    assert publisher.send(queue.DISPATCH, "fal") is False
    assert time.monotonic() - started < 3  # generous: it fails at once, not after reconnect attempts
    publisher.close()
