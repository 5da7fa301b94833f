"""Runware adapter against a scripted task API (httpx.MockTransport)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from orchestrator.providers.base import SubmitRequest
from orchestrator.providers.errors import (
    AuthenticationFailed,
    InsufficientCredits,
    NotFound,
    PermanentProviderError,
    ProviderError,
    RateLimited,
    TransientProviderError,
)
from orchestrator.providers.runware.adapter import RunwareAdapter
from tests.orchestrator.providers.providers_fakes import FakeProvider

URL = "http://127.0.0.1:9002/v1"
KEY = "rw-api-key-0123456789"
TASK = str(uuid.uuid4())
OTHER = str(uuid.uuid4())
WEBHOOK = "https://orch.example/webhooks/runware/job-1/1?token=s3cr3t-token"


def adapter(fake: FakeProvider) -> RunwareAdapter:
    return RunwareAdapter(KEY, URL, fake.client())


def request(payload: dict[str, Any] | None = None, task_id: str = TASK) -> SubmitRequest:
    payload = payload or {"positivePrompt": "a red fox", "width": 1024, "height": 1024, "numberResults": 2}
    return SubmitRequest("runware:101@1", payload, WEBHOOK, "bulk", task_id)


def image(n: int, *, status: str | None = "success", task: str = TASK, cost: float = 0.0013) -> dict[str, Any]:
    item: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": task,
        "imageUUID": f"00000000-0000-4000-8000-00000000000{n}",
        "imageURL": f"https://im.runware.ai/image/ws/0.5/ii/{n}.webp",
        "seed": 1000 + n,
        "NSFWContent": False,
        "cost": cost,
    }
    if status:
        item["status"] = status
    return item


def error_item(code: str, task: str = TASK, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": f"{code} happened", "status": "error", "taskUUID": task, **extra}


# --- submit -----------------------------------------------------------------------------------


def test_submit_sends_one_async_task_in_an_array(fake: FakeProvider) -> None:
    fake.reply(200, {"data": [{"taskType": "imageInference", "taskUUID": TASK}]})
    submitted = adapter(fake).submit(request())
    sent = fake.requests[0]
    assert (sent.method, str(sent.url)) == ("POST", URL)
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert fake.json_sent() == [
        {
            "positivePrompt": "a red fox",
            "width": 1024,
            "height": 1024,
            "numberResults": 2,
            "taskType": "imageInference",
            "taskUUID": TASK,
            "model": "runware:101@1",
            "deliveryMethod": "async",
            "webhookURL": WEBHOOK,
            "includeCost": True,
        }
    ]
    assert submitted.request_id == TASK


def test_submit_protocol_fields_win_over_payload(fake: FakeProvider) -> None:
    fake.reply(200, {"data": []})
    payload = {"positivePrompt": "p", "deliveryMethod": "sync", "taskUUID": OTHER, "webhookURL": "http://x"}
    adapter(fake).submit(request(payload))
    task = fake.json_sent()[0]
    assert (task["deliveryMethod"], task["taskUUID"], task["webhookURL"]) == ("async", TASK, WEBHOOK)



UPLOAD = "http://127.0.0.1:9000/bucket/incoming/t/0.jpg?X-Amz-Signature=pr3s1gned"


def test_submit_passes_our_upload_url_only(fake: FakeProvider) -> None:
    fake.reply(200, {"data": []})
    adapter(fake).submit(request({"positivePrompt": "p", "uploadEndpoint": "http://elsewhere/"}))
    assert "uploadEndpoint" not in fake.json_sent()[0]
    fake.reply(200, {"data": []})
    req = SubmitRequest("runware:101@1", {"positivePrompt": "p"}, WEBHOOK, "bulk", TASK, upload_url=UPLOAD)
    adapter(fake).submit(req)
    assert fake.json_sent()[0]["uploadEndpoint"] == UPLOAD
    assert "pr3s1gned" not in repr(req)


def test_submit_messages_hide_the_upload_url(fake: FakeProvider) -> None:
    fake.reply(400, {"errors": [{"code": "invalidUploadEndpoint", "message": f"cannot PUT {UPLOAD}"}]})
    req = SubmitRequest("runware:101@1", {"positivePrompt": "p"}, WEBHOOK, "bulk", TASK, upload_url=UPLOAD)
    with pytest.raises(PermanentProviderError) as info:
        adapter(fake).submit(req)
    assert "pr3s1gned" not in str(info.value)

@pytest.mark.parametrize("task_id", ["not-a-uuid", "00000000-0000-1000-8000-000000000000"])
def test_submit_requires_uuid4_without_calling(fake: FakeProvider, task_id: str) -> None:
    with pytest.raises(PermanentProviderError) as info:
        adapter(fake).submit(request(task_id=task_id))
    assert info.value.parameter == "taskUUID"
    assert fake.requests == []


def test_submit_400_keeps_parameter_and_message(fake: FakeProvider) -> None:
    err = {
        "code": "invalidWidth",
        "message": "Invalid value for 'width' parameter. Must be between 256 and 16383.",
        "parameter": "width",
        "type": "integer",
        "min": 256,
        "taskUUID": TASK,
    }
    fake.reply(400, {"data": [], "errors": [err]})
    with pytest.raises(PermanentProviderError) as info:
        adapter(fake).submit(request())
    error = info.value
    assert type(error) is PermanentProviderError
    assert (error.status_code, error.code, error.parameter) == (400, "invalidWidth", "width")
    assert error.message.startswith("Invalid value for 'width'")


def test_submit_parameter_list_is_joined(fake: FakeProvider) -> None:
    fake.reply(400, {"errors": [{"code": "invalidSize", "message": "bad", "parameter": ["width", "height"]}]})
    with pytest.raises(PermanentProviderError) as info:
        adapter(fake).submit(request())
    assert info.value.parameter == "width,height"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "invalidApiKey", AuthenticationFailed),
        (401, None, AuthenticationFailed),
        (403, None, AuthenticationFailed),
        (402, None, InsufficientCredits),
        (402, "insufficientCredits", InsufficientCredits),
        (400, "insufficientCredits", InsufficientCredits),
        (400, "invalidModel", PermanentProviderError),
        (400, "someNewCode", PermanentProviderError),
        (404, None, PermanentProviderError),
        (429, None, RateLimited),
        (500, None, TransientProviderError),
        (503, None, TransientProviderError),
        (504, None, TransientProviderError),
    ],
)
def test_submit_http_error_mapping(
    fake: FakeProvider, status: int, code: str | None, expected: type[ProviderError]
) -> None:
    errors = [{"code": code, "message": "nope", "taskType": "imageInference"}] if code else []
    fake.reply(status, {"errors": errors} if errors else "upstream trouble")
    with pytest.raises(expected) as info:
        adapter(fake).submit(request())
    assert type(info.value) is expected
    assert info.value.status_code == status


@pytest.mark.parametrize("status", [429, 503])
def test_submit_retry_after_is_parsed(fake: FakeProvider, status: int) -> None:
    fake.reply(status, {"errors": [{"code": "x", "message": "busy"}]}, {"Retry-After": "9"})
    with pytest.raises(TransientProviderError) as info:
        adapter(fake).submit(request())
    assert info.value.retry_after == 9.0


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("timeoutProvider", TransientProviderError),
        ("invalidModel", PermanentProviderError),
        ("insufficientCredits", InsufficientCredits),
        ("mysteryFailure", TransientProviderError),
    ],
)
def test_submit_2xx_with_errors_is_classified_by_code(
    fake: FakeProvider, code: str, expected: type[ProviderError]
) -> None:
    fake.reply(200, {"data": [], "errors": [error_item(code)]})
    with pytest.raises(expected) as info:
        adapter(fake).submit(request())
    assert type(info.value) is expected
    assert info.value.code == code


def test_submit_ignores_errors_of_other_tasks(fake: FakeProvider) -> None:
    fake.reply(200, {"data": [{"taskType": "imageInference", "taskUUID": TASK}], "errors": [error_item("x", OTHER)]})
    assert adapter(fake).submit(request()).request_id == TASK


def test_submit_transport_failure_is_transient(fake: FakeProvider) -> None:
    fake.raise_error(httpx.ConnectTimeout("slow"))
    with pytest.raises(TransientProviderError) as info:
        adapter(fake).submit(request())
    assert info.value.code == "not_sent"  # never reached Runware: safe to resend
    fake.raise_error(httpx.ReadTimeout("slow"))
    with pytest.raises(TransientProviderError) as info:
        adapter(fake).submit(request())
    assert info.value.code == "timeout"  # may have been received: must not be resent blindly


def test_submit_messages_hide_key_and_webhook(fake: FakeProvider) -> None:
    fake.reply(400, {"errors": [{"code": "invalidWebhookURL", "message": f"bad {WEBHOOK} with key {KEY}"}]})
    with pytest.raises(PermanentProviderError) as info:
        adapter(fake).submit(request())
    assert KEY not in str(info.value)
    assert "s3cr3t-token" not in str(info.value)


# --- poll -------------------------------------------------------------------------------------


def test_poll_sends_get_response(fake: FakeProvider) -> None:
    fake.reply(200, {"data": [{"taskType": "imageInference", "taskUUID": TASK, "status": "processing"}]})
    outcome = adapter(fake).poll("runware:101@1", TASK, 1)
    assert fake.json_sent() == [{"taskType": "getResponse", "taskUUID": TASK}]
    assert fake.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert (outcome.status, outcome.request_id) == ("pending", TASK)


@pytest.mark.parametrize("state", ["processing", "pending", "queued"])
def test_poll_any_other_state_is_in_progress(fake: FakeProvider, state: str) -> None:
    fake.reply(200, {"data": [image(1), {"taskUUID": TASK, "status": state, "progress": 40}]})
    outcome = adapter(fake).poll("runware:101@1", TASK, 2)
    assert outcome.status == "pending"
    assert len(outcome.images) == 1


def test_poll_deduplicates_cumulative_images(fake: FakeProvider) -> None:
    fake.reply(200, {"data": [image(1), image(1), {"taskUUID": TASK, "status": "processing"}]})
    fake.reply(200, {"data": [image(1), image(2), image(1)]})
    runware = adapter(fake)
    first = runware.poll("runware:101@1", TASK, 2)
    assert (first.status, len(first.images)) == ("pending", 1)
    second = runware.poll("runware:101@1", TASK, 2)
    assert second.status == "succeeded"
    assert [i.provider_image_id for i in second.images] == [image(1)["imageUUID"], image(2)["imageUUID"]]
    assert [i.index for i in second.images] == [0, 1]
    assert second.cost == pytest.approx(0.0026)
    one = second.images[0]
    assert (one.url, one.seed, one.nsfw, one.cost, one.content_type) == (
        image(1)["imageURL"],
        1001,
        False,
        0.0013,
        "image/webp",
    )


def test_poll_success_without_status_field_counts(fake: FakeProvider) -> None:
    fake.reply(200, {"data": [image(1, status=None)]})
    assert adapter(fake).poll("runware:101@1", TASK, 1).status == "succeeded"


def test_poll_error_in_errors_array_fails_with_partial_images(fake: FakeProvider) -> None:
    fake.reply(200, {"data": [image(1)], "errors": [error_item("timeoutProvider", documentation="https://x")]})
    outcome = adapter(fake).poll("runware:101@1", TASK, 2)
    assert outcome.status == "failed"
    assert type(outcome.error) is TransientProviderError
    assert outcome.error.code == "timeoutProvider"
    assert outcome.error.retry_job
    assert len(outcome.images) == 1


def test_poll_sdk_style_error_inside_data_fails(fake: FakeProvider) -> None:
    failed = {"taskUUID": TASK, "status": "error", "error": {"code": "contentPolicyViolation", "message": "nope"}}
    fake.reply(200, {"data": [failed]})
    outcome = adapter(fake).poll("runware:101@1", TASK, 1)
    assert outcome.status == "failed"
    assert type(outcome.error) is PermanentProviderError
    assert (outcome.error.code, outcome.error.message) == ("contentPolicyViolation", "nope")


@pytest.mark.parametrize("status", [200, 400, 404])
def test_poll_task_not_found(fake: FakeProvider, status: int) -> None:
    fake.reply(status, {"data": [], "errors": [error_item("taskFailedOrNotFound")]})
    outcome = adapter(fake).poll("runware:101@1", TASK, 1)
    assert outcome.status == "failed"
    assert type(outcome.error) is NotFound
    assert outcome.error.retry_job


def test_poll_ignores_other_tasks(fake: FakeProvider) -> None:
    fake.reply(200, {"data": [image(1, task=OTHER)], "errors": [error_item("timeoutProvider", OTHER)]})
    outcome = adapter(fake).poll("runware:101@1", TASK, 1)
    assert (outcome.status, outcome.images) == ("pending", ())


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, AuthenticationFailed), (402, InsufficientCredits), (429, RateLimited), (500, TransientProviderError)],
)
def test_poll_call_failures_raise(fake: FakeProvider, status: int, expected: type[ProviderError]) -> None:
    fake.reply(status, {"errors": [{"code": "whatever", "message": "m"}]}, {"Retry-After": "4"})
    with pytest.raises(expected):
        adapter(fake).poll("runware:101@1", TASK, 1)


def test_poll_2xx_auth_error_raises(fake: FakeProvider) -> None:
    fake.reply(200, {"errors": [{"code": "invalidApiKey", "message": "bad key", "taskType": "authentication"}]})
    with pytest.raises(AuthenticationFailed):
        adapter(fake).poll("runware:101@1", TASK, 1)


def test_poll_non_json_4xx_raises_permanent(fake: FakeProvider) -> None:
    fake.reply(400, "bad request")
    with pytest.raises(PermanentProviderError, match="bad request"):
        adapter(fake).poll("runware:101@1", TASK, 1)


def test_cancel_is_unsupported(fake: FakeProvider) -> None:
    assert adapter(fake).cancel("runware:101@1", TASK) is False
    assert fake.requests == []


# --- webhooks ---------------------------------------------------------------------------------


def parse(body: Any) -> Any:
    return RunwareAdapter(KEY, URL).parse_webhook(json.dumps(body).encode())


def test_webhook_wrapped_single_image() -> None:
    outcome = parse({"data": [image(3, status=None)]})
    assert (outcome.status, outcome.request_id) == ("succeeded", TASK)
    assert outcome.images[0].provider_image_id == image(3)["imageUUID"]
    assert outcome.cost == pytest.approx(0.0013)


def test_webhook_flat_item() -> None:
    outcome = parse(image(2, status=None))
    assert outcome.status == "succeeded"
    assert [i.seed for i in outcome.images] == [1002]


def test_webhook_several_images_in_one_delivery() -> None:
    outcome = parse({"data": [image(1), image(2), image(2)]})
    assert [i.index for i in outcome.images] == [0, 1]


def test_webhook_ack_only_is_pending() -> None:
    outcome = parse({"data": [{"taskType": "imageInference", "taskUUID": TASK}]})
    assert (outcome.status, outcome.request_id, outcome.images) == ("pending", TASK, ())


def test_webhook_errors_array() -> None:
    outcome = parse({"errors": [error_item("timeoutProvider")]})
    assert (outcome.status, outcome.request_id) == ("failed", TASK)
    assert isinstance(outcome.error, TransientProviderError)


def test_webhook_errors_with_parameter_is_permanent() -> None:
    outcome = parse({"errors": [{"code": "oddCode", "message": "m", "parameter": "steps", "taskUUID": TASK}]})
    assert type(outcome.error) is PermanentProviderError
    assert outcome.error.parameter == "steps"


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": "timeoutProvider", "message": "late"}, "taskUUID": TASK},
        {"error": True, "errorId": 19, "errorMessage": "late", "taskUUID": TASK},
        {"error": "late", "taskUUID": TASK},
    ],
)
def test_webhook_legacy_error_shapes(body: dict[str, Any]) -> None:
    outcome = parse(body)
    assert (outcome.status, outcome.request_id) == ("failed", TASK)
    assert outcome.error is not None
    assert "late" in outcome.error.message


def test_webhook_sdk_style_error_in_data() -> None:
    outcome = parse({"data": [{"taskUUID": TASK, "status": "error", "error": {"code": "inferenceError"}}]})
    assert outcome.status == "failed"
    assert isinstance(outcome.error, TransientProviderError)


@pytest.mark.parametrize("body", [b"nope", b"42", b""])
def test_webhook_malformed_body_raises(body: bytes) -> None:
    with pytest.raises(PermanentProviderError):
        RunwareAdapter(KEY, URL).parse_webhook(body)
