"""fal webhook signatures: Ed25519 keys published as a JWKS by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from orchestrator.netutil import free_port
from orchestrator.providers.errors import TransientProviderError, WebhookRejected
from orchestrator.providers.fal.adapter import FalAdapter
from orchestrator.providers.fal.signature import (
    InvalidSignature,
    JwksCache,
    JwksUnavailable,
    decode_public_key,
    keys_from_jwks,
    verify_fal_signature,
)
from orchestrator.providers.runware.adapter import RunwareAdapter
from tests.http_helpers import Answer, Call, LoopbackServer

NOW = 1_800_000_000
BODY = b'{"request_id":"r-1","status":"OK","payload":{"images":[],"seed":15860307465884635512}}'


def public_x(key: Ed25519PrivateKey, *, padded: bool = False) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).decode()
    return x if padded else x.rstrip("=")


def sign(
    key: Ed25519PrivateKey, body: bytes = BODY, ts: int = NOW, override: dict[str, str] | None = None
) -> dict[str, str]:
    message = f"r-1\nuser-9\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    headers = {
        "X-Fal-Webhook-Request-Id": "r-1",
        "X-Fal-Webhook-User-Id": "user-9",
        "X-Fal-Webhook-Timestamp": str(ts),
        "X-Fal-Webhook-Signature": key.sign(message).hex(),
    }
    return headers | (override or {})


class JwksServer(LoopbackServer):
    """A tiny JWKS endpoint whose key set and status the test can change."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        super().__init__(self._serve, path="/.well-known/jwks.json")

    @property
    def hits(self) -> int:
        return len(self.calls)

    def _serve(self, _call: Call) -> Answer:
        return Answer(self.status, json.dumps(self.document).encode(), {"Content-Type": "application/json"})

    def publish(self, *keys: Ed25519PrivateKey, padded: bool = False) -> None:
        entries = [{"kty": "OKP", "crv": "Ed25519", "x": public_x(k, padded=padded)} for k in keys]
        self.document = {"keys": entries}


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(jwks: JwksServer, clock: Clock) -> Iterator[JwksCache]:
    client = httpx.Client(timeout=5.0)
    yield JwksCache(jwks.url, client, clock=clock, min_refresh_interval=60.0)
    client.close()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


# --- verify_fal_signature ---------------------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True])
def test_valid_signature_with_padded_and_unpadded_x(key: Ed25519PrivateKey, padded: bool) -> None:
    keys = keys_from_jwks({"keys": [{"x": public_x(key, padded=padded)}]})
    assert len(public_x(key)) == 43
    verify_fal_signature(sign(key), BODY, keys, now=NOW)


def test_header_names_are_case_insensitive(key: Ed25519PrivateKey) -> None:
    headers = {k.lower(): v for k, v in sign(key).items()}
    verify_fal_signature(headers, BODY, [decode_public_key(public_x(key))], now=NOW)


def test_any_published_key_may_verify(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    keys = [decode_public_key(public_x(other)), decode_public_key(public_x(key))]
    verify_fal_signature(sign(key), BODY, keys, now=NOW)


def test_forged_signature_is_rejected(key: Ed25519PrivateKey) -> None:
    headers = sign(key, override={"X-Fal-Webhook-Signature": "ab" * 64})
    with pytest.raises(InvalidSignature) as info:
        verify_fal_signature(headers, BODY, [decode_public_key(public_x(key))], now=NOW)
    assert info.value.key_mismatch


def test_wrong_key_is_rejected(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(InvalidSignature, match="no published key"):
        verify_fal_signature(sign(other), BODY, [decode_public_key(public_x(key))], now=NOW)


def test_tampered_body_is_rejected(key: Ed25519PrivateKey) -> None:
    tampered = BODY.replace(b'"OK"', b'"ERROR"')
    with pytest.raises(InvalidSignature):
        verify_fal_signature(sign(key), tampered, [decode_public_key(public_x(key))], now=NOW)


def test_signature_over_reserialised_json_does_not_verify(key: Ed25519PrivateKey) -> None:
    reserialised = json.dumps(json.loads(BODY)).encode()
    with pytest.raises(InvalidSignature):
        verify_fal_signature(sign(key), reserialised, [decode_public_key(public_x(key))], now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 10_000])
def test_stale_timestamp_both_sides(key: Ed25519PrivateKey, offset: int) -> None:
    headers = sign(key, ts=NOW + offset)
    with pytest.raises(InvalidSignature, match="window") as info:
        verify_fal_signature(headers, BODY, [decode_public_key(public_x(key))], now=NOW)
    assert not info.value.key_mismatch


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_at_the_window_edge_is_accepted(key: Ed25519PrivateKey, offset: int) -> None:
    verify_fal_signature(sign(key, ts=NOW + offset), BODY, [decode_public_key(public_x(key))], now=NOW)


@pytest.mark.parametrize(
    "header",
    ["X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature"],
)
def test_missing_header_is_rejected(key: Ed25519PrivateKey, header: str) -> None:
    headers = sign(key)
    del headers[header]
    with pytest.raises(InvalidSignature, match="missing header"):
        verify_fal_signature(headers, BODY, [decode_public_key(public_x(key))], now=NOW)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Fal-Webhook-Signature", "zz" * 64),
        ("X-Fal-Webhook-Signature", "ab" * 32),
        ("X-Fal-Webhook-Timestamp", "1800000000.5"),
        ("X-Fal-Webhook-Timestamp", "-1800000000"),
        ("X-Fal-Webhook-Timestamp", ""),
    ],
)
def test_malformed_headers_are_rejected(key: Ed25519PrivateKey, header: str, value: str) -> None:
    with pytest.raises(InvalidSignature):
        verify_fal_signature(sign(key, override={header: value}), BODY, [decode_public_key(public_x(key))], now=NOW)


