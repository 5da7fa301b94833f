"""Verify fal webhook signatures: Ed25519 over `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)`.

fal publishes its public keys as a JWKS (`{"keys": [{"x": <base64url>}, ...]}`); a webhook is
authentic if ANY published key verifies it. Keys rotate, so they are cached for at most 24 h
and re-fetched once (rate-limited) when no cached key matches a signature. The cache holds the
keys loaded (parsed once per fetch, not per webhook), and a fetch replaces them all: a key fal
no longer publishes verifies nothing after the next fetch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from orchestrator.providers._http import DEFAULT_TIMEOUT, json_body, new_client, send
from orchestrator.providers.errors import TransientProviderError

DEFAULT_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
DEFAULT_TOLERANCE = 300.0
DEFAULT_MAX_AGE = 24 * 3600.0
# A forged webhook must not let anyone make us hammer fal's JWKS endpoint.
DEFAULT_MIN_REFRESH_INTERVAL = 60.0
SIGNED_HEADERS = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")  # 64 bytes, hex


class InvalidSignature(Exception):
    """The webhook is not authentic; `reason` says why (safe to log)."""

    def __init__(self, reason: str, *, key_mismatch: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # True when the signature was well-formed but no known key verified it: the one
        # case where re-fetching the JWKS (a rotated key) can change the verdict.
        self.key_mismatch = key_mismatch


class JwksUnavailable(TransientProviderError):
    """fal's JWKS could not be fetched; answer 5xx so fal redelivers later."""


def decode_public_key(x: str) -> bytes:
    """Decode a JWK `x` (base64url, padded or not) into a 32-byte Ed25519 public key."""
    padded = x + "=" * (-len(x) % 4)  # urlsafe_b64decode rejects unpadded input
    raw = base64.urlsafe_b64decode(padded.encode("ascii"))
    if len(raw) != 32:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(raw)}")
    return raw


def keys_from_jwks(document: Any) -> list[bytes]:
    """Return the usable Ed25519 keys of a JWKS document, skipping malformed entries."""
    entries = document.get("keys") if isinstance(document, dict) else None
    keys = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("x"), str):
            continue
        if entry.get("kty", "OKP") != "OKP" or entry.get("crv", "Ed25519") != "Ed25519":
            continue
        try:
            keys.append(decode_public_key(entry["x"]))
        except (ValueError, binascii.Error, UnicodeEncodeError):
            continue
    return keys


def load_keys(keys: Sequence[bytes]) -> list[Ed25519PublicKey]:
    """The usable keys of `keys` as key objects (what verifying needs; loading one costs more than a check)."""
    loaded = []
    for key in keys:
        try:
            loaded.append(Ed25519PublicKey.from_public_bytes(key))
        except ValueError:
            continue
    return loaded


