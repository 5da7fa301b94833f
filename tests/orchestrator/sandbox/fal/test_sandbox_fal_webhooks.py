"""fal webhooks: Ed25519 signatures checked independently against the JWKS, bodies, retries, forgeries."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from orchestrator.sandbox import FAL_DEV_KEY, FalSandbox
from tests.http_helpers import LoopbackServer

AUTH = {"Authorization": f"Key {FAL_DEV_KEY}"}


def verify_fal_signature(headers: dict[str, str], body: bytes, jwks: dict[str, object]) -> bool:
    """Check a fal webhook exactly as fal documents it, using only `cryptography` (not sandbox code)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        parts = [lower[f"x-fal-webhook-{name}"] for name in ("request-id", "user-id", "timestamp")]
        signature = bytes.fromhex(lower["x-fal-webhook-signature"])
    except (KeyError, ValueError):
        return False
    message = "\n".join([*parts, hashlib.sha256(body).hexdigest()]).encode()
    for jwk in jwks["keys"]:  # type: ignore[attr-defined]
        x = jwk["x"]
        public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
        try:
            public.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


def submit_with_hook(sb: FalSandbox, receiver: LoopbackServer, prompt: str = "a lighthouse") -> str:
    response = httpx.post(
        f"{sb.url}/fal-ai/flux/schnell",
        params={"fal_webhook": receiver.url + "/fal"},
        json={"prompt": prompt},
        headers=AUTH,
    )
    assert response.status_code == 200
    return response.json()["request_id"]


def jwks(sb: FalSandbox) -> dict:
    return httpx.get(sb.jwks_url).json()


def test_signature_verifies_against_published_jwks(fal: FalSandbox, receiver: LoopbackServer) -> None:
    request_id = submit_with_hook(fal, receiver)
    call = receiver.wait_for(1)[0]
    document = jwks(fal)
    key = document["keys"][0]
    assert (key["kty"], key["crv"], len(key["x"])) == ("OKP", "Ed25519", 43) and "=" not in key["x"]
    assert len(base64.urlsafe_b64decode(key["x"] + "=")) == 32 and key["kid"]
    assert verify_fal_signature(call.headers, call.body, document)
    assert not verify_fal_signature(call.headers, call.body + b" ", document)  # raw bytes are signed
    assert call.headers["X-Fal-Webhook-Request-Id"] == request_id
    assert call.headers["X-Fal-Webhook-User-Id"] == fal.config.user_id
    assert abs(int(call.headers["X-Fal-Webhook-Timestamp"]) - time.time()) < 300
    assert len(call.headers["X-Fal-Webhook-Signature"]) == 128
    assert call.headers["Content-Type"] == "application/json"
    body = json.loads(call.body)
    assert body["request_id"] == body["gateway_request_id"] == request_id
    assert body["status"] == "OK" and body["error"] is None
    assert body["payload"]["images"][0]["url"].startswith(fal.url + "/files/")


@pytest.mark.parametrize("status", [500, 503, 422])
def test_model_failure_sends_error_webhook(fal: FalSandbox, receiver: LoopbackServer, status: int) -> None:
    fal.set_faults(failure_rate=1.0, failure_status=status)
    request_id = submit_with_hook(fal, receiver)
    body = json.loads(receiver.wait_for(1)[0].body)
    assert body["status"] == "ERROR" and body["error"] == f"Invalid status code: {status}"
    base = f"{fal.url}/fal-ai/flux/requests/{request_id}"
    result = httpx.get(base, headers=AUTH)
    assert result.status_code == status and result.json() == body["payload"]
    state = httpx.get(base + "/status", headers=AUTH).json()
    assert state["status"] == "COMPLETED" and state["error"]
    if status != 422:
        assert state["error_type"] == result.headers["X-Fal-Error-Type"] == result.json()["error_type"]


def test_payload_error_mode(fal: FalSandbox, receiver: LoopbackServer) -> None:
    fal.set_faults(payload_error_rate=1.0)
    request_id = submit_with_hook(fal, receiver)
    body = json.loads(receiver.wait_for(1)[0].body)
    assert body["status"] == "OK" and body["payload"] is None and "not JSON serializable" in body["payload_error"]
    result = httpx.get(f"{fal.url}/fal-ai/flux/requests/{request_id}", headers=AUTH)
    assert result.status_code == 200 and result.json()["images"]  # the result is still there


def test_retries_with_backoff_until_2xx(fal: FalSandbox, receiver: LoopbackServer) -> None:
    receiver.statuses.extend([500, 302])  # a redirect is a failure too
    submit_with_hook(fal, receiver)
    calls = receiver.wait_for(3)
    assert [c.body for c in calls] == [calls[0].body] * 3
    assert calls[1].at - calls[0].at >= 0.05 * 0.9 and calls[2].at - calls[1].at >= 0.1 * 0.9  # doubling
    assert fal.wait_idle()
    outcomes = [(d["attempt"], d["outcome"], d["status"]) for d in fal.ledger.webhooks()]
    assert outcomes == [(1, "retrying", 500), (2, "retrying", 302), (3, "delivered", 200)]
    # every attempt is signed afresh and verifies
    assert all(verify_fal_signature(c.headers, c.body, jwks(fal)) for c in calls)


def test_gives_up_after_configured_retries(fal: FalSandbox, receiver: LoopbackServer) -> None:
    receiver.status = 503
    submit_with_hook(fal, receiver)
    assert fal.wait_idle()
    assert len(receiver.calls) == 1 + fal.config.webhook_retries
    assert fal.ledger.webhooks()[-1]["outcome"] == "failed"


def test_slow_receiver_times_out_and_is_retried(receiver: LoopbackServer) -> None:
    receiver.delay = 0.5
    with FalSandbox(keys=(FAL_DEV_KEY,), webhook_timeout=0.1, webhook_retries=1, webhook_backoff=0.01) as sb:
        submit_with_hook(sb, receiver)
        assert sb.wait_idle()
        assert [d["error"] for d in sb.ledger.webhooks()] == ["timeout", "timeout"]


@pytest.mark.parametrize("knob", ["webhook_bad_signature_rate", "webhook_unknown_key_rate"])
def test_forged_signatures_fail_verification(fal: FalSandbox, receiver: LoopbackServer, knob: str) -> None:
    fal.set_faults(**{knob: 1.0})
    submit_with_hook(fal, receiver)
    call = receiver.wait_for(1)[0]
    assert not verify_fal_signature(call.headers, call.body, jwks(fal))


def test_stale_timestamp(fal: FalSandbox, receiver: LoopbackServer) -> None:
    fal.set_faults(webhook_stale_timestamp_rate=1.0)
    submit_with_hook(fal, receiver)
    call = receiver.wait_for(1)[0]
    assert verify_fal_signature(call.headers, call.body, jwks(fal))  # valid signature...
    assert time.time() - int(call.headers["X-Fal-Webhook-Timestamp"]) > 300  # ...outside the tolerance


def test_key_rotation_publishes_and_signs_with_new_key(fal: FalSandbox, receiver: LoopbackServer) -> None:
    old = jwks(fal)
    new_key = httpx.post(f"{fal.url}/_sandbox/rotate-key").json()
    document = jwks(fal)
    assert [k["kid"] for k in document["keys"]] == [old["keys"][0]["kid"], new_key["kid"]]
    submit_with_hook(fal, receiver)
    call = receiver.wait_for(1)[0]
    assert verify_fal_signature(call.headers, call.body, {"keys": [new_key]})
    assert not verify_fal_signature(call.headers, call.body, old)
    fal.rotate_key(keep_old=False)
    assert len(fal.jwks()["keys"]) == 1