def test_no_keys_means_invalid(key: Ed25519PrivateKey) -> None:
    with pytest.raises(InvalidSignature):
        verify_fal_signature(sign(key), BODY, [], now=NOW)


def test_jwks_parsing_skips_unusable_entries(key: Ed25519PrivateKey) -> None:
    document = {
        "keys": [
            {"kty": "RSA", "n": "x", "e": "AQAB"},
            {"kty": "OKP", "crv": "X25519", "x": public_x(key)},
            {"x": "too-short"},
            {"x": "!!!not base64!!!"},
            {"x": 42},
            "junk",
            {"kty": "OKP", "crv": "Ed25519", "x": public_x(key), "kid": "k1"},
        ]
    }
    assert keys_from_jwks(document) == [decode_public_key(public_x(key))]
    assert keys_from_jwks({"nokeys": True}) == []
    assert keys_from_jwks(None) == []


# --- JwksCache against a real server ----------------------------------------------------------


def test_cache_fetches_once_and_verifies(jwks: JwksServer, cache: JwksCache, key: Ed25519PrivateKey) -> None:
    jwks.publish(key)
    cache.verify(sign(key), BODY)
    cache.verify(sign(key), BODY)
    assert jwks.hits == 1


def test_cache_honours_max_age(jwks: JwksServer, cache: JwksCache, clock: Clock, key: Ed25519PrivateKey) -> None:
    jwks.publish(key)
    cache.keys()
    clock.now += 24 * 3600 - 1
    cache.keys()
    assert jwks.hits == 1
    clock.now += 1
    cache.keys()
    assert jwks.hits == 2


def test_key_rotation_refreshes_once(jwks: JwksServer, cache: JwksCache, clock: Clock, key: Ed25519PrivateKey) -> None:
    jwks.publish(key)
    cache.verify(sign(key), BODY)
    rotated = Ed25519PrivateKey.generate()
    jwks.publish(key, rotated)
    clock.now += 120
    cache.verify(sign(rotated, ts=int(clock.now)), BODY)
    assert jwks.hits == 2
    cache.verify(sign(rotated, ts=int(clock.now)), BODY)
    assert jwks.hits == 2


@pytest.mark.parametrize("next_fetch", ["max age", "unknown key"])
def test_a_withdrawn_key_verifies_nothing_after_the_next_fetch(
    jwks: JwksServer, cache: JwksCache, clock: Clock, key: Ed25519PrivateKey, next_fetch: str
) -> None:
    jwks.publish(key)
    cache.verify(sign(key), BODY)  # `key` is loaded and cached now
    successor = Ed25519PrivateKey.generate()
    jwks.publish(successor)  # fal withdraws `key`
    # The next fetch comes with the cache's max age, or with a signature by a key it does not know.
    clock.now += 24 * 3600 if next_fetch == "max age" else 120
    cache.verify(sign(successor, ts=int(clock.now)), BODY)
    with pytest.raises(InvalidSignature):
        cache.verify(sign(key, ts=int(clock.now)), BODY)
    assert jwks.hits == 2


