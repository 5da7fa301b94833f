"""The one small interface every provider adapter implements.

Conventions shared by all adapters:
- `submit`, `poll` and `cancel` raise a `ProviderError` (see `errors.py`) when the *call*
  fails: timeouts, 5xx, 429, bad key. A raised `TransientProviderError` means "repeat this
  call later"; it never means the job failed.
- `poll` and `parse_webhook` report the *job's* fate in an `Outcome`. A failed job carries its
  error in `Outcome.error`; `error.retry_job` tells whether a new attempt may succeed.
- Adapters never touch the database, never sleep and never retry on their own: the caller
  (a Celery task) owns backoff, the breaker and attempt counting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from orchestrator.providers.errors import ProviderError

Lane = Literal["interactive", "bulk"]
OutcomeStatus = Literal["pending", "succeeded", "failed", "fetch_result"]


@dataclass(frozen=True)
class SubmitRequest:
    """One provider request: model input plus where to call back."""

    model: str
    payload: dict[str, Any]
    webhook_url: str
    lane: Lane
    # UUIDv4 unique per job attempt: Runware's taskUUID; fal assigns its own id and ignores it.
    task_id: str


@dataclass(frozen=True)
class Submitted:
    """The provider accepted a request; `meta` holds provider extras (fal: its queue URLs)."""

    request_id: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRef:
    """One generated image as reported by the provider, before we copy it."""

    url: str
    # Position within this poll or delivery. A Runware webhook carries one image per POST, so
    # its caller numbers images by arrival, keyed by provider_image_id.
    index: int
    provider_image_id: str | None = None  # Runware imageUUID, the de-duplication key
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    seed: int | None = None  # fal seeds can exceed 2**63: keep Python ints, not int64
    nsfw: bool | None = None
    cost: float | None = None


@dataclass(frozen=True)
class Outcome:
    """What a poll or webhook says about a job.

    - `pending`: still queued or running (partial images may be listed).
    - `succeeded`: `images` are ready (for a Runware webhook: the images of this delivery).
    - `failed`: `error` says why; `images` may list what finished before the failure.
    - `fetch_result`: finished, but the webhook had no result body; call `poll` to fetch it.
    """

    status: OutcomeStatus
    images: tuple[ImageRef, ...] = ()
    error: ProviderError | None = None
    cost: float | None = None
    request_id: str | None = None


class ProviderAdapter(Protocol):
    """Submit, poll, cancel and parse webhooks for one provider."""

    name: str

    def submit(self, req: SubmitRequest) -> Submitted:
        """Queue `req` with the provider; raises ProviderError if it was not accepted."""
        ...

    def poll(
        self,
        model: str,
        request_id: str,
        expected_images: int,
        meta: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Ask the provider for the current state of a submitted request."""
        ...

    def cancel(self, model: str, request_id: str, meta: Mapping[str, Any] | None = None) -> bool:
        """Try to cancel; True if the provider accepted the cancellation."""
        ...

    def parse_webhook(self, body: bytes) -> Outcome:
        """Interpret a webhook body whose authenticity the caller has already checked."""
        ...


def total_cost(images: tuple[ImageRef, ...]) -> float | None:
    """Sum the per-image costs, or None when the provider reported none."""
    costs = [img.cost for img in images if img.cost is not None]
    return round(sum(costs), 10) if costs else None
