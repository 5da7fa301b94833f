"""Pure parsing for Runware: error classification, result items, cumulative state, webhooks."""

from __future__ import annotations

import json
from typing import Any, Literal

from orchestrator.providers._http import as_int
from orchestrator.providers.base import ImageRef, Outcome, total_cost
from orchestrator.providers.errors import (
    AuthenticationFailed,
    InsufficientCredits,
    NotFound,
    PermanentProviderError,
    ProviderError,
    RateLimited,
    TransientProviderError,
)

PROVIDER = "runware"
Context = Literal["submit", "poll", "webhook"]

# Runware says its code catalogue is large and unstable (runware.md (d)): codes are hints,
# matched first because they are more specific than the HTTP status they come with.
_CODE_CLASSES: dict[str, type[ProviderError]] = {
    "invalidApiKey": AuthenticationFailed,
    "missingApiKey": AuthenticationFailed,
    "insufficientCredits": InsufficientCredits,
    "taskFailedOrNotFound": NotFound,
    "rateLimitExceeded": RateLimited,
    "timeoutProvider": TransientProviderError,
    "internalServerError": TransientProviderError,
    "serviceUnavailable": TransientProviderError,
    "serverError": TransientProviderError,
    "inferenceError": TransientProviderError,
    "uploadFailed": TransientProviderError,
    "contentPolicyViolation": PermanentProviderError,
    "nsfwContentDetected": PermanentProviderError,
    "unknownModel": PermanentProviderError,
    "modelNotFound": PermanentProviderError,
}
_FINAL_STATES = frozenset({"success", "error"})
_EXTENSION_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def build_error(
    status: int | None,
    item: dict[str, Any] | None,
    context: Context,
    *,
    fallback_message: str = "request failed",
    retry_after: float | None = None,
) -> ProviderError:
    """Classify one Runware error item (code, message, parameter) with the HTTP status."""
    item = item or {}
    code = _str(item.get("code"))
    parameter = _parameter(item.get("parameter"))
    message = _str(item.get("message")) or _str(item.get("errorMessage")) or fallback_message
    cls = _class_for_code(code) or _class_for_status(status, context)
    if cls is None:  # unknown code inside a 2xx: a named parameter means bad input
        cls = PermanentProviderError if parameter else TransientProviderError
    if issubclass(cls, TransientProviderError):
        return cls(PROVIDER, message, status, code, parameter=parameter, retry_after=retry_after)
    return cls(PROVIDER, message, status, code, parameter=parameter)


def _class_for_code(code: str | None) -> type[ProviderError] | None:
    """Known codes, then the naming patterns of validation and timeout codes."""
    if not code:
        return None
    if code in _CODE_CLASSES:
        return _CODE_CLASSES[code]
    if code.startswith(("invalid", "missing", "unsupported")):
        return PermanentProviderError
    if "timeout" in code.lower():
        return TransientProviderError
    return None


def _class_for_status(status: int | None, context: Context) -> type[ProviderError] | None:
    """Runware's documented HTTP statuses (runware.md (d))."""
    if status is None or 200 <= status < 300:
        return None
    classes: dict[int, type[ProviderError]] = {
        401: AuthenticationFailed,
        403: AuthenticationFailed,
        402: InsufficientCredits,
        429: RateLimited,
        408: TransientProviderError,
    }
    if status in classes:
        return classes[status]
    if status == 404:
        # On submit a 404 names a bad model or route; afterwards it means the task is gone.
        return PermanentProviderError if context == "submit" else NotFound
    return TransientProviderError if status >= 500 else PermanentProviderError


def _parameter(value: Any) -> str | None:
    """`parameter` may be a string or a list of strings."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or None
    return _str(value)


def _str(value: Any) -> str | None:
    """Return a non-empty string or None."""
    return value if isinstance(value, str) and value else None


def split_body(body: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (data items, error items) from any documented or observed body shape."""
    if isinstance(body, list):  # a bare array of items
        return _dicts(body), []
    if not isinstance(body, dict):
        return [], []
    data, errors = _dicts(body.get("data")), _dicts(body.get("errors"))
    if "error" in body:
        errors.append(_legacy_error(body))
    if "data" not in body and "errors" not in body and "error" not in body:
        data = [body]  # flat webhook: the task object itself
    # The SDK's mocks put failures inside data as {"status":"error","error":{code,message}}.
    errors += [_data_error(item) for item in data if _is_error_item(item)]
    return [item for item in data if not _is_error_item(item)], errors


