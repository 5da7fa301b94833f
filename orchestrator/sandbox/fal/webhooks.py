"""fal webhook bodies and their Ed25519 signatures, with the JWKS that publishes the public keys."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PAYLOAD_ERROR_MESSAGE = (
    "Response payload is not JSON serializable. Either return a JSON serializable object "
    "or use the queue endpoint to retrieve the response."
)
STALE_SECONDS = 600  # beyond the documented 300 s tolerance


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SigningKey:
    """One Ed25519 key pair with its JWK id."""

    def __init__(self, private: Ed25519PrivateKey | None = None) -> None:
        self.private = private or Ed25519PrivateKey.generate()
        self.public_raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = hashlib.sha256(self.public_raw).hexdigest()[:16]

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK (unpadded base64url `x`, as a standard JWK has it)."""
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(self.public_raw), "kid": self.kid, "use": "sig"}


class WebhookSigner:
    """Signs webhook deliveries the way fal documents; supports key rotation."""

    def __init__(self) -> None:
        self._published: list[SigningKey] = [SigningKey()]
        self._outsider = SigningKey()  # never published: for unknown-key forgeries

    @property
    def active(self) -> SigningKey:
        """The key new deliveries are signed with."""
        return self._published[-1]

    def rotate(self, keep_old: bool = True) -> SigningKey:
        """Publish a new key and sign with it from now on."""
        key = SigningKey()
        self._published = [*self._published, key] if keep_old else [key]
        return key

    def jwks(self) -> dict[str, Any]:
        """The JWKS document."""
        return {"keys": [k.jwk() for k in self._published]}

    def headers(
        self,
        request_id: str,
        user_id: str,
        body: bytes,
        *,
        bad_signature: bool = False,
        stale: bool = False,
        unknown_key: bool = False,
    ) -> dict[str, str]:
        """The four X-Fal-Webhook-* headers plus Content-Type for one attempt."""
        timestamp = str(int(time.time()) - (STALE_SECONDS if stale else 0))
        message = "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()
        key = self._outsider if unknown_key else self.active
        signature = key.private.sign(message)
        if bad_signature:
            signature = bytes([signature[0] ^ 0xFF]) + signature[1:]
        return {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": signature.hex(),
        }


def ok_body(request_id: str, payload: Any) -> bytes:
    """Webhook body for a request whose model answered 200."""
    return _encode(
        {"request_id": request_id, "gateway_request_id": request_id, "status": "OK", "payload": payload, "error": None}
    )


def payload_error_body(request_id: str) -> bytes:
    """Webhook body for a success whose output could not be embedded (fetch the result instead)."""
    return _encode(
        {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": None,
            "payload_error": PAYLOAD_ERROR_MESSAGE,
            "error": None,
        }
    )


def error_body(request_id: str, status: int, payload: Any) -> bytes:
    """Webhook body for a request whose model answered with an error status."""
    return _encode(
        {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "ERROR",
            "error": f"Invalid status code: {status}",
            "payload": payload,
        }
    )


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
