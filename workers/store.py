"""The store step: copy every image of a job into the user's storage, verified, exactly once.

Each image is downloaded from an allow-listed host (size-capped, streamed, with a deadline),
checked to decode as the format and size the job asked for, hashed, and PUT to a freshly
presigned URL. The asset row is marked stored with a conditional UPDATE, so a second run of
the task (redelivery, sweep) never records an image twice; the object key is deterministic,
so a repeated upload overwrites the same object rather than adding one.

A single-image Runware job on S3-compatible storage was given an upload URL at submit: its image
is verified from the bucket and copied into place instead (workers.direct_upload), and only
downloaded when that upload is absent or invalid. The image_stored event and the
orchestrator_images_stored_total counter say which path each image took.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from celery import shared_task
from sqlalchemy.orm import Session

from orchestrator import catalog_runs, metrics, queue, state
from orchestrator.db import utcnow
from orchestrator.log import bound
from orchestrator.models import Asset, Job, JobState
from orchestrator.storage.base import StorageError, object_key
from orchestrator.storage.images import (
    DownloadFailed,
    ImageError,
    VerifiedImage,
    download_image,
    upload,
    verify_image,
)
from workers import direct_upload
from workers.celery_app import TASK_OPTS
from workers.context import Context, ctx, on_results_arrived
from workers.direct_upload import Staged, UploadPending

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
    attempt: int
    catalog_ref: dict[str, Any] | None = None
    staged: Staged | None = None  # the provider was given an upload URL for the one image


@dataclass(frozen=True)
class Plan:
    """What a store run copies: the job's facts and its images not stored yet."""

    info: JobInfo
    pending: list[Pending]


@dataclass(frozen=True)
class Stored:
    """One image copied and verified, not yet recorded."""

    item: Pending
    key: str
    image: VerifiedImage
    path: str = "download"  # or "direct" (the provider's upload, verified), "fallback" (that failed: downloaded)
    why: str | None = None  # why a fallback was needed


@shared_task(name=queue.STORE_JOB, bind=True, max_retries=6, **TASK_OPTS)
def store_job(self, job_id: str) -> str:
    """Store a job's images; transient failures retry with backoff, then the sweep resumes."""
    try:
        return store(ctx(), uuid.UUID(job_id))
    except UploadPending as exc:
        # A fresh message, not a Celery retry: waiting for the upload is not a failure.
        ctx().publisher.send(queue.STORE_JOB, job_id, countdown=exc.countdown)
        return str(exc)
    except TransientStoreError as exc:
        with ctx().session() as session:
            metrics.incr(session, "orchestrator_storage_failures_total", reason="transient")
        if self.request.retries >= self.max_retries:
            return f"gave up for now: {exc}"
        raise self.retry(countdown=min(60, 2 ** self.request.retries), exc=exc) from None


class TransientStoreError(Exception):
    """A download or upload failed in a way worth retrying."""


@on_results_arrived
def store_now(c: Context, job_id: uuid.UUID, known: tuple[Job, list[Asset]] | None = None) -> None:
    """Results arrived in this worker's transaction: store them at once, in this thread.

    `known` is the job and its images as that transaction saw them (so nothing is read again);
    a transient failure hands the job to the store_job task, which retries with backoff.
    """
    try:
        store(c, job_id, plan_of(c, *known) if known else None)
    except UploadPending as exc:
        c.publisher.send(queue.STORE_JOB, str(job_id), countdown=exc.countdown)
    except TransientStoreError:
        c.publisher.send(queue.STORE_JOB, str(job_id), countdown=1.0)
    except Exception:
        log.exception("store failed; handing it to the store task", extra={"job_id": str(job_id)})
        c.publisher.send(queue.STORE_JOB, str(job_id), countdown=1.0)


def plan_of(c: Context, job: Job, assets: list[Asset]) -> Plan:
    """The store plan of a job entering `storing`, from the rows its transaction holds."""
    pending = [Pending(a.id, a.index, a.source_url or "") for a in sorted(assets, key=lambda a: a.index)
               if a.stored_at is None]
    return Plan(_info(c, job), pending)


def store(c: Context, job_id: uuid.UUID, plan: Plan | None = None) -> str:
    """Store every pending image of a storing job, then mark it succeeded.

    The images are recorded and the job finished in one transaction at the end; a failure part
    way records what was copied so far (a re-run copies only the rest; a repeated copy of an
    image overwrites its deterministic key with the same bytes).
    """
    plan = plan or _read_plan(c, job_id)
    if plan is None:
        return "skipped"
    info, stored = plan.info, []
    with bound(job_id=job_id, batch_id=info.batch_id):
        try:
            for item in plan.pending:
                copied = _store_one(c, info, item)
                if not isinstance(copied, Stored):
                    return _give_up(c, info, copied, stored)
                stored.append(copied)
        except TransientStoreError:
            if stored:
                with c.session() as session:
                    _record(c, session, info, stored)
            raise
        return _finish(c, info, stored)


def _read_plan(c: Context, job_id: uuid.UUID) -> Plan | None:
    """The plan of a storing job, read in one statement (None if it is not storing)."""
    with c.session() as session:
        rows = session.execute(
            sa.select(Job, Asset).outerjoin(Asset, sa.and_(Asset.job_id == Job.id, Asset.stored_at.is_(None)))
            .where(Job.id == job_id, Job.state == JobState.storing).order_by(Asset.index)).all()
    if not rows:
        return None
    return plan_of(c, rows[0][0], [asset for _, asset in rows if asset is not None])


