"""Every failure knob does what it says; the admin endpoints change and read them over HTTP."""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from PIL import Image

from orchestrator.sandbox import FAL_DEV_KEY, RUNWARE_DEV_KEY, FalSandbox, Faults, RunwareSandbox
from orchestrator.sandbox.common.faults import Dice
from tests.http_helpers import LoopbackServer
from tests.stack import wait_for

FAL_AUTH = {"Authorization": f"Key {FAL_DEV_KEY}"}
RW_AUTH = {"Authorization": f"Bearer {RUNWARE_DEV_KEY}"}


def fal_submit(sb: FalSandbox, hook: str | None = None, model: str = "fal-ai/flux/dev", **body: Any) -> httpx.Response:
    params = {"fal_webhook": hook} if hook else None
    return httpx.post(f"{sb.url}/{model}", params=params, json={"prompt": "a fault", **body}, headers=FAL_AUTH)


def fal_result(sb: FalSandbox, request_id: str, timeout: float = 30.0) -> httpx.Response:
    base = f"{sb.url}/fal-ai/flux/requests/{request_id}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(base + "/status", headers=FAL_AUTH).status_code == 200:
            return httpx.get(base, headers=FAL_AUTH)
        time.sleep(0.02)
    raise AssertionError("not completed")


def rw_task(**overrides: Any) -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "runware:100@1",
        "positivePrompt": "a fault",
        "width": 256,
        "height": 256,
        **overrides,
    }


# -- the dice ---------------------------------------------------------------------------------------------------


def test_rates_zero_and_one_are_exact_and_seeded_rolls_repeat() -> None:
    dice = Dice(seed=3)
    assert all(dice.chance(1.0) for _ in range(1000)) and not any(dice.chance(0.0) for _ in range(1000))
    assert [Dice(9).chance(0.5) for _ in range(50)] == [Dice(9).chance(0.5) for _ in range(50)]
    with pytest.raises(ValueError):
        Faults(failure_rate=1.5)
    with pytest.raises(ValueError):
        Faults().with_changes({"no_such_knob": 1})


# -- submit faults ------------------------------------------------------------------------------------------------


def test_fal_submit_429_with_retry_after_and_budget(fal: FalSandbox, fal_client_for) -> None:
    fal.set_faults(submit_429_rate=1.0, retry_after=0.5)
    response = fal_submit(fal)
    assert response.status_code == 429 and response.headers["Retry-After"] == "0.5"
    assert response.json()["error_type"] == "concurrent_requests_limit"
    fal.set_faults(submit_fault_budget=2)  # the next two submits fail, then they pass
    handle = fal_client_for(fal).submit("fal-ai/flux/dev", {"prompt": "retried by fal_client"})
    assert handle.get()["images"]
    outcomes = [s["outcome"] for s in fal.ledger.submissions]
    assert outcomes == ["rejected", "rejected", "rejected", "accepted"]


@pytest.mark.parametrize("status", [500, 503])
def test_fal_submit_5xx_with_and_without_request_id(fal: FalSandbox, status: int) -> None:
    fal.set_faults(**{f"submit_{status}_rate": 1.0, "submit_5xx_request_id_rate": 1.0})
    from_fal = fal_submit(fal)
    assert from_fal.status_code == status and "x-fal-request-id" in from_fal.headers
    assert from_fal.json()["error_type"]
    fal.set_faults(submit_5xx_request_id_rate=0.0)
    ingress = fal_submit(fal)
    assert ingress.status_code == status and "x-fal-request-id" not in ingress.headers
    assert "nginx" in ingress.text


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "rateLimitExceeded"),
        (402, "insufficientCredits"),
        (500, "internalServerError"),
        (503, "serviceUnavailable"),
        (504, "timeout"),
    ],
)
def test_runware_whole_request_rejections(runware: RunwareSandbox, status: int, code: str) -> None:
    runware.set_faults(**{f"submit_{status}_rate": 1.0})
    submitted = rw_task()
    response = httpx.post(runware.api_url, json=[submitted], headers=RW_AUTH)
    assert response.status_code == status
    error = response.json()["errors"][0]
    assert (error["code"], error["taskUUID"]) == (code, submitted["taskUUID"])
    if status in (429, 503):
        assert response.headers["Retry-After"] == "1"


