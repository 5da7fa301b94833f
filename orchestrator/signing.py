"""Standard Webhooks signatures for the batch.completed callbacks we send to clients.

Spec: https://www.standardwebhooks.com/ — headers `webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`. Each tenant gets a
signing secret derived from ORCH_SECRET_KEY, shown by `GET /v1/callback-secret`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def tenant_secret(secret_key: str, tenant: str) -> str:
    """The tenant's signing secret in Standard Webhooks form (`whsec_<base64>`)."""
    raw = hmac.new(secret_key.encode(), f"callbacks:{tenant}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(raw).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """All three Standard Webhooks headers plus the content type."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body), "content-type": "application/json"}