def _dicts(value: Any) -> list[dict[str, Any]]:
    """Keep the dict entries of a list."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _is_error_item(item: dict[str, Any]) -> bool:
    """A data entry that reports a failure rather than a result."""
    return item.get("status") == "error" or isinstance(item.get("error"), dict)


def _data_error(item: dict[str, Any]) -> dict[str, Any]:
    """Flatten an SDK-style failed data item into an error item."""
    nested = item.get("error")
    merged = dict(nested) if isinstance(nested, dict) else {}
    for key in ("code", "message", "parameter", "taskUUID", "taskType"):
        if key not in merged and key in item:
            merged[key] = item[key]
    return merged


def _legacy_error(body: dict[str, Any]) -> dict[str, Any]:
    """Normalise `{"error": {...}}`, `{"error": "text"}` or the WS `errorMessage` form."""
    error = body["error"]
    if isinstance(error, dict):
        return {"taskUUID": body.get("taskUUID"), **error}
    message = _str(error) or _str(body.get("errorMessage")) or "task failed"
    return {"message": message, "code": _str(body.get("errorId")), "taskUUID": body.get("taskUUID")}


def belongs_to(item: dict[str, Any], task_uuid: str | None) -> bool:
    """Whether an item concerns our task (items without a taskUUID are taken as ours)."""
    item_task = item.get("taskUUID")
    return task_uuid is None or item_task in (None, task_uuid)


def image_from_item(item: dict[str, Any], index: int) -> ImageRef | None:
    """Build an ImageRef from a finished result item, or None if it is not one."""
    url = _str(item.get("imageURL")) or _str(item.get("imageDataURI"))
    status = item.get("status")
    if not url or status not in (None, "success"):
        return None
    nsfw = item.get("NSFWContent")
    cost = item.get("cost")
    return ImageRef(
        url=url,
        index=index,
        provider_image_id=_str(item.get("imageUUID")),
        content_type=_content_type(url),
        seed=as_int(item.get("seed")),
        nsfw=nsfw if isinstance(nsfw, bool) else None,
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )


def _content_type(url: str) -> str | None:
    """Guess the type from a data URI or the file extension of the image URL."""
    if url.startswith("data:"):
        return url[5:].split(";", 1)[0] or None
    extension = url.split("?", 1)[0].rsplit(".", 1)[-1].lower()
    return _EXTENSION_TYPES.get(extension)


def distinct_images(items: list[dict[str, Any]]) -> tuple[ImageRef, ...]:
    """Finished images, de-duplicated by imageUUID (getResponse returns cumulative state)."""
    seen: set[str] = set()
    images: list[ImageRef] = []
    for item in items:
        image = image_from_item(item, len(images))
        key = (image.provider_image_id or image.url) if image else None
        if image is None or key is None or key in seen:
            continue
        seen.add(key)
        images.append(image)
    return tuple(images)


def collect(
    body: Any,
    task_uuid: str | None,
    expected_images: int,
    context: Context,
    http_status: int | None = None,
) -> Outcome:
    """Turn a getResponse reply or a webhook body into an Outcome for one task."""
    data, errors = split_body(body)
    data = [item for item in data if belongs_to(item, task_uuid)]
    errors = [item for item in errors if belongs_to(item, task_uuid)]
    request_id = task_uuid or _first_task(data + errors)
    images = distinct_images(data)
    cost = total_cost(images)
    if errors:
        error = build_error(http_status, errors[0], context, fallback_message="task failed")
        return Outcome("failed", images=images, error=error, cost=cost, request_id=request_id)
    if images and len(images) >= expected_images:
        return Outcome("succeeded", images=images, cost=cost, request_id=request_id)
    return Outcome("pending", images=images, cost=cost, request_id=request_id)


def _first_task(items: list[dict[str, Any]]) -> str | None:
    """The first taskUUID named in a list of items."""
    return next((t for t in (_str(i.get("taskUUID")) for i in items) if t), None)


def parse_webhook_body(body: bytes) -> Outcome:
    """Interpret one Runware webhook POST: the images it carries, a failure, or nothing yet."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict | list):
        raise PermanentProviderError(PROVIDER, "webhook body is not JSON", code="malformed_webhook")
    # One POST per image: "succeeded" means "these images are ready", so one suffices here.
    return collect(decoded, None, expected_images=1, context="webhook")
