"""Runware REST adapter: async imageInference with a webhook, getResponse polling, webhooks."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from orchestrator.providers._http import (
    DEFAULT_TIMEOUT,
    json_body,
    new_client,
    retry_after,
    send,
    text_snippet,
)
from orchestrator.providers.base import (
    EVENT_KEY_CHARS,
    Capabilities,
    Outcome,
    ProviderSettings,
    SubmitRequest,
    Submitted,
    event_key_prefix,
    webhook_json,
)
from orchestrator.providers.errors import (
    AuthenticationFailed,
    InsufficientCredits,
    PermanentProviderError,
    ProviderError,
    RateLimited,
)
from orchestrator.providers.runware import parse as runware_parse
from orchestrator.providers.runware import payload
from orchestrator.providers.runware.parse import PROVIDER, Context
from orchestrator.redact import redact_text

if TYPE_CHECKING:
    from orchestrator.catalog import ModelSpec

DEFAULT_API_URL = "https://api.runware.ai/v1"
# Statuses that describe the whole HTTP call, not our task: raise so the caller backs off.
_CALL_STATUSES = frozenset({401, 402, 403, 408, 429})
_CALL_ERRORS = (AuthenticationFailed, InsufficientCredits, RateLimited)


class RunwareAdapter:
    """Talks to Runware's task API (`ORCH_RUNWARE_API_URL`) with `Authorization: Bearer`."""

    name = PROVIDER
    DEFAULT_BASE_URL: ClassVar[str] = DEFAULT_API_URL
    capabilities: ClassVar[Capabilities] = Capabilities(
        images_together=False, knows_our_task_id=True, reports_cost=True, price_rounding="exact",
        direct_upload=True)
    webhook_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_API_URL,
        client: httpx.Client | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._key = api_key
        self._url = base_url.rstrip("/")
        self._client = client or new_client(timeout)
        self._timeout = timeout

    @classmethod
    def from_settings(cls, settings: ProviderSettings, client: httpx.Client | None = None) -> RunwareAdapter:
        """The adapter for one configured Runware account (ORCH_RUNWARE_API_URL, RUNWARE_API_KEY)."""
        return cls(settings.api_key, settings.base_url or cls.DEFAULT_BASE_URL, client)

    @staticmethod
    def build_payload(spec: ModelSpec, params: Mapping[str, Any]) -> dict[str, Any]:
        """Stored parameters as an imageInference task (see `payload`)."""
        return payload.build_payload(spec, params)

    def submit(self, req: SubmitRequest) -> Submitted:
        """POST one async imageInference task; the acknowledgement carries no images."""
        _check_task_uuid(req.task_id)
        # Our protocol fields win over the payload: a payload must not redirect the webhook,
        # switch to sync delivery or reuse another task's UUID.
        task = {
            **req.payload,
            "taskType": "imageInference",
            "taskUUID": req.task_id,
            "model": req.model,
            "deliveryMethod": "async",
            "webhookURL": req.webhook_url,
            "includeCost": True,
        }
        # Only our own presigned URL goes here (a native field must not send images elsewhere).
        task.pop("uploadEndpoint", None)
        secrets: tuple[str, ...] = (req.webhook_url,)
        if req.upload_url:
            task["uploadEndpoint"] = req.upload_url
            secrets += (req.upload_url,)
        response, body = self._post(task, secrets)
        errors = _task_errors(body, req.task_id)
        if errors or not response.is_success:
            raise self._error(response, errors, "submit", secrets)
        return Submitted(request_id=req.task_id, meta={})

    def poll(
        self,
        model: str,
        request_id: str,
        expected_images: int,
        meta: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """POST getResponse and fold the cumulative reply into an Outcome."""
        response, body = self._post({"taskType": "getResponse", "taskUUID": request_id}, ())
        errors = _task_errors(body, request_id)
        call_failed = response.status_code in _CALL_STATUSES or response.status_code >= 500
        if call_failed or (not response.is_success and not errors):
            raise self._error(response, errors, "poll", ())
        status = None if response.is_success else response.status_code
        outcome = runware_parse.collect(body, request_id, max(expected_images, 1), "poll", status)
        if isinstance(outcome.error, _CALL_ERRORS):
            raise outcome.error
        return outcome

    def cancel(self, model: str, request_id: str, meta: Mapping[str, Any] | None = None) -> bool:
        """Runware has no cancel operation; the task runs to completion."""
        return False

    def parse_webhook(self, body: bytes) -> Outcome:
        """Interpret one webhook POST (wrapped, flat, `errors[]` or legacy `error`)."""
        return runware_parse.parse_webhook_body(body)

    def verify_webhook(self, headers: Mapping[str, str], raw: bytes) -> None:
        """Runware signs nothing: the per-attempt token in the callback URL is its only proof."""

    @staticmethod
    def claimed_request_id(headers: Mapping[str, str], raw: bytes) -> tuple[str | None, str]:
        """The one taskUUID the delivery's items name."""
        data, errors = runware_parse.split_body(webhook_json(raw))
        tasks = {str(item["taskUUID"]) for item in data + errors if item.get("taskUUID")}
        if len(tasks) > 1:
            return None, "the delivery names several taskUUIDs"
        if not tasks:
            return None, "the delivery names no taskUUID"
        return tasks.pop(), ""

    @staticmethod
    def event_key(job_id: uuid.UUID, attempt: int, request_id: str, raw: bytes) -> str:
        """Runware sends one POST per image, all with the same taskUUID: each image is its own event."""
        key = event_key_prefix(PROVIDER, job_id, attempt, request_id)
        data, errors = runware_parse.split_body(webhook_json(raw))
        parts = sorted([str(i.get("imageUUID")) for i in data if i.get("imageUUID")]
                       + [f"error:{i.get('code')}" for i in errors])
        detail = ",".join(parts) if parts else "sha256:" + hashlib.sha256(raw).hexdigest()
        if len(key) + len(detail) > EVENT_KEY_CHARS - 1:
            detail = "sha256:" + hashlib.sha256(detail.encode()).hexdigest()
        return f"{key}:{detail}"[:EVENT_KEY_CHARS]

    def _post(self, task: dict[str, Any], secrets: tuple[str, ...]) -> tuple[httpx.Response, Any]:
        """POST one task (always inside an array) and decode the reply."""
        headers = {"Authorization": f"Bearer {self._key}"}
        response = send(
            self._client,
            PROVIDER,
            "POST",
            self._url,
            secrets=(self._key, *secrets),
            timeout=self._timeout,
            json=[task],
            headers=headers,
        )
        return response, json_body(response)

    def _error(
        self,
        response: httpx.Response,
        errors: list[dict[str, Any]],
        context: Context,
        secrets: tuple[str, ...],
    ) -> ProviderError:
        """Classify a failed call from its first error item and HTTP status."""
        status = response.status_code if not response.is_success else None
        error = runware_parse.build_error(
            status,
            errors[0] if errors else None,
            context,
            fallback_message=text_snippet(response, (self._key, *secrets)),
            retry_after=retry_after(response),
        )
        error.status_code = response.status_code
        return _redacted(error, (self._key, *secrets))


def _task_errors(body: Any, task_uuid: str) -> list[dict[str, Any]]:
    """Error items of a reply that concern our task."""
    _, errors = runware_parse.split_body(body)
    return [item for item in errors if runware_parse.belongs_to(item, task_uuid)]


def _check_task_uuid(task_id: str) -> None:
    """Runware requires a UUIDv4 taskUUID; fail before spending a request."""
    try:
        valid = uuid.UUID(task_id).version == 4
    except ValueError:
        valid = False
    if not valid:
        raise PermanentProviderError(PROVIDER, "task_id must be a UUIDv4", code="invalidTaskUUID", parameter="taskUUID")


def _redacted(error: ProviderError, secrets: tuple[str, ...]) -> ProviderError:
    """Scrub our own secrets (key, webhook URL) from a provider-supplied message."""
    error.message = redact_text(error.message, secrets)
    error.args = (error.message,)
    return error
