"""Reconciliation and the store step as plain functions on real Postgres (no broker round trip)."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import session_scope
from orchestrator.models import Asset, Batch, Delivery, Job, JobEvent, JobState
from orchestrator.settings import Settings
from tests.factories import make_batch
from tests.http_helpers import Answer, Call, LoopbackServer
from workers.context import Context
from workers.deliveries import process
from workers.store import store

pytestmark = pytest.mark.committed  # the worker Context opens its own engine and threads race on separate connections


@pytest.fixture
def images() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A real HTTP server on loopback serving whatever bytes the test puts in the dict."""
    files: dict[str, bytes] = {}

    def serve(call: Call) -> Answer:
        body = files.get(call.path)
        return Answer(200 if body is not None else 404, body or b"")

    with LoopbackServer(serve) as server:
        yield server.host, files


@pytest.fixture
def ctx(settings: Settings, images: tuple[str, dict[str, bytes]], tmp_path: Path) -> Iterator[Context]:
    settings.download_allowed_hosts = images[0]
    settings.download_allow_private = True  # the image server is on loopback
    settings.public_url = "http://127.0.0.1:9"
    c = Context(settings)
    # Storage PUTs go straight to the local directory backend through a tiny in-test server.
    yield c
    c.close()


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(buf, "JPEG")
    return buf.getvalue()


def _fal_body(request_id: str, url: str) -> bytes:
    return json.dumps({"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                       "payload": {"images": [{"url": url, "width": 1024, "height": 768,
                                               "content_type": "image/jpeg"}], "seed": 15860307465884635512,
                                   "has_nsfw_concepts": [False], "prompt": "p", "timings": {}}}).encode()


def _deliveries(session: Session, job: Job, bodies: list[bytes], provider: str) -> list[uuid.UUID]:
    ids = []
    for i, body in enumerate(bodies):
        d = Delivery(provider=provider, event_key=f"k{i}", job_id=job.id, attempt=job.attempt, verified=True,
                     headers={}, body=body)
        session.add(d)
        session.flush()
        ids.append(d.id)
    return ids


def _race(ctx: Context, ids: list[uuid.UUID]) -> list[str]:
    barrier = threading.Barrier(len(ids))
    out: list[str] = []

    def run(delivery_id: uuid.UUID) -> None:
        barrier.wait()
        out.append(process(ctx, delivery_id))

    threads = [threading.Thread(target=run, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_duplicate_fal_deliveries_apply_once(ctx: Context, sessions: sessionmaker[Session],
                                                        images: tuple[str, dict[str, bytes]]) -> None:
    host, _ = images
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.submitted], attempt=1, provider_request_id="req-1")
        ids = _deliveries(s, job, [_fal_body("req-1", f"http://{host}/a.jpg")] * 8, "fal")
        job_id = job.id
    outcomes = _race(ctx, ids)
    assert outcomes.count("storing") == 1 and all(o.startswith("ignored") for o in outcomes if o != "storing")
    with session_scope(sessions) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Asset).where(Asset.job_id == job_id)) == 1
        assert s.scalar(sa.select(Asset.seed)) == "15860307465884635512"  # > 2**63, kept exact
        assert s.scalar(sa.select(sa.func.count()).select_from(JobEvent).where(
            JobEvent.kind == "result_received")) == 1
        batch = s.scalars(sa.select(Batch)).one()
        # Applied once, and the store step followed in the same worker, no broker round trip:
        # the image server has no such file, so the job failed there.
        assert batch.count_failed == 1 and batch.count_storing == 0 and batch.count_submitted == 0
        job_row = s.get(Job, job_id)
        assert job_row is not None and job_row.error_code in ("download_failed", "result_expired")
        assert all(d.processed_at for d in s.scalars(sa.select(Delivery)))


def test_runware_images_collected_by_uuid_under_races(ctx: Context, sessions: sessionmaker[Session],
                                                      images: tuple[str, dict[str, bytes]]) -> None:
    host, _ = images
    task = str(uuid.uuid4())
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.submitted], provider="runware", model="runware:100@1", attempt=1,
                               num_images=3, task_id=task)
        bodies = [json.dumps({"data": [{"taskType": "imageInference", "taskUUID": task, "imageUUID": f"img-{i % 3}",
                                        "imageURL": f"http://{host}/{i % 3}.jpg", "seed": 10 + i % 3,
                                        "cost": 0.001}]}).encode() for i in range(9)]  # 3 images, 3 copies each
        ids = _deliveries(s, job, bodies, "runware")
        job_id = job.id
    outcomes = _race(ctx, ids)
    assert outcomes.count("storing") == 1
    with session_scope(sessions) as s:
        assets = s.scalars(sa.select(Asset).where(Asset.job_id == job_id).order_by(Asset.index)).all()
        assert [a.index for a in assets] == [0, 1, 2]
        assert sorted(a.provider_image_id or "" for a in assets) == ["img-0", "img-1", "img-2"]
        job_row = s.get(Job, job_id)
        assert job_row is not None and float(job_row.cost or 0) == 0.003
        assert job_row.state is JobState.failed  # stored at once: the image server has no such files


@pytest.mark.parametrize(("body", "code"), [
    (b"\xff\xd8\xff\xe0 not really a jpeg", "invalid_image"),
    (_jpeg(640, 480), "invalid_image"),  # the job asked for 1024x768
])
def test_store_rejects_corrupt_and_wrong_size_images(ctx: Context, sessions: sessionmaker[Session],
                                                     images: tuple[str, dict[str, bytes]], body: bytes,
                                                     code: str) -> None:
    host, files = images
    files["/x.jpg"] = body
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.storing], attempt=1)
        s.add(Asset(job_id=job.id, index=0, provider_image_id="x", source_url=f"http://{host}/x.jpg"))
        job_id = job.id
    assert store(ctx, job_id) == f"failed: {code}"
    with session_scope(sessions) as s:
        job_row = s.get(Job, job_id)
        assert job_row is not None and job_row.state is JobState.failed and job_row.error_code == code


def test_store_refuses_hosts_off_the_allow_list(ctx: Context, sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.storing], attempt=1)
        s.add(Asset(job_id=job.id, index=0, provider_image_id="x", source_url="http://169.254.169.254/latest"))
        job_id = job.id
    assert store(ctx, job_id) == "failed: disallowed_host"