def _info(c: Context, job: Job) -> JobInfo:
    p = job.params
    staged = None
    if job.provider_request_id and direct_upload.offered(c, job.provider, job.num_images):
        # The request whose result the job took (an adopted earlier attempt's too) named the staging
        # key; the wait for its upload counts from the result's arrival (entering storing).
        key = direct_upload.final_key(job.tenant, job.batch_id, job.position, job.custom_id, p["output_format"])
        staged = Staged(job.provider_request_id, key, p["output_format"], p["width"], p["height"],
                        job.callback_at or job.updated_at)
    return JobInfo(job.id, job.tenant, job.batch_id, job.position, job.custom_id, p["output_format"],
                   p["width"], p["height"], job.provider, job.attempt, job.catalog_ref, staged)


def _store_one(c: Context, info: JobInfo, item: Pending) -> Stored | tuple[str, str]:
    """Copy one image; returns (code, message) for a permanent problem, raises on transient ones.

    Raises UploadPending while a direct upload may still land.
    """
    if info.staged is not None:
        image, why = direct_upload.take(c, info.staged)
        if image is not None:
            direct_upload.discard(c, info.staged)
            return Stored(item, info.staged.final_key, image, "direct")
    try:
        key, image = _download_and_put(c, info, item)
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
    if info.staged is None:
        return Stored(item, key, image)
    direct_upload.discard(c, info.staged)  # it may hold a corrupted upload
    return Stored(item, key, image, "fallback", why)


def _download_and_put(c: Context, info: JobInfo, item: Pending) -> tuple[str, VerifiedImage]:
    """Download the provider's image, verify it and PUT it to its key through a presigned URL."""
    s = c.settings
    data = download_image(c.download_http, item.url, allowed_hosts=s.allowed_hosts(),
                          max_bytes=s.download_max_bytes, timeout=TRANSFER_TIMEOUT)
    image = verify_image(data, expected_format=info.fmt, width=info.width, height=info.height)
    key = object_key(info.tenant, str(info.batch_id), info.position, info.custom_id, item.index, image.ext)
    upload(c.http, c.storage.presign_put(key, image.content_type, PRESIGN_SECONDS), data, image.content_type,
           TRANSFER_TIMEOUT)
    return key, image


def _record(c: Context, session: Session, info: JobInfo, stored: list[Stored]) -> None:
    """Mark copied images stored (each once: the UPDATE is conditional) and put them on the timeline.

    An image a concurrent run recorded first gets no second event and is not counted again.
    """
    now = utcnow()
    recorded = [s for s in stored if session.execute(
        sa.update(Asset.__table__).where(Asset.id == s.item.asset_id, Asset.stored_at.is_(None)).values(
            storage_key=s.key, content_type=s.image.content_type, width=s.image.width,
            height=s.image.height, bytes=s.image.size, sha256=s.image.sha256, stored_at=now)
        ).rowcount]  # type: ignore[attr-defined]
    for s in recorded:  # written with the transaction's other timeline rows, in one INSERT
        state.add_event(session, info.job_id, "image_stored", 0,
                        {"index": s.item.index, "key": s.key, "sha256": s.image.sha256, "path": s.path,
                         **({"fallback_reason": s.why} if s.why else {})}, at=now)
        c.tally.add("orchestrator_images_stored_total", provider=info.provider, path=s.path)


def _code(exc: ImageError) -> str:
    """A stable error code from the exception class: InvalidImage -> invalid_image."""
    name = type(exc).__name__
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")


def _finish(c: Context, info: JobInfo, stored: list[Stored]) -> str:
    """Record the copies and move the job to succeeded, in one transaction once all are stored."""
    ref = info.catalog_ref
    if ref and ref.get("keys"):
        return _finish_catalog(c, info, stored, ref)
    with c.session() as session:
        # The job is finished from what the store run knows of it (state storing, its attempt),
        # re-checked by the UPDATE itself; the timeline rows go out in one INSERT at the commit.
        # Its plan covers every image it had: none is added to a job in `storing` (reconcile
        # ignores results then), so recording them all completes it.
        moved = state.transition(session, info.job_id, JobState.succeeded, kind="stored", expect=[JobState.storing],
                                 locked=state.Known(JobState.storing, info.batch_id, info.attempt, info.provider))
        _record(c, session, info, stored)
        if not moved.applied:
            missing = session.scalar(_missing(info.job_id)) or 0
    if moved.applied:
        return "succeeded"
    return f"{missing} images still pending" if missing else "unchanged"


def _missing(job_id: uuid.UUID) -> sa.Select[tuple[int]]:
    return sa.select(sa.func.count()).select_from(Asset).where(Asset.job_id == job_id, Asset.stored_at.is_(None))


def _finish_catalog(c: Context, info: JobInfo, stored: list[Stored], ref: dict[str, Any]) -> str:
    """A catalog row's job: its images also go to the row's stable keys, verified, before it succeeds."""
    with c.session() as session:
        _record(c, session, info, stored)
        missing = session.scalar(_missing(info.job_id)) or 0
    if missing:
        return f"{missing} images still pending"
    replaced = _to_stable_keys(c, info, ref["keys"])
    with c.session() as session:
        moved = state.transition(session, info.job_id, JobState.succeeded, kind="stored", expect=[JobState.storing])
        if moved.applied:
            for asset_id, _, key in replaced:
                session.execute(sa.update(Asset).where(Asset.id == asset_id).values(storage_key=key))
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


def _give_up(c: Context, info: JobInfo, problem: tuple[str, str], stored: list[Stored]) -> str:
    code, message = problem
    with c.session() as session:
        metrics.incr(session, "orchestrator_storage_failures_total", reason=code)
        _record(c, session, info, stored)  # what was copied stays accounted for
        state.fail(session, info.job_id, code, message[:2000], expect=[JobState.storing],
                   detail={"error": message, "code": code, "retryable": True})
    return f"failed: {code}"