def test_slow_submit(fal: FalSandbox) -> None:
    fal.set_faults(submit_slow_rate=1.0, submit_slow_seconds=0.3)
    started = time.monotonic()
    assert fal_submit(fal).status_code == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("accepts", [False, True])
def test_submit_timeout_drops_the_connection(fal: FalSandbox, receiver: LoopbackServer, accepts: bool) -> None:
    fal.set_faults(submit_timeout_rate=1.0, submit_timeout_seconds=0.1, submit_timeout_accepts=accepts)
    with pytest.raises(httpx.RemoteProtocolError):
        fal_submit(fal, hook=receiver.url)
    assert fal.wait_idle()
    assert [s["outcome"] for s in fal.ledger.submissions] == (["accepted"] if accepts else ["timeout"])
    assert len(receiver.calls) == (1 if accepts else 0)  # an accepted one still runs and calls back


def test_runware_submit_timeout(runware: RunwareSandbox) -> None:
    runware.set_faults(submit_timeout_rate=1.0, submit_timeout_seconds=0.1)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(runware.api_url, json=[rw_task()], headers=RW_AUTH)


def test_runware_knows_an_accepted_task_while_its_answer_is_held(runware: RunwareSandbox) -> None:
    # Like the real service, a task whose submit answer is lost is already known to getResponse.
    runware.set_faults(submit_timeout_rate=1.0, submit_timeout_seconds=3.0, submit_timeout_accepts=True,
                       latency_min=2.0, latency_max=2.0)
    task = rw_task()
    with httpx.Client(timeout=10) as client:
        import threading

        failed: list[BaseException] = []

        def submit() -> None:
            try:
                client.post(runware.api_url, json=[task], headers=RW_AUTH)
            except httpx.HTTPError as exc:
                failed.append(exc)

        worker = threading.Thread(target=submit)
        worker.start()
        deadline = time.monotonic() + 2.5
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            poll = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]
            body = httpx.post(runware.api_url, json=poll, headers=RW_AUTH).json()
            if body.get("data"):
                break
            time.sleep(0.05)
        assert worker.is_alive()  # the submit is still waiting for its answer...
        assert body["data"][0]["status"] == "processing"  # ...and the task is known, still processing
        worker.join()
    assert failed and isinstance(failed[0], httpx.RemoteProtocolError)
    assert [s.get("answer_lost") for s in runware.ledger.submissions] == [True]


def test_poll_errors_look_like_ingress_503(fal: FalSandbox) -> None:
    request_id = fal_submit(fal).json()["request_id"]
    fal.set_faults(poll_500_rate=1.0)
    response = httpx.get(f"{fal.url}/fal-ai/flux/requests/{request_id}/status", headers=FAL_AUTH)
    assert response.status_code == 503 and "x-fal-request-id" not in response.headers


# -- webhook faults ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrent", [False, True])
def test_duplicate_webhooks(fal: FalSandbox, receiver: LoopbackServer, concurrent: bool) -> None:
    receiver.delay = 0.3  # each call is answered this long after it arrived
    fal.set_faults(webhook_duplicate_rate=1.0, webhook_duplicates=2, webhook_duplicate_concurrent=concurrent)
    fal_submit(fal, hook=receiver.url)
    calls = receiver.wait_for(3)
    assert len({c.body for c in calls}) == 1
    assert fal.wait_idle()
    # Each copy's send, from the sandbox's ledger: it ends when its answer came back.
    sends = [(d["time"] - d["duration"], d["time"]) for d in fal.ledger.webhooks()]
    assert len(sends) == 3
    if concurrent:  # every copy went out before any was answered (not a race on arrival times)
        assert max(start for start, _ in sends) < min(end for _, end in sends)
    else:  # each copy waited for the previous one's answer
        assert calls[-1].at - calls[0].at >= 2 * receiver.delay * 0.9


