"""Runware sandbox: the official runware-sdk (REST) against it, and the task API of runware.md (b)-(c)."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image
from runware import Runware, RunwareError

from orchestrator.sandbox import RUNWARE_DEV_KEY, RunwareConfig, RunwareSandbox
from tests.http_helpers import LoopbackServer

AUTH = {"Authorization": f"Bearer {RUNWARE_DEV_KEY}"}


def task(**overrides: Any) -> dict[str, Any]:
    base = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "runware:101@1",
        "positivePrompt": "a tall lighthouse at dusk",
        "width": 512,
        "height": 384,
    }
    return {**base, **overrides}


def post(sb: RunwareSandbox, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(sb.api_url, json=body, headers=AUTH if headers is None else headers)


def run_sdk(sb: RunwareSandbox, params: dict[str, Any]) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with Runware(api_key=RUNWARE_DEV_KEY, transport="rest", http_base_url=sb.api_url) as client:
            return await client.run(params)

    return asyncio.run(go())


def poll(sb: RunwareSandbox, task_uuid: str, until: str = "success", timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = post(sb, [{"taskType": "getResponse", "taskUUID": task_uuid}]).json()
        statuses = [i.get("status") for i in body["data"]] + [e.get("status") for e in body.get("errors", [])]
        if statuses and all(s == until or s == "error" for s in statuses):
            return body
        time.sleep(0.02)
    raise AssertionError("task did not finish")


def test_official_sdk_async_polling_with_webhook(runware: RunwareSandbox, receiver: LoopbackServer) -> None:
    hook = receiver.url + "/rw?token=a%2Fb+c&x=1&x=2&empty="
    params = task(numberResults=2, seed=41, webhookURL=hook, includeCost=True, outputFormat="png")
    params.pop("taskUUID")
    items = run_sdk(runware, params)
    assert len(items) == 2 and len({i["imageUUID"] for i in items}) == 2
    assert sorted(i["seed"] for i in items) == [41, 42]
    for item in items:
        assert item["cost"] > 0 and "NSFWContent" not in item
        image = httpx.get(item["imageURL"])
        assert image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (512, 384)
    calls = receiver.wait_for(2)
    assert {c.path for c in calls} == {"/rw?token=a%2Fb+c&x=1&x=2&empty="}  # query string kept exactly
    for call in calls:
        assert "Authorization" not in call.headers and call.headers["Content-Type"] == "application/json"
        body = json.loads(call.body)
        assert len(body["data"]) == 1  # one POST per image, wrapped
    assert {json.loads(c.body)["data"][0]["imageUUID"] for c in calls} == {i["imageUUID"] for i in items}


def test_official_sdk_sync_and_failure(runware: RunwareSandbox) -> None:
    items = run_sdk(runware, {**task(deliveryMethod="sync", outputType="base64Data")})
    assert Image.open(io.BytesIO(base64.b64decode(items[0]["imageBase64Data"]))).format == "JPEG"
    runware.set_faults(failure_rate=1.0)
    with pytest.raises(RunwareError):
        run_sdk(runware, task())


def test_sync_output_types_formats_safety_and_cost(runware: RunwareSandbox) -> None:
    body = post(
        runware,
        [
            task(
                deliveryMethod="sync",
                numberResults=3,
                outputType="dataURI",
                outputFormat="webp",
                safety={"checkContent": True},
                includeCost=True,
            )
        ],
    ).json()
    assert len(body["data"]) == 3 and "errors" not in body
    assert len({i["seed"] for i in body["data"]}) == 3
    for item in body["data"]:
        assert item["imageDataURI"].startswith("data:image/webp;base64,") and "imageURL" not in item
        assert item["NSFWContent"] is False and item["cost"] > 0
    plain = post(runware, [task(deliveryMethod="sync")]).json()["data"][0]
    assert plain["imageURL"].startswith(runware.url + "/image/") and plain["imageURL"].endswith(".jpg")
    assert plain["imageURL"].rsplit("/", 1)[1] == plain["imageUUID"] + ".jpg"
    assert "cost" not in plain and "NSFWContent" not in plain


def test_async_ack_and_cumulative_get_response(runware: RunwareSandbox) -> None:
    runware.set_faults(latency_min=1.0, latency_max=1.5)  # long enough to see "processing" on a busy machine
    submitted = task(deliveryMethod="async", numberResults=4)
    ack = post(runware, [submitted]).json()
    assert ack == {"data": [{"taskType": "imageInference", "taskUUID": submitted["taskUUID"]}]}
    first = post(runware, [{"taskType": "getResponse", "taskUUID": submitted["taskUUID"]}]).json()
    assert len(first["data"]) == 4 and {i["status"] for i in first["data"]} == {"processing"}
    done = poll(runware, submitted["taskUUID"])
    again = poll(runware, submitted["taskUUID"])
    assert [i["imageUUID"] for i in done["data"]] == [i["imageUUID"] for i in again["data"]]
    assert runware.ledger.peak_inflight(RUNWARE_DEV_KEY) == 1


def test_get_response_unknown_task(runware: RunwareSandbox) -> None:
    response = post(runware, [{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}])
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "taskFailedOrNotFound"


def test_failures_in_errors_with_status_error(runware: RunwareSandbox, receiver: LoopbackServer) -> None:
    runware.set_faults(failure_rate=1.0)
    submitted = task(deliveryMethod="async", webhookURL=receiver.url + "/hook")
    post(runware, [submitted])
    body = poll(runware, submitted["taskUUID"])
    error = body["errors"][0]
    assert (error["status"], error["code"], error["taskUUID"]) == ("error", "timeoutProvider", submitted["taskUUID"])
    hook = json.loads(receiver.wait_for(1)[0].body)
    assert hook["errors"][0]["code"] == "timeoutProvider"


def test_authentication_task_and_auth_errors(runware: RunwareSandbox) -> None:
    auth_task = {"taskType": "authentication", "apiKey": RUNWARE_DEV_KEY}
    ok = post(runware, [auth_task, task(deliveryMethod="sync")], headers={})
    assert ok.status_code == 200 and len(ok.json()["data"]) == 1
    for headers, body in [({}, [task()]), ({"Authorization": "Bearer wrong"}, [task()])]:
        denied = post(runware, body, headers=headers)
        assert denied.status_code == 401
        error = denied.json()["errors"][0]
        assert (error["code"], error["parameter"], error["taskType"]) == ("invalidApiKey", "apiKey", "authentication")
        assert denied.json()["data"] == []


def test_body_must_be_an_array(runware: RunwareSandbox) -> None:
    response = post(runware, task())
    assert response.status_code == 400 and response.json()["errors"][0]["code"] == "invalidRequestBody"


@pytest.mark.parametrize(
    ("overrides", "code", "parameter"),
    [
        ({"width": 500}, "invalidWidth", "width"),
        ({"height": 4096}, "invalidHeight", "height"),
        ({"numberResults": 21}, "invalidNumberResults", "numberResults"),
        ({"positivePrompt": "a"}, "invalidPositivePrompt", "positivePrompt"),
        ({"taskUUID": "not-a-uuid"}, "invalidTaskUUID", "taskUUID"),
        ({"model": "civitai:1@1"}, "invalidModel", "model"),
        ({"outputType": "PDF"}, "invalidOutputType", "outputType"),
        ({"outputFormat": "GIF"}, "invalidOutputFormat", "outputFormat"),
        ({"ttl": 30}, "invalidTtl", "ttl"),
    ],
)
def test_validation_errors_in_runware_shape(
    runware: RunwareSandbox, overrides: dict[str, Any], code: str, parameter: str
) -> None:
    submitted = task(**overrides)
    response = post(runware, [submitted])
    assert response.status_code == 400
    body = response.json()
    assert body["data"] == []
    error = body["errors"][0]
    assert (error["code"], error["parameter"], error["taskType"]) == (code, parameter, "imageInference")
    assert error["taskUUID"] == submitted["taskUUID"] and error["documentation"].startswith("https://")
    if code == "invalidWidth":
        assert (error["min"], error["max"], error["multiplier"]) == (128, 2048, 64)


def test_limits_are_configurable() -> None:
    with RunwareSandbox(keys=(RUNWARE_DEV_KEY,), min_side=64, side_step=16, max_prompt=10) as sb:
        assert post(sb, [task(width=80, height=96, positivePrompt="short", deliveryMethod="sync")]).status_code == 200
        assert post(sb, [task(positivePrompt="far too long a prompt")]).status_code == 400


def test_per_task_errors_beside_other_tasks_data(runware: RunwareSandbox) -> None:
    good, bad = task(deliveryMethod="sync"), task(width=100)
    response = post(runware, [good, bad])
    assert response.status_code == 200
    body = response.json()
    assert [i["taskUUID"] for i in body["data"]] == [good["taskUUID"]]
    assert [e["taskUUID"] for e in body["errors"]] == [bad["taskUUID"]]


def test_duplicate_task_uuid_is_rejected(runware: RunwareSandbox) -> None:
    submitted = task(deliveryMethod="async")
    assert post(runware, [submitted]).status_code == 200
    again = post(runware, [submitted])
    assert again.status_code == 400 and again.json()["errors"][0]["code"] == "duplicateTaskUUID"


def test_output_format_any_case(runware: RunwareSandbox) -> None:
    for fmt, mime in [("png", "image/png"), ("Webp", "image/webp"), ("jpg", "image/jpeg")]:
        item = post(runware, [task(deliveryMethod="sync", outputFormat=fmt)]).json()["data"][0]
        assert httpx.get(item["imageURL"]).headers["content-type"] == mime


def test_webhook_flat_shape(runware: RunwareSandbox, receiver: LoopbackServer) -> None:
    runware.set_faults(webhook_flat=True)
    submitted = task(deliveryMethod="async", webhookURL=receiver.url + "/flat")
    post(runware, [submitted])
    body = json.loads(receiver.wait_for(1)[0].body)
    assert body["taskUUID"] == submitted["taskUUID"] and "imageURL" in body


def test_upload_endpoint_put_after_webhook(runware: RunwareSandbox, receiver: LoopbackServer) -> None:
    submitted = task(
        deliveryMethod="async",
        outputFormat="PNG",
        webhookURL=receiver.url + "/hook",
        uploadEndpoint=receiver.url + "/bucket/key.png?X-Amz-Signature=abc",
    )
    post(runware, [submitted])
    hook, put = receiver.wait_for(2)
    assert (hook.method, put.method) == ("POST", "PUT")
    assert put.path == "/bucket/key.png?X-Amz-Signature=abc" and put.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(put.body)).size == (512, 384)
    assert runware.wait_idle()
    assert [d["kind"] for d in runware.ledger.deliveries] == ["webhook", "upload"]


def test_webhook_retries_with_doubling_backoff(runware: RunwareSandbox, receiver: LoopbackServer) -> None:
    receiver.statuses.extend([500, 429])
    post(runware, [task(deliveryMethod="async", webhookURL=receiver.url + "/hook")])
    calls = receiver.wait_for(3)
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.05 * 0.75 and gaps[1] >= 0.1 * 0.75
    assert runware.wait_idle()
    assert [d["outcome"] for d in runware.ledger.webhooks()] == ["retrying", "retrying", "delivered"]


def test_default_retry_policy_follows_runware() -> None:
    config = RunwareConfig()
    assert (config.webhook_backoff, config.webhook_backoff_max, config.webhook_timeout) == (0.25, 8.0, 5.0)


def test_default_keys_come_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNWARE_API_KEY", raising=False)
    assert RunwareConfig().keys == (RUNWARE_DEV_KEY,)
    monkeypatch.setenv("RUNWARE_API_KEY", "rw-real")
    assert RunwareConfig().keys == ("rw-real",)


def test_sync_window_exceeded_keeps_task_running(runware: RunwareSandbox) -> None:
    runware.config.sync_timeout = 0.05
    runware.set_faults(latency_min=0.2, latency_max=0.2)
    submitted = task(deliveryMethod="sync")
    response = post(runware, [submitted])
    assert response.status_code == 504
    assert poll(runware, submitted["taskUUID"])["data"][0]["status"] == "success"


def test_capacity_limit_answers_429() -> None:
    with RunwareSandbox(keys=(RUNWARE_DEV_KEY,), capacity=1) as sb:
        sb.set_faults(latency_min=0.3, latency_max=0.3)
        assert post(sb, [task(deliveryMethod="async")]).status_code == 200
        response = post(sb, [task(deliveryMethod="async")])
        assert response.status_code == 429 and response.json()["errors"][0]["code"] == "rateLimitExceeded"


def test_ping(runware: RunwareSandbox) -> None:
    assert post(runware, [{"taskType": "ping", "ping": True}]).json() == {"data": [{"taskType": "ping", "pong": True}]}
