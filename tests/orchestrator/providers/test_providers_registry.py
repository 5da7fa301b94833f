"""What the rest of the orchestrator asks the adapters: capabilities, request bodies, whose
webhook a delivery is and its event key, provider settings; bodies as fal and Runware send them."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from orchestrator import catalog
from orchestrator.providers import registry
from orchestrator.providers._http import send
from orchestrator.providers.base import EVENT_KEY_CHARS
from orchestrator.providers.errors import UNKNOWN_OUTCOME, SendFailure, TransientProviderError
from orchestrator.providers.fal.adapter import FalAdapter
from orchestrator.providers.runware.adapter import RunwareAdapter
from orchestrator.settings import Settings

JOB = uuid.UUID("0b6b8a8e-56a4-4c1c-9d0e-2d8f0f6c2a11")
FAL_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
TASK = "a770f077-f413-47de-9dac-be0b26a35da6"
# fal's documented webhook bodies (shared/providers/fal.md, "Webhooks").
FAL_OK = json.dumps({"request_id": FAL_ID, "gateway_request_id": FAL_ID, "status": "OK", "payload": {
    "images": [{"url": "https://v3.fal.media/files/x.png", "content_type": "image/png", "width": 1024,
                "height": 1024}], "seed": 196619188014358660}}).encode()
FAL_SIGNED = {"X-Fal-Webhook-Request-Id": FAL_ID, "X-Fal-Webhook-User-Id": "user-9"}


def runware_image(image: str, task: str = TASK) -> bytes:
    """One Runware webhook POST, wrapped like a sync response (shared/providers/runware.md)."""
    return json.dumps({"data": [{"taskType": "imageInference", "taskUUID": task, "imageUUID": image,
                                 "imageURL": f"https://im.runware.ai/image/ws/0.5/ii/{image}.jpg",
                                 "cost": 0.0013}]}).encode()


# --- capabilities ---------------------------------------------------------------------------------


def test_capabilities_say_how_each_provider_behaves() -> None:
    fal, runware = registry.capabilities("fal"), registry.capabilities("runware")
    assert (fal.images_together, fal.knows_our_task_id, fal.reports_cost, fal.price_rounding) == (
        True, False, False, "ceil")
    assert (runware.images_together, runware.knows_our_task_id, runware.reports_cost, runware.price_rounding) == (
        False, True, True, "exact")
    assert registry.capabilities("fal") is FalAdapter.capabilities
    assert registry.PROVIDERS == ("fal", "runware")


def test_providers_with_selects_by_capability() -> None:
    assert registry.providers_with(knows_our_task_id=True) == ("runware",)
    assert registry.providers_with(knows_our_task_id=False) == ("fal",)
    assert registry.providers_with(images_together=True, reports_cost=False) == ("fal",)
    assert registry.providers_with() == ("fal", "runware")
    with pytest.raises(TypeError, match="no such capability: together"):
        registry.providers_with(together=True)
    with pytest.raises(ValueError, match="unknown provider 'replicate'"):
        registry.capabilities("replicate")


def test_webhook_headers_are_fals_signature_headers() -> None:
    assert registry.webhook_headers() == ("x-fal-webhook-request-id", "x-fal-webhook-user-id",
                                          "x-fal-webhook-timestamp", "x-fal-webhook-signature")
    assert RunwareAdapter.webhook_headers == ()


# --- build_payload --------------------------------------------------------------------------------


def test_build_payload_goes_to_the_models_provider() -> None:
    params = {"prompt": "a fox", "width": 1024, "height": 768, "steps": 4, "num_images": 2, "output_format": "png"}
    fal, runware = catalog.MODELS["fal-ai/flux/schnell"], catalog.MODELS["runware:100@1"]
    assert registry.build_payload(fal, params) == FalAdapter.build_payload(fal, params)
    assert registry.build_payload(fal, params)["image_size"] == "landscape_4_3"
    assert registry.build_payload(runware, params) == RunwareAdapter.build_payload(runware, params)
    assert registry.build_payload(runware, params)["outputFormat"] == "PNG"


# --- claimed_request_id ---------------------------------------------------------------------------


def test_fal_claims_the_signed_request_id() -> None:
    assert FalAdapter.claimed_request_id(FAL_SIGNED, FAL_OK) == (FAL_ID, "")
    assert FalAdapter.claimed_request_id({}, FAL_OK) == (FAL_ID, "")  # body only
    assert FalAdapter.claimed_request_id({"x-fal-webhook-request-id": "r-2"}, b"not json") == ("r-2", "")


def test_fal_refuses_a_body_that_contradicts_its_signature() -> None:
    headers = {**FAL_SIGNED, "X-Fal-Webhook-Request-Id": "another-request"}
    assert FalAdapter.claimed_request_id(headers, FAL_OK) == (
        None, "the signed request id and the body's request_id differ")
    assert FalAdapter.claimed_request_id({}, b'{"status": "OK"}') == (None, "the delivery names no request id")


def test_runware_claims_the_one_task_it_names() -> None:
    assert RunwareAdapter.claimed_request_id({}, runware_image("77da2d99-4d8e-4e1f-9a3b-1c2d3e4f5a6b")) == (TASK, "")
    errors = json.dumps({"errors": [{"code": "timeoutProvider", "message": "slow", "taskUUID": TASK}]}).encode()
    assert RunwareAdapter.claimed_request_id({}, errors) == (TASK, "")
    two = json.dumps({"data": [json.loads(runware_image("i-1"))["data"][0],
                               json.loads(runware_image("i-2", task=str(uuid.uuid4())))["data"][0]]}).encode()
    assert RunwareAdapter.claimed_request_id({}, two) == (None, "the delivery names several taskUUIDs")
    assert RunwareAdapter.claimed_request_id({}, b'{"data": []}') == (None, "the delivery names no taskUUID")
    assert RunwareAdapter.claimed_request_id({}, b"[" * 10_000) == (None, "the delivery names no taskUUID")


# --- event_key ------------------------------------------------------------------------------------


def test_fal_event_is_the_request() -> None:
    assert FalAdapter.event_key(JOB, 2, FAL_ID, FAL_OK) == f"fal:{JOB}:2:{FAL_ID}"
    assert FalAdapter.event_key(JOB, 2, FAL_ID, b"{}") == FalAdapter.event_key(JOB, 2, FAL_ID, FAL_OK)
    long = FalAdapter.event_key(JOB, 2, "r" * 400, FAL_OK)
    assert len(long) <= EVENT_KEY_CHARS and long.startswith(f"fal:{JOB}:2:rrr") and ":sha256:" in long


def test_runware_event_is_each_image() -> None:
    first = RunwareAdapter.event_key(JOB, 1, TASK, runware_image("77da2d99-0000-4000-8000-000000000001"))
    second = RunwareAdapter.event_key(JOB, 1, TASK, runware_image("77da2d99-0000-4000-8000-000000000002"))
    assert first == f"runware:{JOB}:1:{TASK}:77da2d99-0000-4000-8000-000000000001"
    assert first != second
    error = json.dumps({"errors": [{"code": "timeoutProvider", "taskUUID": TASK}]}).encode()
    assert RunwareAdapter.event_key(JOB, 1, TASK, error) == f"runware:{JOB}:1:{TASK}:error:timeoutProvider"
    ack = RunwareAdapter.event_key(JOB, 1, TASK, b'{"data": []}')
    assert ack.startswith(f"runware:{JOB}:1:{TASK}:sha256:")
    many = json.dumps({"data": [{"taskUUID": TASK, "imageUUID": str(uuid.uuid4())} for _ in range(20)]}).encode()
    hashed = RunwareAdapter.event_key(JOB, 1, TASK, many)
    assert len(hashed) <= EVENT_KEY_CHARS and hashed.startswith(f"runware:{JOB}:1:{TASK}:sha256:")


# --- settings and adapters from them --------------------------------------------------------------


def test_settings_per_provider_keep_their_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "fal-key:secret")
    monkeypatch.setenv("RUNWARE_API_KEY", "rw-key")
    env = {"ORCH_FAL_QUEUE_URL": "http://127.0.0.1:9001", "ORCH_FAL_MAX_IN_FLIGHT": "3",
           "ORCH_FAL_JWKS_URL": "http://127.0.0.1:9001/jwks", "ORCH_FAL_USER_ID": "user-9",
           "ORCH_RUNWARE_API_URL": "http://127.0.0.1:9002/v1", "ORCH_RUNWARE_RATE_PER_SECOND": "2.5"}
    settings = Settings.from_env(env)
    fal, runware = settings.provider("fal"), settings.provider("runware")
    assert (fal.api_key, fal.base_url, fal.max_in_flight, fal.signing_keys_url, fal.account_id) == (
        "fal-key:secret", "http://127.0.0.1:9001", 3, "http://127.0.0.1:9001/jwks", "user-9")
    assert (runware.api_key, runware.base_url, runware.max_in_flight, runware.rate_per_second) == (
        "rw-key", "http://127.0.0.1:9002/v1", 4, 2.5)
    assert settings.provider_limits("fal") == (3, 10.0)
    assert "fal-key:secret" not in repr(fal) and "rw-key" in settings.secrets()
    with pytest.raises(ValueError, match="unknown provider"):
        settings.provider("replicate")


def test_adapters_from_settings_call_the_configured_host() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"request_id": FAL_ID})

    client = httpx.Client(transport=httpx.MockTransport(answer))
    settings = Settings(fal_key="k:s", fal_queue_url="http://fal.test", runware_api_url="http://rw.test/v1")
    fal = registry.from_settings(settings.provider("fal"), client)
    assert isinstance(fal, FalAdapter) and isinstance(registry.from_settings(settings.provider("runware")),
                                                      RunwareAdapter)
    assert fal.cancel("fal-ai/flux/dev", FAL_ID) is True
    assert (str(seen[0].url), seen[0].headers["authorization"]) == (
        f"http://fal.test/fal-ai/flux/requests/{FAL_ID}/cancel", "Key k:s")


# --- the unknown-outcome codes --------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "code", "unknown"), [
    (httpx.ConnectError("refused"), SendFailure.NOT_SENT, False),
    (httpx.ReadTimeout("slow"), SendFailure.TIMEOUT, True),
    (httpx.RemoteProtocolError("cut"), SendFailure.CONNECTION_ERROR, True),
])
def test_send_failures_say_whether_the_request_may_have_arrived(exc: Exception, code: SendFailure,
                                                                 unknown: bool) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(TransientProviderError) as info:
        send(httpx.Client(transport=httpx.MockTransport(fail)), "fal", "POST", "http://fal.test/x",
             secrets=(), timeout=httpx.Timeout(1.0))
    assert info.value.code == code.value and type(info.value.code) is str  # stored rows keep plain strings
    assert info.value.outcome_unknown is unknown is code.may_have_arrived
    assert (code in UNKNOWN_OUTCOME) is unknown
    assert TransientProviderError("fal", "boom", code=None).outcome_unknown is False