def test_dropped_webhook_is_never_sent(fal: FalSandbox, receiver: LoopbackServer) -> None:
    fal.set_faults(webhook_drop_rate=1.0)
    request_id = fal_submit(fal, hook=receiver.url).json()["request_id"]
    assert fal_result(fal, request_id).status_code == 200  # the result is still pollable
    assert fal.wait_idle()
    assert receiver.calls == [] and [d["outcome"] for d in fal.ledger.webhooks()] == ["dropped"]


def test_delayed_webhook_arrives_after_result_is_ready(fal: FalSandbox, receiver: LoopbackServer) -> None:
    fal.set_faults(webhook_delay_rate=1.0, webhook_delay_seconds=0.4)
    request_id = fal_submit(fal, hook=receiver.url).json()["request_id"]
    fal_result(fal, request_id)
    # When the result became ready, by fal's own account (its last log line, written on completion),
    # not when this test got round to seeing it, which on a loaded machine can be any time later.
    status = httpx.get(f"{fal.url}/fal-ai/flux/requests/{request_id}/status?logs=1", headers=FAL_AUTH).json()
    ready = datetime.fromisoformat(status["logs"][-1]["timestamp"].replace("Z", "+00:00")).timestamp()
    call = receiver.wait_for(1)[0]
    arrived = call.at + time.time() - time.monotonic()  # the receiver's monotonic stamp on the wall clock
    assert arrived - ready >= 0.3  # nothing came while the result was ready but the webhook held back


def test_reordered_webhooks(receiver: LoopbackServer) -> None:
    faults = Faults(latency_min=0.05, latency_max=0.05, webhook_reorder_window=0.6)
    with FalSandbox(keys=(FAL_DEV_KEY,), concurrency=10, faults=faults, seed=1) as sb:
        ids = []
        for _ in range(8):  # fixed latency and 20 ms apart: they complete in submit order
            ids.append(fal_submit(sb, hook=receiver.url).json()["request_id"])
            time.sleep(0.02)
        calls = receiver.wait_for(8)
        arrived = [json.loads(c.body)["request_id"] for c in calls]
        assert sorted(arrived) == sorted(ids) and arrived != ids


def test_runware_webhook_faults_apply_too(runware: RunwareSandbox, receiver: LoopbackServer) -> None:
    runware.set_faults(webhook_duplicate_rate=1.0, webhook_duplicates=1, webhook_send_failures=False)
    httpx.post(runware.api_url, json=[rw_task(deliveryMethod="async", webhookURL=receiver.url)], headers=RW_AUTH)
    assert len(receiver.wait_for(2)) == 2
    runware.set_faults(failure_rate=1.0, webhook_duplicate_rate=0.0)
    httpx.post(runware.api_url, json=[rw_task(deliveryMethod="async", webhookURL=receiver.url)], headers=RW_AUTH)
    assert runware.wait_idle() and len(receiver.calls) == 2  # failures are not POSTed when switched off


def test_upload_delay_and_drop(runware: RunwareSandbox, receiver: LoopbackServer) -> None:
    runware.set_faults(upload_delay_seconds=0.3)
    httpx.post(
        runware.api_url,
        json=[rw_task(deliveryMethod="async", webhookURL=receiver.url + "/hook", uploadEndpoint=receiver.url + "/put")],
        headers=RW_AUTH,
    )
    hook, put = receiver.wait_for(2)
    assert put.method == "PUT" and put.at - hook.at >= 0.3
    runware.set_faults(upload_delay_seconds=0.0, upload_drop_rate=1.0)
    httpx.post(
        runware.api_url, json=[rw_task(deliveryMethod="sync", uploadEndpoint=receiver.url + "/put")], headers=RW_AUTH
    )
    assert runware.wait_idle() and len(receiver.calls) == 2
    assert runware.ledger.deliveries[-1]["outcome"] == "dropped"



