"""The store step: copy every image of a job into the user's storage, verified, exactly once.

Each image is downloaded from an allow-listed host (size-capped, streamed, with a deadline),
checked to decode as the format and size the job asked for, hashed, and PUT to a freshly
presigned URL. The asset row is marked stored with a conditional UPDATE, so a second run of
the task (redelivery, sweep) never records an image twice; the object key is deterministic,
so a repeated upload overwrites the same object rather than adding one.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from celery import shared_task

from orchestrator import catalog_runs, metrics, queue, state
from orchestrator.db import utcnow
from orchestrator.log import bound
from orchestrator.models import Asset, Batch, Job, JobState
from orchestrator.storage.base import StorageError, object_key
from orchestrator.storage.images import (
    DownloadFailed,
    ImageError,
    download_image,
    upload,
    verify_image,
)
from workers.celery_app import TASK_OPTS
from workers.context import Context, ctx, on_results_arrived

log = logging.getLogger(__name__)
PRESIGN_SECONDS = 900
TRANSFER_TIMEOUT = 60.0


@dataclass(frozen=True)
class Pending:
    """One image still to store, read before any I/O."""

    asset_id: uuid.UUID
    index: int
    url: str


@dataclass(frozen=True)
class JobInfo:
    """The job facts the store step needs."""

    job_id: uuid.UUID
    tenant: str
    batch_id: uuid.UUID
    position: int
    custom_id: str
    fmt: str
    width: int
    height: int
    provider: str
    catalog_ref: dict[str, Any] | None = None


@shared_task(name=queue.STORE_JOB, bind=True, max_retries=6, **TASK_OPTS)
def store_job(self, job_id: str) -> str:
    """Store a job's images; transient failures retry with backoff, then the sweep resumes."""
    try:
        return store(ctx(), uuid.UUID(job_id))
    except TransientStoreError as exc:
        with ctx().session() as session:
            metrics.incr(session, "orchestrator_storage_failures_total", reason="transient")
        if self.request.retries >= self.max_retries:
            return f"gave up for now: {exc}"
        raise self.retry(countdown=min(60, 2 ** self.request.retries), exc=exc) from None


class TransientStoreError(Exception):
    """A download or upload failed in a way worth retrying."""


@on_results_arrived
def store_now(c: Context, job_id: uuid.UUID) -> None:
    """Results arrived in this worker's transaction: store them at once, in this thread.

    A transient failure hands the job to the store_job task, which retries with backoff.
    """
    try:
        store(c, job_id)
    except TransientStoreError:
        c.publisher.send(queue.STORE_JOB, str(job_id), countdown=1.0)
    except Exception:
        log.exception("store failed; handing it to the store task", extra={"job_id": str(job_id)})
        c.publisher.send(queue.STORE_JOB, str(job_id), countdown=1.0)


def store(c: Context, job_id: uuid.UUID) -> str:
    """Store every pending image of a storing job, then mark it succeeded."""
    with c.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state is not JobState.storing:
            return "skipped"
        info = _info(session, job)
        pending = [Pending(a.id, a.index, a.source_url or "") for a in session.execute(
            sa.select(Asset).where(Asset.job_id == job_id, Asset.stored_at.is_(None)).order_by(Asset.index)
        ).scalars()]
    with bound(job_id=job_id, batch_id=info.batch_id):
        for item in pending:
            problem = _store_one(c, info, item)
            if problem is not None:
                return _give_up(c, job_id, problem)
        return _finish(c, info)


def _info(session: sa.orm.Session, job: Job) -> JobInfo:
    batch = session.get(Batch, job.batch_id)
    assert batch is not None
    p = job.params
    return JobInfo(job.id, job.tenant, job.batch_id, job.position, job.custom_id, p["output_format"],
                   p["width"], p["height"], job.provider, job.catalog_ref)


