"""Standard Webhooks signatures for the batch.completed callbacks we send to clients.

Spec: https://www.standardwebhooks.com/ — headers `webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`. The signature itself
comes from the `standardwebhooks` library, the one clients verify with, so the two cannot drift.
Each tenant gets a signing secret derived from ORCH_SECRET_KEY, shown by `GET /v1/callback-secret`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime

from standardwebhooks import Webhook

from orchestrator.db import as_utc


def tenant_secret(secret_key: str, tenant: str) -> str:
    """The tenant's signing secret in Standard Webhooks form (`whsec_<base64>`)."""
    raw = hmac.new(secret_key.encode(), f"callbacks:{tenant}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(raw).decode()


def headers(secret: str, msg_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """All three Standard Webhooks headers plus the content type."""
    at = as_utc(at)  # the library reads the wall clock as UTC, so give it UTC
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode()), "content-type": "application/json"}
