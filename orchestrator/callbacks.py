"""Provider callback URLs: they name the job and attempt and carry an unguessable token.

Because the URL itself identifies the job, a callback that arrives before our submit call
has returned (fast providers) still finds its job.

The token is an HMAC of the job id and the attempt under ORCH_SECRET_KEY, so every attempt has
its own (a token seen for attempt 1 does not open attempt 2's URL) and nothing is stored.
Rotating the secret key invalidates the URLs of attempts in flight; polling settles those.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class CallbackTarget:
    """What a callback URL names."""

    job_id: uuid.UUID
    attempt: int


def attempt_token(secret_key: str, job_id: uuid.UUID, attempt: int) -> str:
    """The callback token of one attempt of one job (URL-safe, 32 characters)."""
    mac = hmac.new(secret_key.encode(), f"provider-callback:{job_id}:{attempt}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode()[:32]


def callback_url(public_url: str, provider: str, job_id: uuid.UUID, attempt: int, secret_key: str) -> str:
    """The URL a provider calls back for one attempt of one job."""
    token = attempt_token(secret_key, job_id, attempt)
    return f"{public_url.rstrip('/')}/webhooks/{provider}/{job_id}/{attempt}?token={quote(token, safe='')}"


def parse_target(job_id: str, attempt: str) -> CallbackTarget | None:
    """Parse the path parts of a callback URL; None if malformed."""
    try:
        target = CallbackTarget(uuid.UUID(job_id), int(attempt))
    except ValueError:
        return None
    return target if 0 < target.attempt < 2**31 else None


def token_matches(secret_key: str, target: CallbackTarget, given: str | None) -> bool:
    """Constant-time check of a URL's token against the one its job and attempt should carry."""
    if not given or not secret_key:
        return False
    expected = attempt_token(secret_key, target.job_id, target.attempt)
    return hmac.compare_digest(expected.encode(), given.encode(errors="replace"))