def _store_one(c: Context, info: JobInfo, item: Pending) -> tuple[str, str] | None:
    """Copy one image; returns (code, message) for a permanent problem, raises on transient ones."""
    s = c.settings
    try:
        data = download_image(c.download_http, item.url, allowed_hosts=s.allowed_hosts(),
                              max_bytes=s.download_max_bytes, timeout=TRANSFER_TIMEOUT)
        image = verify_image(data, expected_format=info.fmt, width=info.width, height=info.height)
        key = object_key(info.tenant, str(info.batch_id), info.position, info.custom_id, item.index, image.ext)
        url = c.storage.presign_put(key, image.content_type, PRESIGN_SECONDS)
        upload(c.http, url, data, image.content_type, TRANSFER_TIMEOUT)
    except DownloadFailed as exc:
        if exc.expired:
            return "result_expired", f"the provider no longer has image {item.index}: {exc}"
        if exc.transient:
            raise TransientStoreError(str(exc)) from None
        return "download_failed", str(exc)
    except ImageError as exc:
        if getattr(exc, "transient", False):
            raise TransientStoreError(str(exc)) from None
        return _code(exc), str(exc)
    with c.session() as session:
        session.execute(
            sa.update(Asset).where(Asset.id == item.asset_id, Asset.stored_at.is_(None)).values(
                storage_key=key, content_type=image.content_type, width=image.width, height=image.height,
                bytes=image.size, sha256=image.sha256, stored_at=utcnow()))
        state.record(session, info.job_id, "image_stored", 0, index=item.index, key=key, sha256=image.sha256)
    return None


def _code(exc: ImageError) -> str:
    """A stable error code from the exception class: InvalidImage -> invalid_image."""
    name = type(exc).__name__
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")


def _finish(c: Context, info: JobInfo) -> str:
    with c.session() as session:
        missing = session.scalar(sa.select(sa.func.count()).select_from(Asset)
                                 .where(Asset.job_id == info.job_id, Asset.stored_at.is_(None))) or 0
        if missing:
            return f"{missing} images still pending"
    ref = info.catalog_ref
    replaced = _to_stable_keys(c, info, ref["keys"]) if ref and ref.get("keys") else []
    with c.session() as session:
        moved = state.transition(session, info.job_id, JobState.succeeded, kind="stored", expect=[JobState.storing])
        if moved.applied:
            for asset_id, _, key in replaced:
                session.execute(sa.update(Asset).where(Asset.id == asset_id).values(storage_key=key))
            if ref:
                # The row's index entry switches to the new images in the same transaction.
                catalog_runs.record_images(session, info.job_id, info.tenant, ref)
    if moved.applied:
        for _, old, _ in replaced:  # only the per-batch copies: the stable keys hold the images now
            try:
                c.storage.delete(old)
            except StorageError as exc:
                log.warning("could not delete %s: %s", old, exc)
    return "succeeded" if moved.applied else "unchanged"


def _to_stable_keys(c: Context, info: JobInfo, keys: list[str]) -> list[tuple[uuid.UUID, str, str]]:
    """Copy every verified image to its row's stable key and check the copy: (asset, old key, new key).

    Runs only once all of the job's images are stored and verified, so a stable key is never
    overwritten by a night that failed; each PUT replaces the object whole (S3 and the local
    backend are atomic per object), so a reader sees the old image or the new one.
    """
    with c.session() as session:
        assets = [(a.id, a.index, a.storage_key or "", a.sha256, a.content_type or "")
                  for a in session.scalars(sa.select(Asset).where(Asset.job_id == info.job_id).order_by(Asset.index))]
    replaced: list[tuple[uuid.UUID, str, str]] = []
    try:
        for asset_id, index, key, sha256, content_type in assets:
            target = keys[index] if index < len(keys) else None
            if target is None or key == target:
                continue
            data = c.storage.read(key, c.settings.download_max_bytes)
            if data is None or hashlib.sha256(data).hexdigest() != sha256:
                raise TransientStoreError(f"stored image {index} is missing or changed; storing it again")
            upload(c.http, c.storage.presign_put(target, content_type, PRESIGN_SECONDS), data, content_type,
                   TRANSFER_TIMEOUT)
            landed = c.storage.head(target)
            if landed is None or landed.size != len(data) or (landed.sha256 and landed.sha256 != sha256):
                raise TransientStoreError(f"the copy of image {index} at its stable key did not verify")
            replaced.append((asset_id, key, target))
    except (ImageError, StorageError) as exc:
        raise TransientStoreError(str(exc)) from None
    return replaced


def _give_up(c: Context, job_id: uuid.UUID, problem: tuple[str, str]) -> str:
    code, message = problem
    with c.session() as session:
        metrics.incr(session, "orchestrator_storage_failures_total", reason=code)
        state.fail(session, job_id, code, message[:2000], expect=[JobState.storing],
                   detail={"error": message, "code": code, "retryable": True})
    return f"failed: {code}"
