"""End to end: intake -> dispatch -> sandbox -> signed webhook -> reconcile -> storage, for real."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import REDIS_URL, make_key
from tests.stack import Stack, start_stack

pytestmark = [pytest.mark.slow, pytest.mark.committed]  # a stack or an API process reads the data


@pytest.fixture
def stack(pg_url: str, tmp_path: Path, sessions: sessionmaker[Session]) -> Iterator[Stack]:
    s = start_stack(pg_url, REDIS_URL, tmp_path)
    yield s
    s.stop()


def _manifest(client, batch_id: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    resp = client.get(f"/v1/batches/{batch_id}/results")
    assert resp.status_code == 200
    return [json.loads(line) for line in resp.text.splitlines()]


def test_mixed_batch_through_both_providers(stack: Stack, sessions: sessionmaker[Session]) -> None:
    stack.start_worker("w1")
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    body = {"name": "board", "items": [
        {"custom_id": f"fal-{i}", "model": "fal-ai/flux/schnell", "prompt": f"a red fox #{i}", "image_size": "square",
         "seed": i} for i in range(4)] + [
        {"custom_id": f"rw-{i}", "model": "runware:100@1", "prompt": f"a blue owl #{i}", "width": 512,
         "height": 384, "num_images": 2} for i in range(3)]}
    resp = client.post("/v1/batches", json=body)
    assert resp.status_code == 201, resp.text
    batch = stack.wait_batch(client, resp.json()["id"])
    assert batch["state"] == "succeeded", stack.logs()
    assert batch["counts"]["succeeded"] == 7
    lines = _manifest(client, batch["id"])
    assert len(lines) == 7
    images = [img for line in lines for img in line["images"]]
    assert len(images) == 4 + 3 * 2
    for img in images:
        data = client.get(img["url"]).content  # presigned local GET served by the API
        assert hashlib.sha256(data).hexdigest() == img["sha256"]
    assert {(i["width"], i["height"]) for i in lines[0]["images"]} == {(512, 512)}
    assert {(i["width"], i["height"]) for i in lines[-1]["images"]} == {(512, 384)}
    text = client.get("/metrics").text
    assert 'orchestrator_jobs{state="succeeded"} 7' in text
    assert "orchestrator_callback_to_stored_seconds_count 7" in text
    # Workers count provider calls in memory and flush them every second.
    submits = 'orchestrator_provider_requests_total{call="submit",code="200",outcome="accepted",provider="fal"} 4'
    deadline = time.monotonic() + 20
    while submits not in text and time.monotonic() < deadline:
        time.sleep(0.2)
        text = client.get("/metrics").text
    assert submits in text
    deadline = time.monotonic() + 20
    while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)  # the first sweep a worker consumes proves it is consuming
    assert ready.status_code == 200, ready.text
    # Never paid twice: one provider submission per job.
    assert len(stack.fal.ledger.submissions) == 4
    assert len(stack.runware.ledger.submissions) == 3
