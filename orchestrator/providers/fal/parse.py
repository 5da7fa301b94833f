"""Pure parsing for fal: endpoint ids and queue URLs, error bodies, outputs and webhook bodies."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from orchestrator.providers._http import as_int
from orchestrator.providers.base import ImageRef, Outcome
from orchestrator.providers.errors import (
    AuthenticationFailed,
    InsufficientCredits,
    NotFound,
    PermanentProviderError,
    ProviderError,
    RateLimited,
    ResultExpired,
    TransientProviderError,
)

PROVIDER = "fal"
Context = Literal["submit", "status", "result", "cancel", "webhook"]

# Namespaces whose endpoint ids carry one extra leading segment (fal.md, URL rule).
_NAMESPACES = frozenset({"workflows", "comfy"})
_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")
_WEBHOOK_STATUS = re.compile(r"status code:?\s*(\d{3})", re.IGNORECASE)
# 4xx codes that describe a passing condition rather than a bad request.
_RETRYABLE_4XX = frozenset({408, 409, 425})


@dataclass(frozen=True)
class QueueUrls:
    """Where to GET status and result and PUT cancel for one request."""

    status: str
    response: str
    cancel: str


def endpoint_segments(model: str) -> list[str]:
    """Split and validate an endpoint id such as `fal-ai/flux/dev`."""
    parts = model.strip("/").split("/")
    minimum = 3 if parts[0] in _NAMESPACES else 2
    valid = all(_SEGMENT.match(p) and p not in {".", ".."} for p in parts)
    if not valid or len(parts) < minimum:
        raise PermanentProviderError(
            PROVIDER, f"invalid fal endpoint id {model!r}", code="invalid_model", parameter="model"
        )
    return parts


def app_path(model: str) -> str:
    """Return the `owner/app` part used by status, result and cancel (no sub-path)."""
    parts = endpoint_segments(model)
    keep = 3 if parts[0] in _NAMESPACES else 2
    return "/".join(parts[:keep])


def build_urls(base: str, model: str, request_id: str) -> QueueUrls:
    """Build queue URLs with the owner/app rule, for when fal's own URLs are not at hand."""
    root = f"{base}/{app_path(model)}/requests/{quote(request_id, safe='')}"
    return QueueUrls(status=f"{root}/status", response=root, cancel=f"{root}/cancel")


def error_parts(body: Any) -> tuple[str | None, str | None, str | None]:
    """Return (message, parameter, code) from a fal error body (`detail` list or string)."""
    if not isinstance(body, dict):
        return None, None, None
    code = _str(body.get("error_type")) or _str(body.get("type"))
    detail = body.get("detail")
    if isinstance(detail, list) and detail:
        joined, parameter, item_code = _detail_list(detail)
        return joined, parameter, code or item_code
    if isinstance(detail, dict):
        return _str(detail.get("msg")) or _str(detail.get("message")), None, code
    return _str(detail) or _str(body.get("error")) or _str(body.get("message")), None, code


def _detail_list(detail: list[Any]) -> tuple[str, str | None, str | None]:
    """Flatten a pydantic-style `detail` list into one message, keeping the first loc."""
    messages: list[str] = []
    parameter = code = None
    for item in detail:
        if not isinstance(item, dict):
            messages.append(str(item))
            continue
        loc = _loc(item.get("loc"))
        msg = _str(item.get("msg")) or _str(item.get("message")) or "invalid value"
        messages.append(f"{loc}: {msg}" if loc else msg)
        parameter = parameter or loc
        code = code or _str(item.get("type"))
    return "; ".join(messages), parameter, code


def _loc(loc: Any) -> str | None:
    """Turn `["body", "prompt"]` into `prompt`."""
    if not isinstance(loc, list):
        return _str(loc)
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or None


def _str(value: Any) -> str | None:
    """Return a non-empty string or None."""
    return value if isinstance(value, str) and value else None


