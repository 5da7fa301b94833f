"""fal sandbox: the official fal_client against it, and the queue API rules of fal.md (b)."""

from __future__ import annotations

import asyncio
import io
import json
import time

import fal_client
import httpx
import pytest
from PIL import Image

from orchestrator.sandbox import FAL_DEV_KEY, FalConfig, FalSandbox, Faults
from tests.http_helpers import LoopbackServer
from tests.stack import wait_for

AUTH = {"Authorization": f"Key {FAL_DEV_KEY}"}
# A request that must still be running (or waiting) when the test looks at it takes this long, so
# no scheduler delay on a loaded machine can let it finish first; the test cancels it, or the
# sandbox's shutdown does.
BUSY = Faults(latency_min=60.0, latency_max=60.0)


def submit(sb: FalSandbox, model: str, body: object, **kwargs: object) -> dict:
    response = httpx.post(f"{sb.url}/{model}", json=body, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def wait_completed(status_url: str, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(status_url, headers=AUTH)
        if response.json()["status"] == "COMPLETED":
            return response
        time.sleep(0.02)
    raise AssertionError("request did not complete")


def status_of(body: dict) -> dict:
    return httpx.get(body["status_url"], headers=AUTH).json()


def hold_slots(sb: FalSandbox, count: int) -> list[dict]:
    """Fill `count` of the key's running slots with flux/dev requests that last until cancelled."""
    sb.set_faults(models={"fal-ai/flux/dev": {"latency_min": 60.0, "latency_max": 60.0}})
    held = [submit(sb, "fal-ai/flux/dev", {"prompt": f"holds a slot {i}"}) for i in range(count)]
    wait_for(lambda: all(status_of(b)["status"] == "IN_PROGRESS" for b in held), timeout=30, what="slots held")
    return held


def release(held: dict) -> None:
    """Cancel a slot-holding request: its slot goes to the next waiting request."""
    assert httpx.put(held["cancel_url"], headers=AUTH).status_code == 202


def test_official_client_submit_status_result_with_webhook(fal, receiver: LoopbackServer, fal_client_for) -> None:
    client = fal_client_for(fal)
    handle = client.submit(
        "fal-ai/flux/dev", {"prompt": "a red fox in the snow", "seed": 7}, webhook_url=receiver.url + "/hook?job=1"
    )
    status = handle.status(with_logs=True)
    assert isinstance(status, fal_client.Queued | fal_client.InProgress | fal_client.Completed)
    result = handle.get()
    assert result["seed"] == 7 and result["prompt"] == "a red fox in the snow"
    assert result["has_nsfw_concepts"] == [False] and "inference" in result["timings"]
    image = result["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (1024, 768, "image/jpeg")
    download = httpx.get(image["url"])
    assert len(download.content) == image["file_size"]
    assert Image.open(io.BytesIO(download.content)).size == (1024, 768)
    completed = client.status("fal-ai/flux/dev", handle.request_id, with_logs=True)
    assert isinstance(completed, fal_client.Completed)
    assert completed.logs and completed.metrics["inference_time"] > 0
    call = receiver.wait_for(1)[0]
    assert call.path == "/hook?job=1"
    assert json.loads(call.body)["request_id"] == handle.request_id


def test_official_client_cancel_outcomes(fal_client_for) -> None:
    with FalSandbox(keys=(FAL_DEV_KEY,), concurrency=1, faults=BUSY) as sb:
        client = fal_client_for(sb)
        running = client.submit("fal-ai/flux/schnell", {"prompt": "running one"})
        queued = client.submit("fal-ai/flux/schnell", {"prompt": "queued one"})
        assert isinstance(client.status("fal-ai/flux/schnell", queued.request_id), fal_client.Queued)
        queued.cancel()  # 202 CANCELLATION_REQUESTED
        status = client.status("fal-ai/flux/schnell", queued.request_id, with_logs=True)
        assert isinstance(status, fal_client.Completed) and status.error_type == "client_cancelled"
        assert not any(log["message"] == "Request started" for log in status.logs)  # it never ran
        running.cancel()
        assert client.status("fal-ai/flux/schnell", running.request_id).error_type == "client_cancelled"
        with pytest.raises(fal_client.client.FalClientHTTPError) as done:
            running.cancel()
        assert done.value.status_code == 400
        assert done.value.response.json() == {"status": "ALREADY_COMPLETED"}
        with pytest.raises(fal_client.client.FalClientHTTPError) as missing:
            client.cancel("fal-ai/flux/schnell", "00000000-0000-4000-8000-000000000000")
        assert missing.value.status_code == 404
        assert missing.value.response.json() == {"status": "NOT_FOUND"}
        assert sb.ledger.peak_inflight(FAL_DEV_KEY) == 1


def test_cancel_of_a_request_that_just_got_its_slot(receiver: LoopbackServer) -> None:
    # Two cancels handled back to back: the first frees the slot and the next request starts, the
    # second cancels that one before its task has run a single step. It must still end as
    # client_cancelled with its webhook and give its slot back (it once stayed IN_PROGRESS forever).
    with FalSandbox(keys=(FAL_DEV_KEY,), concurrency=1, faults=BUSY) as sb:
        running = submit(sb, "fal-ai/flux/dev", {"prompt": "running"}, params={"fal_webhook": receiver.url})
        starting = submit(sb, "fal-ai/flux/dev", {"prompt": "starting"}, params={"fal_webhook": receiver.url})
        last = submit(sb, "fal-ai/flux/dev", {"prompt": "last"})

        async def cancel_back_to_back() -> str:
            first, second = sb._requests[running["request_id"]], sb._requests[starting["request_id"]]
            first.cancel_requested = True
            assert first.task is not None
            first.task.cancel()
            while second.task is None:  # the first handles its cancel; the second gets the slot
                await asyncio.sleep(0)
            state = second.state
            second.cancel_requested = True
            second.task.cancel()
            return state

        assert sb.call(cancel_back_to_back()) == "IN_PROGRESS"
        for body in (running, starting):
            assert wait_completed(body["status_url"]).json()["error_type"] == "client_cancelled"
        assert len(receiver.wait_for(2)) == 2
        wait_for(lambda: status_of(last)["status"] == "IN_PROGRESS", timeout=30, what="the freed slot to be reused")


def test_cancel_queued_can_answer_200_ok() -> None:
    with FalSandbox(keys=(FAL_DEV_KEY,), concurrency=1, cancel_queued_status=200, faults=BUSY) as sb:
        submit(sb, "fal-ai/flux/dev", {"prompt": "first"})
        queued = submit(sb, "fal-ai/flux/dev", {"prompt": "second"})
        response = httpx.put(queued["cancel_url"], headers=AUTH)
        assert (response.status_code, response.json()) == (200, {"status": "OK"})


def test_url_rule_status_codes_and_result_alias(fal: FalSandbox) -> None:
    # It waits behind both running slots while its early answers are read, then runs alone.
    held = hold_slots(fal, 2)
    fal.set_faults(latency_min=0.2, latency_max=0.2)
    body = submit(fal, "rundiffusion-fal/juggernaut-flux/lightning", {"prompt": "juggernaut"})
    base = f"{fal.url}/rundiffusion-fal/juggernaut-flux/requests/{body['request_id']}"
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
    assert (body["response_url"], body["status_url"], body["cancel_url"]) == (base, base + "/status", base + "/cancel")
    assert body["gateway_request_id"] == body["request_id"]
    early = httpx.get(base + "/status", headers=AUTH)
    assert early.status_code == 202 and early.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert early.json()["response_url"] == base
    assert httpx.get(base, headers=AUTH).status_code == 400  # result before completion
    full_path = f"{fal.url}/rundiffusion-fal/juggernaut-flux/lightning/requests/{body['request_id']}/status"
    assert httpx.get(full_path, headers=AUTH).status_code == 404  # the sub-path is for submit only
    release(held[0])
    done = wait_completed(base + "/status")
    assert done.status_code == 200 and done.json()["metrics"]["inference_time"] == pytest.approx(0.2)
    result, alias = httpx.get(base, headers=AUTH), httpx.get(base + "/response", headers=AUTH)
    assert result.status_code == alias.status_code == 200
    assert result.json() == alias.json()
    assert result.json()["images"][0]["content_type"] == "image/png"  # juggernaut defaults to png


@pytest.mark.parametrize(("value", "expect_list"), [("1", True), ("true", True), ("0", False), ("false", False)])
def test_logs_key_in_every_encoding(fal: FalSandbox, value: str, expect_list: bool) -> None:
    body = submit(fal, "fal-ai/flux/schnell", {"prompt": "logs"})
    wait_completed(body["status_url"])
    data = httpx.get(body["status_url"], params={"logs": value}, headers=AUTH).json()
    assert "logs" in data
    assert isinstance(data["logs"], list) if expect_list else data["logs"] is None


def test_auth_errors(fal: FalSandbox, fal_client_for) -> None:
    url = f"{fal.url}/fal-ai/flux/dev"
    wrong = httpx.post(url, json={"prompt": "x"}, headers={"Authorization": "Key nope:nope"})
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "No user found for Key ID and Secret"})
    malformed = httpx.post(url, json={"prompt": "x"}, headers={"Authorization": "Key no-colon"})
    assert malformed.status_code == 401 and "Expected '<key_id>:<key_secret>'" in malformed.json()["detail"]
    with pytest.raises(fal_client.client.FalClientHTTPError) as exc:
        fal_client_for(fal, key="other:key").submit("fal-ai/flux/dev", {"prompt": "x"})
    assert exc.value.status_code == 401


def test_default_keys_come_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    assert FalConfig().keys == (FAL_DEV_KEY,)
    monkeypatch.setenv("FAL_KEY", "id:secret")
    assert FalConfig().keys == ("id:secret",)


def test_validation_errors_complete_as_422(fal: FalSandbox, receiver: LoopbackServer) -> None:
    bad = {"image_size": "huge", "num_inference_steps": 0, "output_format": "gif", "acceleration": "high"}
    body = submit(fal, "fal-ai/flux-lora", bad, params={"fal_webhook": receiver.url})
    status = wait_completed(body["status_url"]).json()
    assert status["error"] == "Invalid status code: 422"
    result = httpx.get(body["response_url"], headers=AUTH)
    assert result.status_code == 422
    fields = {tuple(item["loc"]): item["type"] for item in result.json()["detail"]}
    assert fields == {
        ("body", "prompt"): "value_error.missing",
        ("body", "image_size"): "one_of",
        ("body", "num_inference_steps"): "greater_than_equal",
        ("body", "output_format"): "one_of",
        ("body", "acceleration"): "one_of",  # flux-lora has no "high"
    }
    hook = json.loads(receiver.wait_for(1)[0].body)
    assert hook["status"] == "ERROR" and hook["payload"] == result.json()


def test_custom_image_size_sync_mode_and_multiple_images(fal: FalSandbox) -> None:
    payload = {
        "prompt": "tiny",
        "image_size": {"width": 320, "height": 192},
        "num_images": 2,
        "sync_mode": True,
        "output_format": "png",
        "seed": 2**64 + 5,
    }
    body = submit(fal, "fal-ai/flux/dev", payload)
    wait_completed(body["status_url"])
    result = httpx.get(body["response_url"], headers=AUTH).json()
    assert result["seed"] == 2**64 + 5 and len(result["images"]) == 2
    for image in result["images"]:
        assert image["url"].startswith("data:image/png;base64,")
        assert (image["width"], image["height"]) == (320, 192)


def test_concurrency_limit_and_low_priority_waits(fal: FalSandbox) -> None:
    first = hold_slots(fal, 2)  # the key's two slots, until released
    fal.set_faults(latency_min=0.1, latency_max=0.1)
    low = submit(fal, "fal-ai/flux/schnell", {"prompt": "low"}, headers={"X-Fal-Queue-Priority": "low"})
    normal = submit(fal, "fal-ai/flux/schnell", {"prompt": "normal"})
    assert httpx.get(low["status_url"], headers=AUTH).json()["queue_position"] == 1
    assert httpx.get(normal["status_url"], headers=AUTH).json()["queue_position"] == 0
    # One slot frees: normal takes it although low came first; low gets it only when normal is done.
    release(first[0])
    for body in (low, normal):
        wait_completed(body["status_url"])
    release(first[1])
    for body in first:
        wait_completed(body["status_url"])
    assert fal.ledger.peak_inflight(FAL_DEV_KEY) == 2
    started = {}
    for body in (low, normal):
        logs = httpx.get(body["status_url"], params={"logs": 1}, headers=AUTH).json()["logs"]
        started[body["request_id"]] = logs[0]["timestamp"]
    assert started[normal["request_id"]] < started[low["request_id"]]


def test_max_queue_length_rejects_with_429(fal: FalSandbox) -> None:
    fal.replace_faults(BUSY)
    for i in range(3):  # two run, one waits
        submit(fal, "fal-ai/flux/dev", {"prompt": f"p{i}"})
    url = f"{fal.url}/fal-ai/flux/dev"
    full = httpx.post(url, params={"fal_max_queue_length": 1}, json={"prompt": "x"}, headers=AUTH)
    assert full.status_code == 429
    assert httpx.post(url, params={"fal_max_queue_length": 2}, json={"prompt": "x"}, headers=AUTH).status_code == 200


def test_sse_stream_until_completed_with_keepalive() -> None:
    config = FalConfig(keys=(FAL_DEV_KEY,), keepalive_interval=0.05, faults=Faults(latency_min=0.3, latency_max=0.3))
    with FalSandbox(config) as sb:
        # The streamed request waits behind held slots until the stream has shown a keep-alive.
        held = hold_slots(sb, 2)
        body = submit(sb, "fal-ai/flux/schnell", {"prompt": "stream"})
        lines = []
        with httpx.stream("GET", body["status_url"] + "/stream", params={"logs": 1}, headers=AUTH) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line == ": keep-alive" and ": keep-alive" not in lines:
                    release(held[0])
                lines.append(line)
        events = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
        assert events[-1]["status"] == "COMPLETED" and isinstance(events[-1]["logs"], list)
        assert "IN_PROGRESS" in [e["status"] for e in events]
        assert ": keep-alive" in lines
        assert all(e["response_url"] == body["response_url"] for e in events)


def test_results_expire_like_fal() -> None:
    # The short TTLs leave seconds to read the result and image first, however loaded the machine;
    # the expiries are then waited for, well short of the 60 s a small result would keep.
    config = FalConfig(
        keys=(FAL_DEV_KEY,),
        result_ttl=60,
        large_result_ttl=2.0,
        large_result_bytes=100,
        media_ttl=3.0,
        faults=Faults(latency_min=0.01, latency_max=0.01),
    )
    with FalSandbox(config) as sb:
        body = submit(sb, "fal-ai/flux/dev", {"prompt": "expiring"})
        wait_completed(body["status_url"])
        image_url = httpx.get(body["response_url"], headers=AUTH).json()["images"][0]["url"]
        assert httpx.get(image_url).status_code == 200
        wait_for(lambda: httpx.get(body["response_url"], headers=AUTH).status_code == 404, timeout=20,
                 what="the result to expire")  # >= 100 bytes: short TTL
        wait_for(lambda: httpx.get(image_url).status_code == 404, timeout=20, what="the image to expire")


def test_start_timeout_header_times_out_waiting_requests() -> None:
    with FalSandbox(keys=(FAL_DEV_KEY,), concurrency=1, faults=BUSY) as sb:
        submit(sb, "fal-ai/flux/dev", {"prompt": "busy"})
        waiting = submit(sb, "fal-ai/flux/dev", {"prompt": "late"}, headers={"X-Fal-Request-Timeout": "0.1"})
        status = wait_completed(waiting["status_url"]).json()
        assert status["error_type"] == "request_timeout"
        result = httpx.get(waiting["response_url"], headers=AUTH)
        assert result.status_code == 504 and result.headers["X-Fal-Request-Timeout-Type"] == "user"


def test_public_url_is_used_in_answers() -> None:
    with FalSandbox(keys=(FAL_DEV_KEY,), public_url="http://fal.sandbox.test:8080/") as sb:
        url = f"http://127.0.0.1:{sb.port}/fal-ai/flux/dev"
        body = httpx.post(url, json={"prompt": "x"}, headers=AUTH).json()
        assert body["status_url"].startswith("http://fal.sandbox.test:8080/fal-ai/flux/requests/")
        assert sb.jwks_url == "http://fal.sandbox.test:8080/.well-known/jwks.json"


def test_unknown_model_and_request_are_404(fal: FalSandbox) -> None:
    assert httpx.post(f"{fal.url}/fal-ai/unknown", json={}, headers=AUTH).status_code == 404
    assert httpx.get(f"{fal.url}/fal-ai/flux/requests/nope/status", headers=AUTH).status_code == 404
