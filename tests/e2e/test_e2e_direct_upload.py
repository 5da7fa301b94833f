"""Runware's direct upload end to end: a real moto S3 server, the Runware sandbox, real workers.

A single-image Runware job gets one presigned PUT URL (a staging key); the store step verifies
the uploaded object from the bucket and copies it into place, or downloads the image when the
upload is absent or invalid. The sandbox's media log tells whether anyone downloaded an image.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.models import Asset, Job, JobEvent
from orchestrator.sandbox import Faults
from tests.conftest import StackFactory, make_key
from tests.s3_helpers import moto_server, use_dummy_aws
from tests.stack import Stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.committed]

PREFIX = "renders"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh bucket; dummy credentials for this process (the API) and the workers' environment."""
    aws = use_dummy_aws(monkeypatch, tmp_path_factory.getbasetemp() / "no-aws-config")
    bucket = f"orch-e2e-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return {**aws, "ORCH_STORAGE_URL": f"s3://{bucket}/{PREFIX}", "ORCH_S3_ENDPOINT_URL": s3_endpoint}


def bucket_of(stack: Stack) -> tuple[Any, str]:
    name = stack.env["ORCH_STORAGE_URL"].removeprefix("s3://").split("/", 1)[0]
    return boto3.client("s3", endpoint_url=stack.env["ORCH_S3_ENDPOINT_URL"]), name


def keys_in(stack: Stack, under: str) -> set[str]:
    s3, bucket = bucket_of(stack)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/{under}")
    return {o["Key"].removeprefix(f"{PREFIX}/") for o in listed.get("Contents", [])}


def object_sha(stack: Stack, key: str) -> str:
    s3, bucket = bucket_of(stack)
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read()).hexdigest()


def run_batch(stack: Stack, sessions: sessionmaker[Session], items: list[dict[str, Any]]) -> dict[str, Any]:
    client = stack.client(make_key(sessions, "acme"))
    resp = client.post("/v1/batches", json={"name": "direct", "items": items})
    assert resp.status_code == 201, resp.text
    batch = stack.wait_batch(client, resp.json()["id"])
    assert batch["state"] == "succeeded", stack.logs()
    return batch


def stored_events(sessions: sessionmaker[Session]) -> dict[str, list[dict[str, Any]]]:
    """custom_id -> the details of its image_stored events."""
    with sessions() as s:
        rows = s.execute(sa.select(Job.custom_id, JobEvent.detail).join(JobEvent, JobEvent.job_id == Job.id)
                         .where(JobEvent.kind == "image_stored")).all()
    found: dict[str, list[dict[str, Any]]] = {}
    for custom_id, detail in rows:
        found.setdefault(custom_id, []).append(detail)
    return found


def assets(sessions: sessionmaker[Session]) -> dict[str, list[Asset]]:
    with sessions() as s:
        rows = s.execute(sa.select(Job.custom_id, Asset).join(Asset, Asset.job_id == Job.id)).all()
    found: dict[str, list[Asset]] = {}
    for custom_id, asset in rows:
        found.setdefault(custom_id, []).append(asset)
    return found


def item(custom_id: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "model": model, "prompt": f"a lighthouse {custom_id}", "width": 512,
            "height": 384, "output_format": "png", **extra}