def build_error(
    status: int | None,
    message: str,
    context: Context,
    *,
    code: str | None = None,
    parameter: str | None = None,
    retryable: bool | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """Map an HTTP status (plus fal's hints) onto our error tree."""
    args = (PROVIDER, message, status, code)
    lowered = message.lower()
    if status in (401, 403):
        # A locked account (exhausted balance) is reported as 403 (fal.md (d)).
        if "balance" in lowered or "locked" in lowered:
            return InsufficientCredits(*args, parameter=parameter)
        return AuthenticationFailed(*args, parameter=parameter)
    if status == 402:
        return InsufficientCredits(*args, parameter=parameter)
    if status == 429:
        return RateLimited(*args, parameter=parameter, retry_after=retry_after)
    if retryable is not None:  # X-Fal-Retryable, when present, is fal's own verdict
        return _by_flag(retryable, args, parameter, retry_after)
    if context in ("status", "result") and status in (404, 410):
        return (ResultExpired if context == "result" else NotFound)(*args, parameter=parameter)
    if context == "result" and status is not None and status < 500 and "expired" in lowered:
        return ResultExpired(*args, parameter=parameter)
    if status == 499 or code == "client_cancelled":
        return PermanentProviderError(*args, parameter=parameter)
    if status is None or status >= 500 or status in _RETRYABLE_4XX:
        return TransientProviderError(*args, parameter=parameter, retry_after=retry_after)
    return PermanentProviderError(*args, parameter=parameter)


def _by_flag(retryable: bool, args: tuple[Any, ...], parameter: str | None, retry_after: float | None) -> ProviderError:
    """Build a transient or permanent error as X-Fal-Retryable says."""
    if retryable:
        return TransientProviderError(*args, parameter=parameter, retry_after=retry_after)
    return PermanentProviderError(*args, parameter=parameter)


def parse_bool_header(value: str | None) -> bool | None:
    """Parse `true`/`false`-style header values; None when absent or unclear."""
    lowered = (value or "").strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    return None


def parse_images(payload: dict[str, Any]) -> tuple[ImageRef, ...]:
    """Return the images of a FLUX-family output (`images[]`, `seed`, `has_nsfw_concepts`)."""
    items = payload.get("images")
    if not isinstance(items, list):
        return ()
    seed = _seed(payload.get("seed"))
    flags = payload.get("has_nsfw_concepts")
    flags = flags if isinstance(flags, list) else []
    images = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not _str(item.get("url")):
            continue
        nsfw = flags[index] if index < len(flags) and isinstance(flags[index], bool) else None
        images.append(
            ImageRef(
                url=item["url"],
                index=index,
                width=as_int(item.get("width")),
                height=as_int(item.get("height")),
                content_type=_str(item.get("content_type")),
                seed=seed,
                nsfw=nsfw,
            )
        )
    return tuple(images)


def _seed(value: Any) -> int | None:
    """Return a seed as an exact Python int (fal seeds may exceed 2**63)."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return as_int(value)


def result_outcome(payload: Any, request_id: str | None, expected_images: int) -> Outcome:
    """Turn a model output into an Outcome; fewer images than asked for is a failure."""
    if not isinstance(payload, dict):
        error = TransientProviderError(PROVIDER, "result is not a JSON object", code="malformed_result")
        return Outcome("failed", error=error, request_id=request_id)
    images = parse_images(payload)
    if len(images) < max(expected_images, 1):
        message = f"result holds {len(images)} of {max(expected_images, 1)} expected images"
        error = TransientProviderError(PROVIDER, message, code="incomplete_result")
        return Outcome("failed", images=images, error=error, request_id=request_id)
    return Outcome("succeeded", images=images, request_id=request_id)


def parse_webhook_body(body: bytes) -> Outcome:
    """Interpret a fal webhook: OK with payload, OK with `payload: null`, ERROR, or not final."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise PermanentProviderError(PROVIDER, "webhook body is not a JSON object", code="malformed_webhook")
    request_id = _str(data.get("request_id"))
    status = data.get("status")
    payload = data.get("payload")
    if status == "OK":
        if not isinstance(payload, dict) or "images" not in payload:
            # payload null (payload_error set) is a success whose body must be fetched.
            return Outcome("fetch_result", request_id=request_id)
        return result_outcome(payload, request_id, expected_images=1)
    if status == "ERROR":
        return Outcome("failed", error=webhook_error(data), request_id=request_id)
    # fal documents one final POST; anything else (e.g. an IN_QUEUE event) is not final.
    return Outcome("pending", request_id=request_id)


def webhook_error(data: dict[str, Any]) -> ProviderError:
    """Classify an ERROR webhook from `error` ("Invalid status code: 422") and its payload."""
    error_text = _str(data.get("error")) or "model request failed"
    message, parameter, code = error_parts(data.get("payload"))
    match = _WEBHOOK_STATUS.search(error_text)
    status = int(match.group(1)) if match else None
    if status is None and parameter is not None:
        status = 422  # a pydantic `detail` list with a loc is a validation error
    full = f"{error_text}: {message}" if message else error_text
    return build_error(status, full, "webhook", code=code, parameter=parameter)