def test_refresh_on_unknown_key_is_rate_limited(
    jwks: JwksServer, cache: JwksCache, clock: Clock, key: Ed25519PrivateKey
) -> None:
    jwks.publish(key)
    stranger = Ed25519PrivateKey.generate()
    cache.keys()
    clock.now += 61
    for _ in range(5):
        with pytest.raises(InvalidSignature):
            cache.verify(sign(stranger, ts=int(clock.now)), BODY)
    assert jwks.hits == 2


def test_stale_timestamp_never_triggers_refresh(
    jwks: JwksServer, cache: JwksCache, clock: Clock, key: Ed25519PrivateKey
) -> None:
    jwks.publish(key)
    cache.keys()
    clock.now += 3600
    with pytest.raises(InvalidSignature, match="window"):
        cache.verify(sign(key, ts=NOW), BODY)
    assert jwks.hits == 1


def test_padded_x_served_by_jwks(jwks: JwksServer, cache: JwksCache, key: Ed25519PrivateKey) -> None:
    jwks.publish(key, padded=True)
    cache.verify(sign(key), BODY)


@pytest.mark.parametrize(("status", "document"), [(500, {"keys": []}), (200, {"keys": []}), (200, "nope")])
def test_unusable_jwks_is_unavailable_not_invalid(
    jwks: JwksServer, cache: JwksCache, key: Ed25519PrivateKey, status: int, document: Any
) -> None:
    jwks.status, jwks.document = status, document
    with pytest.raises(JwksUnavailable) as info:
        cache.verify(sign(key), BODY)
    assert info.value.retry_call


def test_unreachable_jwks_is_unavailable(clock: Clock, key: Ed25519PrivateKey) -> None:
    with httpx.Client(timeout=2.0) as client:
        cache = JwksCache(f"http://127.0.0.1:{free_port()}/jwks.json", client, clock=clock)
        with pytest.raises(JwksUnavailable):
            cache.verify(sign(key), BODY)


def test_expired_cache_is_not_used_when_refetch_fails(
    jwks: JwksServer, cache: JwksCache, clock: Clock, key: Ed25519PrivateKey
) -> None:
    jwks.publish(key)
    cache.keys()
    jwks.status = 503
    clock.now += 24 * 3600
    with pytest.raises(JwksUnavailable):
        cache.verify(sign(key, ts=int(clock.now)), BODY)


# --- FalAdapter.verify_webhook: the receiver's check, over the shared per-URL key cache ----------


def _signed_now(key: Ed25519PrivateKey, body: bytes = BODY) -> dict[str, str]:
    return sign(key, body, ts=int(time.time()))


def test_adapter_accepts_a_webhook_fal_signed(jwks: JwksServer, key: Ed25519PrivateKey) -> None:
    jwks.publish(key)
    FalAdapter("k", jwks_url=jwks.url).verify_webhook(_signed_now(key), BODY)
    FalAdapter("k", jwks_url=jwks.url, user_id="user-9").verify_webhook(_signed_now(key), BODY)
    assert jwks.hits == 1  # one key cache per JWKS URL per process, whichever adapter asks


def test_adapter_rejects_a_tampered_body(jwks: JwksServer, key: Ed25519PrivateKey) -> None:
    jwks.publish(key)
    with pytest.raises(WebhookRejected) as info:
        FalAdapter("k", jwks_url=jwks.url).verify_webhook(_signed_now(key), BODY.replace(b"OK", b"ERROR"))
    assert info.value.reason == "bad signature: no published key verifies the signature"


def test_adapter_rejects_another_fal_users_webhook(jwks: JwksServer, key: Ed25519PrivateKey) -> None:
    jwks.publish(key)
    with pytest.raises(WebhookRejected) as info:
        FalAdapter("k", jwks_url=jwks.url, user_id="user-1").verify_webhook(_signed_now(key), BODY)
    assert info.value.reason == "signed for another fal user"


def test_adapter_cannot_verify_without_keys(jwks: JwksServer, key: Ed25519PrivateKey) -> None:
    jwks.status = 503
    with pytest.raises(TransientProviderError):  # the receiver answers 503: fal delivers again
        FalAdapter("k", jwks_url=jwks.url).verify_webhook(_signed_now(key), BODY)


def test_runware_has_no_signature_to_check() -> None:
    RunwareAdapter("k").verify_webhook({}, b"{}")  # the URL token is Runware's only proof
