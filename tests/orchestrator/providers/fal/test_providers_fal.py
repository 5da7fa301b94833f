"""fal adapter against a scripted queue API (httpx.MockTransport)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
    ResultExpired,
    TransientProviderError,
)
from orchestrator.providers.fal.adapter import FalAdapter
from tests.orchestrator.providers.providers_fakes import FakeProvider

BASE = "http://127.0.0.1:9001"
KEY = "key-id-123:key-secret-456"
RID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
WEBHOOK = "https://orch.example/webhooks/fal/job-1/2?token=s3cr3t-token"
BIG_SEED = 15860307465884635512


def adapter(fake: FakeProvider, **kwargs: Any) -> FalAdapter:
    return FalAdapter(KEY, BASE, fake.client(), **kwargs)


def request(model: str = "fal-ai/flux/dev", lane: Any = "interactive") -> SubmitRequest:
    payload = {"prompt": "a red fox", "num_images": 2}
    return SubmitRequest(model=model, payload=payload, webhook_url=WEBHOOK, lane=lane, task_id="t-1")


def submit_ack(app: str = "fal-ai/flux") -> dict[str, Any]:
    root = f"{BASE}/{app}/requests/{RID}"
    return {
        "request_id": RID,
        "status": "IN_QUEUE",
        "response_url": root,
        "status_url": f"{root}/status",
        "cancel_url": f"{root}/cancel",
        "queue_position": 0,
    }


def output(n: int = 2, seed: int = BIG_SEED) -> dict[str, Any]:
    images = [
        {"url": f"https://v3.fal.media/files/x/{i}.png", "width": 1024, "height": 768, "content_type": "image/png"}
        for i in range(n)
    ]
    return {"images": images, "seed": seed, "has_nsfw_concepts": [False, True][:n], "prompt": "p", "timings": {}}


# --- submit -----------------------------------------------------------------------------------


def test_submit_posts_payload_to_full_endpoint_with_encoded_webhook(fake: FakeProvider) -> None:
    fake.reply(200, submit_ack())
    submitted = adapter(fake).submit(request())
    sent = fake.requests[0]
    assert sent.method == "POST"
    assert sent.url.path == "/fal-ai/flux/dev"
    assert "fal_webhook=https%3A%2F%2Forch.example%2Fwebhooks%2Ffal%2Fjob-1%2F2%3Ftoken%3D" in str(sent.url)
    assert parse_qs(urlsplit(str(sent.url)).query)["fal_webhook"] == [WEBHOOK]
    assert sent.headers["authorization"] == f"Key {KEY}"
    assert sent.headers["x-fal-queue-priority"] == "normal"
    assert fake.json_sent() == {"prompt": "a red fox", "num_images": 2}
    assert submitted.request_id == RID
    assert submitted.meta["status_url"].endswith(f"/fal-ai/flux/requests/{RID}/status")
    assert submitted.meta["queue_position"] == 0


def test_submit_bulk_lane_sends_low_priority(fake: FakeProvider) -> None:
    fake.reply(201, {"request_id": RID, "gateway_request_id": RID})
    submitted = adapter(fake).submit(request(lane="bulk"))
    assert fake.requests[0].headers["x-fal-queue-priority"] == "low"
    assert submitted.meta == {"gateway_request_id": RID}


def test_submit_without_request_id_is_transient(fake: FakeProvider) -> None:
    fake.reply(200, {"status": "IN_QUEUE"})
    with pytest.raises(TransientProviderError) as info:
        adapter(fake).submit(request())
    assert info.value.code == "malformed_response"


@pytest.mark.parametrize("model", ["fal-ai", "fal-ai/../admin", "fal-ai/flux?x=1", "workflows/owner"])
def test_submit_rejects_bad_endpoint_ids_without_calling(fake: FakeProvider, model: str) -> None:
    with pytest.raises(PermanentProviderError) as info:
        adapter(fake).submit(request(model=model))
    assert info.value.parameter == "model"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (401, {"detail": "No user found for Key ID and Secret"}, {}, AuthenticationFailed),
        (403, {"detail": "Forbidden"}, {}, AuthenticationFailed),
        (403, {"detail": "User is locked. Reason: Exhausted balance"}, {}, InsufficientCredits),
        (402, {"detail": "Payment required"}, {}, InsufficientCredits),
        (400, {"detail": "bad", "error_type": "bad_request"}, {}, PermanentProviderError),
        (404, {"detail": "Application not found"}, {}, PermanentProviderError),
        (408, "timeout", {}, TransientProviderError),
        (500, {"detail": "boom", "error_type": "internal_error"}, {}, TransientProviderError),
        (502, "<html>bad gateway</html>", {}, TransientProviderError),
        (503, {"detail": "Runner scheduling failure"}, {}, TransientProviderError),
        (504, {"detail": "Request timed out", "error_type": "request_timeout"}, {}, TransientProviderError),
        (422, {"detail": "nope"}, {"X-Fal-Retryable": "true"}, TransientProviderError),
        (503, {"detail": "nope"}, {"X-Fal-Retryable": "false"}, PermanentProviderError),
    ],
)
def test_submit_error_mapping(
    fake: FakeProvider, status: int, body: Any, headers: dict[str, str], expected: type[ProviderError]
) -> None:
    fake.reply(status, body, headers)
    with pytest.raises(expected) as info:
        adapter(fake).submit(request())
    assert type(info.value) is expected
    assert info.value.status_code == status
    assert not isinstance(info.value, NotFound)


def test_submit_422_keeps_detail_message_and_loc(fake: FakeProvider) -> None:
    detail = [
        {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"},
        {"loc": ["body", "image_size", "width"], "msg": "must be > 0", "type": "greater_than"},
    ]
    fake.reply(422, {"detail": detail})
    with pytest.raises(PermanentProviderError) as info:
        adapter(fake).submit(request())
    error = info.value
    assert error.parameter == "prompt"
    assert error.code == "value_error.missing"
    assert error.message == "prompt: field required; image_size.width: must be > 0"


def test_submit_error_type_header_becomes_code(fake: FakeProvider) -> None:
    fake.reply(503, {"detail": "Runner disconnected"}, {"X-Fal-Error-Type": "runner_disconnected"})
    with pytest.raises(TransientProviderError) as info:
        adapter(fake).submit(request())
    assert info.value.code == "runner_disconnected"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("12", 12.0), ("Wed, 21 Oct 2099 07:28:00 GMT", None), (None, None)],
)
def test_submit_429_is_rate_limited_with_retry_after(
    fake: FakeProvider, header: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": header} if header else {}
    fake.reply(429, {"detail": "Too many", "error_type": "concurrent_requests_limit"}, headers)
    with pytest.raises(RateLimited) as info:
        adapter(fake).submit(request())
    if header and expected is None:
        assert info.value.retry_after is not None and info.value.retry_after > 3600
    else:
        assert info.value.retry_after == expected
    assert info.value.code == "concurrent_requests_limit"


@pytest.mark.parametrize(
    ("exc", "code"),
    [(httpx.ConnectError("refused"), "not_sent"), (httpx.ReadTimeout("slow"), "timeout"),
     (httpx.RemoteProtocolError("eof"), "connection_error")],
)
def test_submit_transport_failures_are_transient(fake: FakeProvider, exc: Exception, code: str) -> None:
    fake.raise_error(exc)
    with pytest.raises(TransientProviderError) as info:
        adapter(fake).submit(request())
    assert info.value.code == code


def test_error_messages_never_carry_key_or_webhook_token(fake: FakeProvider) -> None:
    echo = f"bad header 'Key {KEY}' for callback {WEBHOOK}"
    fake.reply(400, {"detail": echo})
    with pytest.raises(PermanentProviderError) as info:
        adapter(fake).submit(request())
    text = f"{info.value} {info.value.to_dict()}"
    assert "key-secret-456" not in text
    assert "s3cr3t-token" not in text


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "app"),
    [
        ("rundiffusion-fal/juggernaut-flux/lightning", "rundiffusion-fal/juggernaut-flux"),
        ("fal-ai/flux-lora", "fal-ai/flux-lora"),
        ("fal-ai/flux/schnell", "fal-ai/flux"),
        ("workflows/acme/pipeline/v2", "workflows/acme/pipeline"),
    ],
)
def test_status_and_result_urls_drop_the_sub_path(fake: FakeProvider, model: str, app: str) -> None:
    fake.reply(200, {"status": "COMPLETED", "request_id": RID, "response_url": "x", "logs": None})
    fake.reply(200, output(1))
    adapter(fake).poll(model, RID, expected_images=1)
    status, result = fake.requests
    assert (status.method, status.url.path) == ("GET", f"/{app}/requests/{RID}/status")
    assert (result.method, result.url.path) == ("GET", f"/{app}/requests/{RID}")
    assert result.headers["authorization"] == f"Key {KEY}"


def test_submit_keeps_sub_path(fake: FakeProvider) -> None:
    fake.reply(200, submit_ack("rundiffusion-fal/juggernaut-flux"))
    adapter(fake).submit(request("rundiffusion-fal/juggernaut-flux/lightning"))
    assert fake.requests[0].url.path == "/rundiffusion-fal/juggernaut-flux/lightning"


def test_poll_follows_returned_urls_on_the_configured_host(fake: FakeProvider) -> None:
    meta = {
        "status_url": f"{BASE}/fal-ai/flux/requests/{RID}/status",
        "response_url": f"{BASE}/fal-ai/flux/requests/{RID}/response",
    }
    fake.reply(200, {"status": "COMPLETED", "request_id": RID, "response_url": "x", "logs": []})
    fake.reply(200, output(1))
    adapter(fake).poll("fal-ai/flux/dev", RID, 1, meta=meta)
    assert fake.requests[1].url.path == f"/fal-ai/flux/requests/{RID}/response"


def test_poll_ignores_returned_urls_on_other_hosts(fake: FakeProvider) -> None:
    meta = {"status_url": "https://evil.example/steal", "response_url": "http://127.0.0.1:1/x"}
    fake.reply(202, {"status": "IN_QUEUE", "request_id": RID, "response_url": "x"})
    adapter(fake).poll("fal-ai/flux/dev", RID, 1, meta=meta)
    assert str(fake.requests[0].url).startswith(f"{BASE}/fal-ai/flux/requests/{RID}/status")


@pytest.mark.parametrize(("enabled", "value"), [(False, "0"), (True, "1")])
def test_status_logs_param(fake: FakeProvider, enabled: bool, value: str) -> None:
    fake.reply(202, {"status": "IN_PROGRESS", "request_id": RID, "response_url": "x", "logs": []})
    adapter(fake, status_logs=enabled).poll("fal-ai/flux/dev", RID, 1)
    assert fake.requests[0].url.params["logs"] == value


# --- poll -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (202, {"status": "IN_QUEUE", "queue_position": 2, "request_id": RID, "response_url": "x"}),
        (202, {"status": "IN_PROGRESS", "request_id": RID, "response_url": "x", "logs": None}),
        (200, {"status": "IN_PROGRESS", "request_id": RID, "response_url": "x", "logs": []}),
    ],
)
def test_poll_pending(fake: FakeProvider, status: int, body: dict[str, Any]) -> None:
    fake.reply(status, body)
    outcome = adapter(fake).poll("fal-ai/flux/dev", RID, 2)
    assert (outcome.status, outcome.request_id, outcome.images) == ("pending", RID, ())
    assert len(fake.requests) == 1


def completed(error: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "COMPLETED", "request_id": RID, "response_url": "x", "logs": []}
    if error:
        body |= {"error": error, "error_type": "runner_disconnected"}
    return body


def test_poll_completed_returns_images_with_big_seed(fake: FakeProvider) -> None:
    fake.reply(200, completed())
    fake.reply(200, output(2))
    outcome = adapter(fake).poll("fal-ai/flux/dev", RID, 2)
    assert outcome.status == "succeeded"
    assert outcome.error is None
    first, second = outcome.images
    assert first.url == "https://v3.fal.media/files/x/0.png"
    assert (first.index, first.width, first.height, first.content_type) == (0, 1024, 768, "image/png")
    assert first.seed == BIG_SEED and isinstance(first.seed, int)
    assert (first.nsfw, second.nsfw, second.index) == (False, True, 1)
    assert outcome.cost is None


def test_poll_seed_as_text_is_kept_exact(fake: FakeProvider) -> None:
    fake.reply(200, completed())
    fake.reply(200, output(1, seed=0) | {"seed": str(BIG_SEED)})
    assert adapter(fake).poll("fal-ai/flux/dev", RID, 1).images[0].seed == BIG_SEED


def test_poll_fewer_images_than_expected_fails_retryably(fake: FakeProvider) -> None:
    fake.reply(200, completed())
    fake.reply(200, output(1))
    outcome = adapter(fake).poll("fal-ai/flux/dev", RID, 2)
    assert outcome.status == "failed"
    assert isinstance(outcome.error, TransientProviderError)
    assert outcome.error.code == "incomplete_result"
    assert len(outcome.images) == 1


def test_poll_result_422_fails_permanently_with_detail(fake: FakeProvider) -> None:
    fake.reply(200, completed())
    detail = [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}]
    fake.reply(422, {"detail": detail})
    outcome = adapter(fake).poll("fal-ai/flux/dev", RID, 1)
    assert outcome.status == "failed"
    assert type(outcome.error) is PermanentProviderError
    assert outcome.error.code == "content_policy_violation"
    assert outcome.error.parameter == "prompt"
    assert "flagged" in outcome.error.message


@pytest.mark.parametrize(("status", "body"), [(404, {"detail": "Request not found"}), (410, "gone")])
def test_poll_expired_result(fake: FakeProvider, status: int, body: Any) -> None:
    fake.reply(200, completed())
    fake.reply(status, body)
    outcome = adapter(fake).poll("fal-ai/flux/dev", RID, 1)
    assert outcome.status == "failed"
    assert isinstance(outcome.error, ResultExpired)
    assert outcome.error.retry_job


def test_poll_result_5xx_of_failed_request_fails_the_job(fake: FakeProvider) -> None:
    fake.reply(200, completed(error="Runner disconnected"))
    fake.reply(503, {"detail": "Runner disconnected", "error_type": "runner_disconnected"})
    outcome = adapter(fake).poll("fal-ai/flux/dev", RID, 1)
    assert outcome.status == "failed"
    assert isinstance(outcome.error, TransientProviderError)
    assert outcome.error.retry_job


def test_poll_result_5xx_of_healthy_request_is_retried_as_a_call(fake: FakeProvider) -> None:
    # Failing the job here would pay for a new attempt while the result may still be fetched.
    fake.reply(200, completed())
    fake.reply(502, "<html>bad gateway</html>")
    with pytest.raises(TransientProviderError):
        adapter(fake).poll("fal-ai/flux/dev", RID, 1)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(500, TransientProviderError), (503, TransientProviderError), (429, RateLimited), (401, AuthenticationFailed)],
)
def test_poll_status_call_errors_raise(fake: FakeProvider, status: int, expected: type[ProviderError]) -> None:
    fake.reply(status, {"detail": "x"}, {"Retry-After": "3"})
    with pytest.raises(expected) as info:
        adapter(fake).poll("fal-ai/flux/dev", RID, 1)
    if isinstance(info.value, TransientProviderError):
        assert info.value.retry_after == 3.0


def test_poll_status_404_is_not_found(fake: FakeProvider) -> None:
    fake.reply(404, {"detail": "Request not found"})
    outcome = adapter(fake).poll("fal-ai/flux/dev", RID, 1)
    assert outcome.status == "failed"
    assert type(outcome.error) is NotFound


def test_poll_result_rate_limited_raises(fake: FakeProvider) -> None:
    fake.reply(200, completed())
    fake.reply(429, {"detail": "slow"}, {"Retry-After": "2"})
    with pytest.raises(RateLimited):
        adapter(fake).poll("fal-ai/flux/dev", RID, 1)


def test_poll_unknown_state_raises(fake: FakeProvider) -> None:
    fake.reply(200, {"status": "EXPLODED", "request_id": RID, "response_url": "x"})
    with pytest.raises(TransientProviderError, match="unknown queue status"):
        adapter(fake).poll("fal-ai/flux/dev", RID, 1)


# --- cancel -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "accepted"),
    [
        (202, {"status": "CANCELLATION_REQUESTED"}, True),
        (200, {"status": "OK"}, True),
        (400, {"status": "ALREADY_COMPLETED"}, False),
        (404, {"status": "NOT_FOUND"}, False),
    ],
)
def test_cancel(fake: FakeProvider, status: int, body: dict[str, str], accepted: bool) -> None:
    fake.reply(status, body)
    assert adapter(fake).cancel("rundiffusion-fal/juggernaut-flux/lightning", RID) is accepted
    sent = fake.requests[0]
    assert (sent.method, sent.url.path) == ("PUT", f"/rundiffusion-fal/juggernaut-flux/requests/{RID}/cancel")


def test_cancel_server_error_raises(fake: FakeProvider) -> None:
    fake.reply(503, {"detail": "busy"})
    with pytest.raises(TransientProviderError):
        adapter(fake).cancel("fal-ai/flux/dev", RID)


# --- webhooks ---------------------------------------------------------------------------------


def webhook(**fields: Any) -> bytes:
    return json.dumps({"request_id": RID, "gateway_request_id": RID} | fields).encode()


def test_webhook_ok_with_payload_succeeds(fake: FakeProvider) -> None:
    outcome = adapter(fake).parse_webhook(webhook(status="OK", payload=output(2)))
    assert outcome.status == "succeeded"
    assert outcome.request_id == RID
    assert [i.seed for i in outcome.images] == [BIG_SEED, BIG_SEED]
    assert fake.requests == []


def test_webhook_ok_with_null_payload_asks_to_fetch(fake: FakeProvider) -> None:
    body = webhook(status="OK", payload=None, payload_error="Response payload is not JSON serializable.")
    outcome = adapter(fake).parse_webhook(body)
    assert (outcome.status, outcome.request_id, outcome.error) == ("fetch_result", RID, None)


def test_webhook_ok_without_images_fails() -> None:
    outcome = FalAdapter(KEY).parse_webhook(webhook(status="OK", payload={"images": [], "seed": 1}))
    assert outcome.status == "failed"
    assert isinstance(outcome.error, TransientProviderError)


def test_webhook_error_422_is_permanent() -> None:
    detail = [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]
    body = webhook(status="ERROR", error="Invalid status code: 422", payload={"detail": detail})
    outcome = FalAdapter(KEY).parse_webhook(body)
    assert outcome.status == "failed"
    assert type(outcome.error) is PermanentProviderError
    assert outcome.error.status_code == 422
    assert outcome.error.parameter == "prompt"
    assert "field required" in outcome.error.message


@pytest.mark.parametrize(
    ("error", "payload", "expected"),
    [
        ("Invalid status code: 400", {"detail": "bad image"}, PermanentProviderError),
        ("Invalid status code: 500", {"detail": "oops", "error_type": "internal_server_error"}, TransientProviderError),
        ("Invalid status code: 504", None, TransientProviderError),
        ("Invalid status code: 429", None, RateLimited),
        ("Runner disconnected", None, TransientProviderError),
        ("something odd", {"detail": [{"loc": ["body", "seed"], "msg": "too big"}]}, PermanentProviderError),
    ],
)
def test_webhook_error_classification(error: str, payload: Any, expected: type[ProviderError]) -> None:
    outcome = FalAdapter(KEY).parse_webhook(webhook(status="ERROR", error=error, payload=payload))
    assert outcome.status == "failed"
    assert type(outcome.error) is expected


@pytest.mark.parametrize("fields", [{"status": "IN_QUEUE"}, {}, {"status": "IN_PROGRESS", "payload": None}])
def test_webhook_without_final_status_is_pending(fields: dict[str, Any]) -> None:
    assert FalAdapter(KEY).parse_webhook(webhook(**fields)).status == "pending"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_webhook_malformed_body_raises(body: bytes) -> None:
    with pytest.raises(PermanentProviderError):
        FalAdapter(KEY).parse_webhook(body)


def test_webhook_ok_payload_without_images_asks_to_fetch() -> None:
    outcome = FalAdapter(KEY).parse_webhook(webhook(status="OK", payload={"detail": "odd"}))
    assert outcome.status == "fetch_result"


def test_fetch_result_skips_status(fake: FakeProvider) -> None:
    fake.reply(200, output(1))
    outcome = adapter(fake).fetch_result("fal-ai/flux-lora", RID, 1)
    assert outcome.status == "succeeded"
    assert [r.url.path for r in fake.requests] == [f"/fal-ai/flux-lora/requests/{RID}"]


def test_fetch_result_glitch_is_a_call_error(fake: FakeProvider) -> None:
    fake.reply(503, "upstream connect error")
    with pytest.raises(TransientProviderError):
        adapter(fake).fetch_result("fal-ai/flux-lora", RID, 1)