def verify_fal_signature(
    headers: Mapping[str, str],
    raw_body: bytes,
    public_keys: Sequence[bytes | Ed25519PublicKey],
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Raise InvalidSignature unless one of `public_keys` signed this webhook recently."""
    request_id, user_id, timestamp, signature_hex = _signed_headers(headers)
    if not _TIMESTAMP.fullmatch(timestamp):
        raise InvalidSignature("timestamp header is not unix seconds")
    if abs(now - int(timestamp)) > tolerance:
        raise InvalidSignature("timestamp outside the allowed window")
    if not _SIGNATURE.fullmatch(signature_hex):
        raise InvalidSignature("signature header is not 64 hex-encoded bytes")
    digest = hashlib.sha256(raw_body).hexdigest()
    message = f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()
    signature = bytes.fromhex(signature_hex)
    # Raw keys are loaded here; JwksCache passes its keys loaded once per fetch.
    keys = [k for k in public_keys if not isinstance(k, bytes)] + load_keys([k for k in public_keys
                                                                            if isinstance(k, bytes)])
    if not any(_verifies(key, signature, message) for key in keys):
        raise InvalidSignature("no published key verifies the signature", key_mismatch=True)


def _signed_headers(headers: Mapping[str, str]) -> tuple[str, str, str, str]:
    """Return the four signature headers verbatim; any missing one makes the webhook invalid."""
    lowered = {key.lower(): value for key, value in headers.items()}
    values = [lowered.get(name) for name in SIGNED_HEADERS]
    missing = [name for name, value in zip(SIGNED_HEADERS, values, strict=True) if not value]
    if missing:
        raise InvalidSignature(f"missing header {missing[0]}")
    request_id, user_id, timestamp, signature = (str(v) for v in values)
    return request_id, user_id, timestamp, signature


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `key` verifies `signature` over `message`."""
    try:
        key.verify(signature, message)
    except (_CryptoInvalidSignature, ValueError):
        return False
    return True


class JwksCache:
    """fal's public keys, fetched on demand and kept for at most `max_age` seconds."""

    def __init__(
        self,
        url: str = DEFAULT_JWKS_URL,
        client: httpx.Client | None = None,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        min_refresh_interval: float = DEFAULT_MIN_REFRESH_INTERVAL,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._client = client or new_client(timeout)
        self._max_age = max_age
        self._min_refresh_interval = min_refresh_interval
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[bytes] = []
        self._loaded: list[Ed25519PublicKey] = []  # self._keys loaded, replaced with them
        self._fetched_at: float | None = None

    def keys(self) -> list[bytes]:
        """Return cached keys, fetching them first when absent or older than `max_age`."""
        with self._lock:
            self._fetch_if_old()
            return list(self._keys)

    def refresh(self) -> list[bytes]:
        """Fetch the JWKS now, regardless of age."""
        with self._lock:
            self._fetch()
            return list(self._keys)

    def _current(self, *, refresh: bool = False) -> list[Ed25519PublicKey]:
        """The loaded keys, fetched first when absent, older than `max_age`, or `refresh` asks."""
        with self._lock:
            if refresh:
                self._fetch()
            else:
                self._fetch_if_old()
            return self._loaded

    def _fetch_if_old(self) -> None:
        fetched_at = self._fetched_at
        if fetched_at is None or self._clock() - fetched_at >= self._max_age:
            self._fetch()

    def verify(self, headers: Mapping[str, str], raw_body: bytes, tolerance: float = DEFAULT_TOLERANCE) -> None:
        """Verify a webhook; on an unknown key, refresh the JWKS once (rate-limited) and retry."""
        now = self._clock()
        try:
            verify_fal_signature(headers, raw_body, self._current(), now, tolerance)
        except InvalidSignature as exc:
            if not exc.key_mismatch or not self._refresh_allowed():
                raise
            verify_fal_signature(headers, raw_body, self._current(refresh=True), now, tolerance)

    def _refresh_allowed(self) -> bool:
        """Whether enough time passed since the last fetch to fetch again."""
        with self._lock:
            last = self._fetched_at
            return last is None or self._clock() - last >= self._min_refresh_interval

    def _fetch(self) -> None:
        """GET the JWKS and replace the cached keys; raise JwksUnavailable on any failure."""
        try:
            response = send(self._client, "fal", "GET", self.url, secrets=(), timeout=self._timeout)
        except TransientProviderError as exc:
            raise JwksUnavailable("fal", f"JWKS fetch failed: {exc.message}", code="jwks_unavailable") from exc
        keys = keys_from_jwks(json_body(response)) if response.is_success else []
        if not keys:
            raise JwksUnavailable("fal", "JWKS holds no usable Ed25519 key", response.status_code, "jwks_unavailable")
        self._keys, self._loaded = keys, load_keys(keys)
        self._fetched_at = self._clock()


@cache
def shared_jwks(url: str) -> JwksCache:
    """One key cache per JWKS URL per process (every adapter and app in it shares the keys)."""
    return JwksCache(url)
