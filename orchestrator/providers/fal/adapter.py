"""fal queue adapter: submit with a webhook, poll status then result, cancel, parse webhooks."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode, urlsplit

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
    header,
    webhook_json,
)
from orchestrator.providers.errors import (
    AuthenticationFailed,
    InsufficientCredits,
    ProviderError,
    RateLimited,
    TransientProviderError,
    WebhookRejected,
)
from orchestrator.providers.fal import parse as fal_parse
from orchestrator.providers.fal import payload
from orchestrator.providers.fal.parse import PROVIDER, Context, QueueUrls
from orchestrator.providers.fal.signature import DEFAULT_JWKS_URL, SIGNED_HEADERS, InvalidSignature, shared_jwks
from orchestrator.redact import redact_text

if TYPE_CHECKING:
    from orchestrator.catalog import ModelSpec

DEFAULT_QUEUE_URL = "https://queue.fal.run"
_SUBMIT_META = ("status_url", "response_url", "cancel_url", "queue_position", "gateway_request_id")
# Errors about the call itself, not the job: the caller must back off and call again.
_CALL_ERRORS = (AuthenticationFailed, InsufficientCredits, RateLimited)


class FalAdapter:
    """Talks to fal's queue API (`ORCH_FAL_QUEUE_URL`) with `Authorization: Key <key>`."""

    name = PROVIDER
    DEFAULT_BASE_URL: ClassVar[str] = DEFAULT_QUEUE_URL
    capabilities: ClassVar[Capabilities] = Capabilities(
        images_together=True, knows_our_task_id=False, reports_cost=False, price_rounding="ceil",
        direct_upload=False)
    webhook_headers: ClassVar[tuple[str, ...]] = SIGNED_HEADERS  # kept for the audit

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_QUEUE_URL,
        client: httpx.Client | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        status_logs: bool = False,
        jwks_url: str = DEFAULT_JWKS_URL,
        user_id: str = "",
    ) -> None:
        self._key = api_key
        self._base = base_url.rstrip("/")
        self._client = client or new_client(timeout)
        self._timeout = timeout
        self._status_logs = status_logs
        self._jwks_url = jwks_url
        self._user_id = user_id

    @classmethod
    def from_settings(cls, settings: ProviderSettings, client: httpx.Client | None = None) -> FalAdapter:
        """The adapter for one configured fal account (ORCH_FAL_*, FAL_KEY)."""
        return cls(settings.api_key, settings.base_url or cls.DEFAULT_BASE_URL, client,
                   jwks_url=settings.signing_keys_url or DEFAULT_JWKS_URL, user_id=settings.account_id)

    @staticmethod
    def build_payload(spec: ModelSpec, params: Mapping[str, Any]) -> dict[str, Any]:
        """Stored parameters as fal's model input (see `payload`)."""
        return payload.build_payload(spec, params)

    def submit(self, req: SubmitRequest) -> Submitted:
        """POST the model input to the full endpoint id with `?fal_webhook=`."""
        path = "/".join(fal_parse.endpoint_segments(req.model))
        # urlencode percent-encodes the whole callback URL (":" and "/" too), as fal_client does.
        url = f"{self._base}/{path}?{urlencode({'fal_webhook': req.webhook_url})}"
        priority = "low" if req.lane == "bulk" else "normal"
        headers = {**self._headers(), "X-Fal-Queue-Priority": priority}
        secrets = (req.webhook_url,)
        response = self._send("POST", url, secrets, json=req.payload, headers=headers)
        if not response.is_success:
            raise self._error(response, "submit", secrets)
        body = _json_object(response)
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise TransientProviderError(
                PROVIDER, "submit response has no request_id", response.status_code, "malformed_response"
            )
        meta = {key: body[key] for key in _SUBMIT_META if body.get(key) is not None}
        return Submitted(request_id=request_id, meta=meta)

    def poll(
        self,
        model: str,
        request_id: str,
        expected_images: int,
        meta: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """GET status; once COMPLETED, GET the result and turn it into an Outcome."""
        urls = self._urls(model, request_id, meta)
        params = {"logs": "1" if self._status_logs else "0"}
        response = self._send("GET", urls.status, (), params=params, headers=self._headers())
        if response.status_code == 202:
            return Outcome("pending", request_id=request_id)
        if not response.is_success:
            return self._job_failure(self._error(response, "status"), request_id, job_known_failed=False)
        body = _json_object(response)
        state = body.get("status")
        if state in ("IN_QUEUE", "IN_PROGRESS"):
            return Outcome("pending", request_id=request_id)
        if state != "COMPLETED":
            raise TransientProviderError(
                PROVIDER, f"unknown queue status {state!r}", response.status_code, "unknown_status"
            )
        return self._fetch_result(urls, request_id, expected_images, status_error=bool(body.get("error")))

    def fetch_result(
        self, model: str, request_id: str, expected_images: int, meta: Mapping[str, Any] | None = None
    ) -> Outcome:
        """GET the result directly, skipping status: the answer to a `fetch_result` webhook."""
        return self._fetch_result(self._urls(model, request_id, meta), request_id, expected_images)

    def _fetch_result(
        self, urls: QueueUrls, request_id: str, expected_images: int, *, status_error: bool = False
    ) -> Outcome:
        """GET the result of a COMPLETED request and turn it into an Outcome."""
        response = self._send("GET", urls.response, (), headers=self._headers())
        if response.is_success:
            return fal_parse.result_outcome(json_body(response), request_id, expected_images)
        error = self._error(response, "result")
        return self._job_failure(error, request_id, job_known_failed=status_error)

    def cancel(self, model: str, request_id: str, meta: Mapping[str, Any] | None = None) -> bool:
        """PUT cancel; True when accepted (200/202), False when finished or unknown (400/404)."""
        url = self._urls(model, request_id, meta).cancel
        response = self._send("PUT", url, (), headers=self._headers())
        if response.status_code in (200, 202):
            return True
        if response.status_code in (400, 404, 410):
            return False
        raise self._error(response, "cancel")

    def parse_webhook(self, body: bytes) -> Outcome:
        """Interpret a verified fal webhook body."""
        return fal_parse.parse_webhook_body(body)

    def verify_webhook(self, headers: Mapping[str, str], raw: bytes) -> None:
        """fal signs its webhooks (Ed25519, published keys): check it, and whose account it was.

        JwksUnavailable (a TransientProviderError) passes through: the keys cannot be fetched
        now, so the receiver answers 5xx and fal delivers again later.
        """
        try:
            shared_jwks(self._jwks_url).verify(headers, raw)
        except InvalidSignature as exc:
            raise WebhookRejected(f"bad signature: {exc}") from None
        if self._user_id and (header(headers, "x-fal-webhook-user-id") or "") != self._user_id:
            raise WebhookRejected("signed for another fal user")

    @staticmethod
    def claimed_request_id(headers: Mapping[str, str], raw: bytes) -> tuple[str | None, str]:
        """The request id fal signed (header) or sent (body); they must agree when both are given."""
        signed = header(headers, "x-fal-webhook-request-id")
        body = webhook_json(raw)
        in_body = body.get("request_id") if isinstance(body, dict) else None
        in_body = in_body if isinstance(in_body, str) and in_body else None
        if signed and in_body and signed != in_body:
            return None, "the signed request id and the body's request_id differ"
        found = signed or in_body
        return (found, "") if found else (None, "the delivery names no request id")

    @staticmethod
    def event_key(job_id: uuid.UUID, attempt: int, request_id: str, raw: bytes) -> str:
        """fal posts one final webhook per request: the request is the event (hashed when too long)."""
        key = event_key_prefix(PROVIDER, job_id, attempt, request_id)
        if len(key) <= EVENT_KEY_CHARS:
            return key
        return key[:200] + ":sha256:" + hashlib.sha256(key.encode()).hexdigest()

    def _job_failure(self, error: ProviderError, request_id: str, *, job_known_failed: bool) -> Outcome:
        """Return a failed Outcome, or raise when the error concerns only this call."""
        if isinstance(error, _CALL_ERRORS):
            raise error
        # A 5xx while fetching the result of a request that fal reported as fine is most
        # likely a glitch on the way: poll again instead of paying for a new attempt.
        if isinstance(error, TransientProviderError) and not job_known_failed:
            raise error
        return Outcome("failed", error=error, request_id=request_id)

    def _urls(self, model: str, request_id: str, meta: Mapping[str, Any] | None) -> QueueUrls:
        """Follow fal's returned URLs when they point at our configured host; else build them."""
        built = fal_parse.build_urls(self._base, model, request_id)
        meta = meta or {}
        return QueueUrls(
            status=self._trusted(meta.get("status_url")) or built.status,
            response=self._trusted(meta.get("response_url")) or built.response,
            cancel=self._trusted(meta.get("cancel_url")) or built.cancel,
        )

    def _trusted(self, url: Any) -> str | None:
        """Return `url` only if it shares scheme and host with the base, so the key stays home."""
        if not isinstance(url, str):
            return None
        given, base = urlsplit(url), urlsplit(self._base)
        same = (given.scheme, given.netloc) == (base.scheme, base.netloc)
        return url if same else None

    def _headers(self) -> dict[str, str]:
        """Auth header for every fal call."""
        return {"Authorization": f"Key {self._key}"}

    def _send(self, method: str, url: str, secrets: tuple[str, ...], **kwargs: Any) -> httpx.Response:
        """Send through the pooled client with our timeout and error mapping."""
        all_secrets = (self._key, *secrets)
        return send(self._client, PROVIDER, method, url, secrets=all_secrets, timeout=self._timeout, **kwargs)

    def _error(self, response: httpx.Response, context: Context, secrets: tuple[str, ...] = ()) -> ProviderError:
        """Map a non-2xx fal response onto our error tree."""
        all_secrets = (self._key, *secrets)
        message, parameter, code = fal_parse.error_parts(json_body(response))
        message = redact_text(message, all_secrets) if message else text_snippet(response, all_secrets)
        return fal_parse.build_error(
            response.status_code,
            message,
            context,
            code=code or response.headers.get("x-fal-error-type"),
            parameter=parameter,
            retryable=fal_parse.parse_bool_header(response.headers.get("x-fal-retryable")),
            retry_after=retry_after(response),
        )


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The JSON object in a response body, or an empty dict."""
    body = json_body(response)
    return body if isinstance(body, dict) else {}