def test_direct_upload_happy_path_skipped_and_corrupted(
    make_stack: StackFactory, s3_env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    faults = Faults(models={"runware:101@1": {"upload_drop_rate": 1.0},
                            "rundiffusion:130@100": {"upload_corrupt_rate": 1.0}})
    stack = make_stack(env={**s3_env, "ORCH_DIRECT_UPLOAD_WAIT_SECONDS": "8"}, runware_faults=faults)
    stack.start_worker("w1")
    items = [item(f"direct-{i}", "runware:100@1") for i in range(3)]
    items += [item("skipped", "runware:101@1"), item("corrupted", "rundiffusion:130@100")]
    run_batch(stack, sessions, items)

    # Every request carried one upload URL, for a staging key named after its taskUUID.
    subs = stack.submissions("runware")
    assert len(subs) == 5
    for sub in subs:
        assert f"/{PREFIX}/incoming/{sub['task_uuid']}.png?" in sub["input"]["uploadEndpoint"]
    events, stored = stored_events(sessions), assets(sessions)
    direct = [f"direct-{i}" for i in range(3)]
    assert {c: [e["path"] for e in events[c]] for c in direct} == {c: ["direct"] for c in direct}
    assert [e["path"] for e in events["skipped"]] == ["fallback"]
    assert events["skipped"][0]["fallback_reason"] == "absent"
    assert [e["path"] for e in events["corrupted"]] == ["fallback"]
    assert events["corrupted"][0]["fallback_reason"].startswith("invalid")
    # Only the two fallbacks downloaded from Runware's imageURL.
    image_names = {a.source_url.rsplit("/", 1)[1]: c for c, found in stored.items() for a in found}
    assert sorted(image_names[m["name"]] for m in stack.runware.ledger.media_gets) == ["corrupted", "skipped"]
    # Each final object is the verified image, typed by its format; the staging area is empty.
    s3, bucket = bucket_of(stack)
    for custom_id, (asset,) in stored.items():
        assert asset.storage_key and asset.storage_key.endswith("/0.png")
        assert object_sha(stack, asset.storage_key) == asset.sha256, custom_id
        head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{asset.storage_key}")
        assert head["ContentType"] == "image/png"
    assert keys_in(stack, "incoming/") == set()
    client = stack.client(make_key(sessions, "acme"))
    # Counters reach /metrics through the worker's once-a-second flush: wait for both lines together.
    expected = ['orchestrator_images_stored_total{path="direct",provider="runware"} 3',
                'orchestrator_images_stored_total{path="fallback",provider="runware"} 2']
    wait_for(lambda: all(line in client.get("/metrics").text for line in expected), 20, "the stored-images counter")


def test_late_corrupted_upload_cannot_replace_the_image_and_multi_image_jobs_download(
    make_stack: StackFactory, s3_env: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    faults = Faults(models={"runware:101@1": {"upload_delay_seconds": 3.0, "upload_corrupt_rate": 1.0}})
    stack = make_stack(env={**s3_env, "ORCH_DIRECT_UPLOAD_WAIT_SECONDS": "0.5"}, runware_faults=faults)
    stack.start_worker("w1")
    run_batch(stack, sessions, [item("late", "runware:101@1"), item("pair", "runware:100@1", num_images=2)])

    subs = {s["input"]["model"]: s["input"] for s in stack.submissions("runware")}
    assert "uploadEndpoint" in subs["runware:101@1"]
    assert "uploadEndpoint" not in subs["runware:100@1"]  # one URL per task: several files would overwrite
    events, stored = stored_events(sessions), assets(sessions)
    assert [e["path"] for e in events["pair"]] == ["download", "download"]
    assert [e["path"] for e in events["late"]] == ["fallback"]
    # The corrupted PUT lands after the fallback stored the image: only the staging key gets it.
    wait_for(lambda: any(d["kind"] == "upload" and d["outcome"] == "delivered"
                         for d in stack.runware.ledger.deliveries), 30, "the late upload")
    (late,) = stored["late"]
    assert late.storage_key and object_sha(stack, late.storage_key) == late.sha256
    assert len(keys_in(stack, "incoming/")) == 1  # left behind: a bucket lifecycle rule expires it
    assert len(stack.runware.ledger.media_gets) == 3


def test_local_storage_never_passes_an_upload_url(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    # The local backend's presigned URLs are our own API: the image is downloaded and PUT as before.
    stack = make_stack()
    stack.start_worker("w1")
    run_batch(stack, sessions, [item("local", "runware:100@1")])
    (sub,) = stack.submissions("runware")
    assert "uploadEndpoint" not in sub["input"]
    assert [e["path"] for e in stored_events(sessions)["local"]] == ["download"]
    assert len(stack.runware.ledger.media_gets) == 1
