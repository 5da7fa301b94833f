"""The one small interface every provider adapter implements.

Conventions shared by all adapters:
- `submit`, `poll` and `cancel` raise a `ProviderError` (see `errors.py`) when the *call*
  fails: timeouts, 5xx, 429, bad key. A raised `TransientProviderError` means "repeat this
  call later"; it never means the job failed.
- `poll` and `parse_webhook` report the *job's* fate in an `Outcome`. A failed job carries its
  error in `Outcome.error`; `error.retry_job` tells whether a new attempt may succeed.
- Adapters never touch the database, never sleep and never retry on their own: the caller
  (a Celery task) owns backoff, the breaker and attempt counting.
- What differs between providers and matters outside the adapter is said here, once: the
  `Capabilities` flags, the webhook methods (`verify_webhook`, `claimed_request_id`,
  `event_key`) and the request body (`build_payload`). Callers ask the adapter (or
  `registry`), never `provider == "..."`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from orchestrator import jsonbody
from orchestrator.providers.errors import ProviderError

if TYPE_CHECKING:
    from orchestrator.catalog import ModelSpec

Lane = Literal["interactive", "bulk"]
OutcomeStatus = Literal["pending", "succeeded", "failed", "fetch_result"]
PriceRounding = Literal["ceil", "exact"]
# Event keys are stored in a 300-character column (deliveries.event_key).
EVENT_KEY_CHARS = 300


@dataclass(frozen=True)
class Capabilities:
    """How a provider behaves where it matters to the rest of the orchestrator."""

    # All of a job's images arrive in one result (fal), so fewer than asked for is a failed
    # generation; else (Runware) one webhook per image, and the job collects them as they come.
    images_together: bool
    # The provider knows a request by the task id we chose (Runware's taskUUID), so a submit
    # whose answer was lost can be looked up at once; else (fal) only by the id the provider
    # assigns in that answer, and a callback that beats the answer waits ("held").
    knows_our_task_id: bool
    # The provider reports what each image cost (Runware's includeCost); else (fal) the price
    # table prices it, and syncing that table with the provider's prices matters.
    reports_cost: bool
    # How the provider counts billed megapixels: "ceil" per image (fal) or "exact" pro rata.
    price_rounding: PriceRounding
    # The provider can PUT a finished image to a presigned URL itself (Runware's uploadEndpoint),
    # one URL per request: SubmitRequest.upload_url. Its request id is our task id
    # (knows_our_task_id), so the store step finds the upload under that id (storage.staging_key).
    direct_upload: bool


@dataclass(frozen=True)
class ProviderSettings:
    """One provider account's configuration (built by `Settings.provider(name)`)."""

    name: str
    api_key: str = field(repr=False)
    base_url: str
    max_in_flight: int
    rate_per_second: float
    # Only some providers use these (today fal: JWKS URL, user id, Platform API); "" = unused.
    signing_keys_url: str = ""
    account_id: str = ""
    pricing_url: str = ""


@dataclass(frozen=True)
class SubmitRequest:
    """One provider request: model input plus where to call back."""

    model: str
    payload: dict[str, Any]
    webhook_url: str
    lane: Lane
    # UUIDv4 unique per job attempt: Runware's taskUUID; fal assigns its own id and ignores it.
    task_id: str
    # A presigned PUT URL for the request's one image (only with Capabilities.direct_upload).
    upload_url: str | None = field(default=None, repr=False)


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
    """Submit, poll, cancel and parse webhooks for one provider.

    `capabilities`, `webhook_headers`, `build_payload`, `claimed_request_id` and `event_key`
    need no account: adapters define them on the class, so `registry` answers them by name.
    """

    name: str
    capabilities: ClassVar[Capabilities]
    # Request headers the webhook receiver keeps with a delivery (signatures, for the audit).
    webhook_headers: ClassVar[tuple[str, ...]]

    @staticmethod
    def build_payload(spec: ModelSpec, params: Mapping[str, Any]) -> dict[str, Any]:
        """Map stored (normalized) parameters onto this provider's request body."""
        ...

    def verify_webhook(self, headers: Mapping[str, str], raw: bytes) -> None:
        """Check a callback's authenticity beyond its URL token; raise WebhookRejected if not.

        A TransientProviderError means it cannot be checked right now (answer 5xx: redelivered).
        """
        ...

    @staticmethod
    def claimed_request_id(headers: Mapping[str, str], raw: bytes) -> tuple[str | None, str]:
        """The provider request a delivery says it is about, or (None, why not)."""
        ...

    @staticmethod
    def event_key(job_id: uuid.UUID, attempt: int, request_id: str, raw: bytes) -> str:
        """What identifies one provider event, so its redeliveries are stored once."""
        ...

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


def event_key_prefix(provider: str, job_id: uuid.UUID, attempt: int, request_id: str) -> str:
    """The start of every event key.

    It names the job and attempt as well as the provider request, so a delivery stored for one
    job or attempt can never make another's genuine delivery look like a duplicate.
    """
    return f"{provider}:{job_id}:{attempt}:{request_id}"


def webhook_json(raw: bytes) -> Any:
    """A callback body as JSON, or None when it is malformed or hostile (too deep, huge numbers)."""
    try:
        return jsonbody.loads(raw)
    except jsonbody.BodyProblem:
        return None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value by its lower-case name, whatever case the sender used; None if empty."""
    return {k.lower(): v for k, v in headers.items()}.get(name) or None


def total_cost(images: tuple[ImageRef, ...]) -> float | None:
    """Sum the per-image costs, or None when the provider reported none."""
    costs = [img.cost for img in images if img.cost is not None]
    return round(sum(costs), 10) if costs else None