def test_upload_corrupted_is_a_truncated_file_and_marked(runware: RunwareSandbox, receiver: LoopbackServer) -> None:
    runware.set_faults(upload_corrupt_rate=1.0)
    task = rw_task(deliveryMethod="async", outputFormat="PNG", webhookURL=receiver.url + "/hook",
                   uploadEndpoint=receiver.url + "/put")
    httpx.post(runware.api_url, json=[task], headers=RW_AUTH)
    hook, put = receiver.wait_for(2)
    url = json.loads(hook.body)["data"][0]["imageURL"]
    whole = httpx.get(url).content
    assert put.headers["Content-Type"] == "image/png" and put.body == whole[: len(whole) // 2]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(put.body)).load()
    assert runware.wait_idle()
    upload = [d for d in runware.ledger.deliveries if d["kind"] == "upload"]
    assert upload[0]["corrupted"] is True and upload[0]["outcome"] == "delivered"


def test_media_gets_are_logged(runware: RunwareSandbox) -> None:
    body = httpx.post(runware.api_url, json=[rw_task(deliveryMethod="sync")], headers=RW_AUTH).json()
    assert runware.ledger.media_gets == []
    name = body["data"][0]["imageURL"].rsplit("/", 1)[1]
    httpx.get(body["data"][0]["imageURL"])
    httpx.get(runware.url + "/image/nothing.jpg")
    assert [(m["name"], m["status"]) for m in runware.ledger.media_gets] == [(name, 200), ("nothing.jpg", 404)]
    assert httpx.get(runware.url + "/_sandbox/ledger").json()["media_gets"][0]["name"] == name

# -- generation faults --------------------------------------------------------------------------------------------


def test_nsfw_flags_and_black_images(fal: FalSandbox, runware: RunwareSandbox) -> None:
    fal.set_faults(nsfw_rate=1.0)
    result = fal_result(fal, fal_submit(fal).json()["request_id"]).json()
    assert result["has_nsfw_concepts"] == [True]
    image = Image.open(io.BytesIO(httpx.get(result["images"][0]["url"]).content))
    assert image.getextrema() == ((0, 0), (0, 0), (0, 0))
    runware.set_faults(nsfw_rate=1.0)
    body = httpx.post(
        runware.api_url, json=[rw_task(deliveryMethod="sync", safety={"mode": "fast"})], headers=RW_AUTH
    ).json()
    assert body["data"][0]["NSFWContent"] is True


def test_latency_distribution(fal: FalSandbox) -> None:
    fal.set_faults(latency_min=0.25, latency_max=0.25)
    started = time.monotonic()
    result = fal_result(fal, fal_submit(fal).json()["request_id"]).json()
    assert time.monotonic() - started >= 0.25 and result["timings"]["inference"] == 0.25
    fal.set_faults(latency_min=0.01, latency_max=0.05)
    timings = [fal_result(fal, fal_submit(fal).json()["request_id"]).json()["timings"]["inference"] for _ in range(5)]
    assert all(0.01 <= t <= 0.05 for t in timings) and len(set(timings)) > 1


def test_per_model_overrides(fal: FalSandbox) -> None:
    fal.set_faults(models={"fal-ai/flux/dev": {"failure_rate": 1.0}})
    assert fal_result(fal, fal_submit(fal).json()["request_id"]).status_code == 500
    schnell = fal_submit(fal, model="fal-ai/flux/schnell").json()["request_id"]
    assert fal_result(fal, schnell).status_code == 200


def test_early_result_and_media_expiry(fal: FalSandbox, runware: RunwareSandbox) -> None:
    # TTLs long enough to read the result first on a loaded machine; the expiries are waited for,
    # well short of the default TTLs (an hour and more), so the knobs are what ends them.
    fal.set_faults(result_ttl=1.0, media_ttl=1.0)
    request_id = fal_submit(fal).json()["request_id"]
    url = fal_result(fal, request_id).json()["images"][0]["url"]
    result_url = f"{fal.url}/fal-ai/flux/requests/{request_id}"
    wait_for(lambda: httpx.get(result_url, headers=FAL_AUTH).status_code == 404, timeout=20, what="fal result expiry")
    wait_for(lambda: httpx.get(url).status_code == 404, timeout=20, what="fal image expiry")
    runware.set_faults(result_ttl=1.0, media_ttl=1.0)
    submitted = rw_task(deliveryMethod="sync")
    item = httpx.post(runware.api_url, json=[submitted], headers=RW_AUTH).json()["data"][0]
    wait_for(lambda: httpx.get(item["imageURL"]).status_code == 404, timeout=20, what="Runware image expiry")
    poll = [{"taskType": "getResponse", "taskUUID": submitted["taskUUID"]}]

    def forgotten() -> bool:
        errors = httpx.post(runware.api_url, json=poll, headers=RW_AUTH).json().get("errors") or [{}]
        return errors[0].get("code") == "taskFailedOrNotFound"

    wait_for(forgotten, timeout=20, what="Runware result expiry")


# -- admin endpoints and ledger ---------------------------------------------------------------------------------


def test_admin_faults_ledger_and_reset(fal: FalSandbox, receiver: LoopbackServer) -> None:
    admin = f"{fal.url}/_sandbox"
    assert httpx.get(f"{admin}/faults").json()["failure_rate"] == 0.0
    changed = httpx.put(f"{admin}/faults", json={"failure_rate": 1.0, "failure_status": 503})
    assert changed.status_code == 200 and fal.faults.failure_rate == 1.0
    assert httpx.put(f"{admin}/faults", json={"bogus": 1}).status_code == 400
    assert httpx.put(f"{admin}/faults", json={"failure_rate": 2}).status_code == 400
    replaced = httpx.put(f"{admin}/faults?replace=1", json={"nsfw_rate": 0.5}).json()
    assert replaced["failure_rate"] == 0.0 and replaced["nsfw_rate"] == 0.5 and replaced["latency_max"] == 0.2
    request_id = fal_submit(fal, hook=receiver.url).json()["request_id"]
    fal_result(fal, request_id)
    assert fal.wait_idle()
    ledger = httpx.get(f"{admin}/ledger").json()
    submission = ledger["submissions"][0]
    assert (submission["model"], submission["key"], submission["request_id"]) == (
        "fal-ai/flux/dev",
        "sandbox-key-id",
        request_id,
    )
    assert submission["input"] == {"prompt": "a fault"} and submission["time"] > 0
    assert ledger["peak_inflight"] == {"sandbox-key-id": 1} and ledger["inflight"] == {"sandbox-key-id": 0}
    delivery = ledger["deliveries"][0]
    assert (delivery["url"], delivery["status"], delivery["outcome"]) == (receiver.url, 200, "delivered")
    assert httpx.post(f"{admin}/reset").json() == {"ok": True}
    assert httpx.get(f"{admin}/ledger").json()["submissions"] == []
    assert fal.faults.nsfw_rate == 0.0  # start-up faults restored
    assert httpx.get(f"{fal.url}/fal-ai/flux/requests/{request_id}/status", headers=FAL_AUTH).status_code == 404


def test_runware_ledger_counts_in_flight_per_key(runware: RunwareSandbox) -> None:
    runware.set_faults(latency_min=3.0, latency_max=3.0)  # all three still run when counted, even under load
    for _ in range(3):
        httpx.post(runware.api_url, json=[rw_task(deliveryMethod="async")], headers=RW_AUTH)
    assert runware.ledger.inflight(RUNWARE_DEV_KEY) == 3
    assert runware.wait_idle()
    assert runware.ledger.peak_inflight(RUNWARE_DEV_KEY) == 3 and runware.ledger.inflight() == 0
    assert len(runware.ledger.submissions) == 3


def test_faults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_SANDBOX_FAULTS", json.dumps({"webhook_drop_rate": 1.0}))
    assert FalSandbox().faults.webhook_drop_rate == 1.0
