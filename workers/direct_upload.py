"""Direct upload: the provider PUTs a finished image into the user's bucket itself.

When the storage takes direct uploads (S3-compatible: `storage.base.DirectUploads`) and the
provider can make them (Runware's `uploadEndpoint`), a single-image job's request carries one
presigned PUT URL for a staging key named after the request (`storage.base.staging_key`).

Single-image jobs only: Runware takes one URL per task, and with numberResults > 1 its files
overwrite each other (shared/providers/runware.md (c)). A multi-image job keeps the download +
PUT path rather than becoming one task per image, since a job is one provider request
throughout (attempts, polling, cost, the in-flight limit).

The staging key needs only what the submit has at hand (the claimed row: task id, params); the
store step names the final key (`storage.base.object_key`, exactly as a download would).

The store step reads the staged object, verifies it exactly as it verifies a download (decodes,
format, dimensions, sha256) and has the store copy it to the final key, under the ETag it read
and with a server-computed SHA-256. A PUT that comes late, never or corrupted only ever touches
the staging key, so it cannot replace a verified image: the store step waits a little for it
(the PUT follows the webhook), then falls back to downloading the provider's URL.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.db import utcnow
from orchestrator.providers import registry
from orchestrator.storage.base import DirectUploads, StorageError, object_key, staging_key
from orchestrator.storage.images import ImageError, VerifiedImage, extension_for, verify_image
from workers.context import Context

log = logging.getLogger(__name__)
# The PUT comes when generation finishes, which a long provider queue can delay for hours.
UPLOAD_URL_SECONDS = 6 * 3600
# Between looks for an upload that has not landed yet.
MIN_RECHECK, MAX_RECHECK = 0.25, 2.0


class UploadPending(Exception):
    """The staged upload is not there yet: look again in `countdown` seconds."""

    def __init__(self, countdown: float) -> None:
        super().__init__(f"waiting for the provider's upload, again in {countdown:.2f}s")
        self.countdown = countdown


@dataclass(frozen=True)
class Staged:
    """Where a job's one image is uploaded to and stored at, and when its result arrived."""

    request_id: str
    final_key: str
    fmt: str
    width: int
    height: int
    results_at: datetime | None

    @property
    def key(self) -> str:
        """The staging key the provider was given."""
        return staging_key(self.request_id, extension_for(self.fmt))


def offered(c: Context, provider: str, num_images: int) -> bool:
    """Whether a job of `provider` with `num_images` images gets an upload URL."""
    return (c.settings.direct_upload and num_images == 1 and registry.capabilities(provider).direct_upload
            and isinstance(c.storage, DirectUploads))


def final_key(tenant: str, batch_id: uuid.UUID, position: int, custom_id: str, output_format: str) -> str:
    """The key the store step writes a single-image job's image to (the same either way)."""
    return object_key(tenant, str(batch_id), position, custom_id, 0, extension_for(output_format))


def upload_url(c: Context, job: Any) -> str | None:
    """The presigned PUT URL for a claimed job's attempt (its task id, provider and params), or None
    when direct upload is not offered."""
    if not job.task_id or not offered(c, job.provider, job.params["num_images"]):
        return None
    assert isinstance(c.storage, DirectUploads)
    key = staging_key(job.task_id, extension_for(job.params["output_format"]))
    return c.storage.presign_upload(key, UPLOAD_URL_SECONDS)


def take(c: Context, staged: Staged) -> tuple[VerifiedImage, None] | tuple[None, str]:
    """Verify the staged upload and copy it to the final key: (image, None), or (None, why not).

    Raises UploadPending while the upload is absent and the wait since the result is not over.
    """
    storage = c.storage
    assert isinstance(storage, DirectUploads)
    try:
        got = storage.read_tagged(staged.key, c.settings.download_max_bytes)
        if got is None:
            waited = (utcnow() - staged.results_at).total_seconds() if staged.results_at else float("inf")
            left = c.settings.direct_upload_wait_seconds - waited
            if left > 0:
                raise UploadPending(min(left, MAX_RECHECK, max(MIN_RECHECK, waited)))
            return None, "absent"
        data, etag = got
        image = verify_image(data, expected_format=staged.fmt, width=staged.width, height=staged.height)
        if not storage.copy_verified(staged.key, staged.final_key, etag=etag, sha256=image.sha256,
                                     content_type=image.content_type):
            return None, "changed"
    except ImageError as exc:
        return None, f"invalid: {exc}"
    except StorageError as exc:
        return None, f"storage: {exc}"
    return image, None


def discard(c: Context, staged: Staged) -> None:
    """Delete the staging object (best effort: an upload that lands even later stays behind)."""
    try:
        c.storage.delete(staged.key)
    except StorageError as exc:
        log.warning("could not delete the staged upload: %s", exc)
