"""The URLs providers call back (webhooks): they name the job and attempt and carry a token.

Because the URL itself identifies the job, a callback that arrives before our submit call
has returned (fast providers) still finds its job.

The token is an HMAC of the job id and the attempt under ORCH_SECRET_KEY, so every attempt has
its own (a token seen for attempt 1 does not open attempt 2's URL) and nothing is stored.
Rotating the secret key invalidates the URLs of attempts in flight; polling settles those.

The path is `/webhooks/<provider>/<job id>/<attempt>`: `webhook_url` builds it, and `target`
(the receiver's route parts) or `parse` (a whole URL, e.g. one a sandbox recorded) read it.
(The client's own `batch.completed` callback is another thing: workers' notify step.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

PREFIX = "/webhooks"


@dataclass(frozen=True)
class WebhookTarget:
    """What a webhook URL names."""

    provider: str
    job_id: uuid.UUID
    attempt: int


def attempt_token(secret_key: str, job_id: uuid.UUID, attempt: int) -> str:
    """The callback token of one attempt of one job (URL-safe, 32 characters)."""
    mac = hmac.new(secret_key.encode(), f"provider-callback:{job_id}:{attempt}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode()[:32]


def webhook_url(public_url: str, provider: str, job_id: uuid.UUID, attempt: int, secret_key: str) -> str:
    """The URL a provider calls back for one attempt of one job."""
    token = attempt_token(secret_key, job_id, attempt)
    return f"{public_url.rstrip('/')}{PREFIX}/{provider}/{job_id}/{attempt}?token={quote(token, safe='')}"


def target(provider: str, job_id: str, attempt: str) -> WebhookTarget | None:
    """Read the path parts of a webhook URL; None if malformed."""
    try:
        found = WebhookTarget(provider, uuid.UUID(job_id), int(attempt))
    except ValueError:
        return None
    return found if 0 < found.attempt < 2**31 else None


def parse(url: str | None) -> WebhookTarget | None:
    """Read a whole webhook URL (any host, any path before /webhooks/); None if it is not one."""
    path = urlsplit(url or "").path
    if f"{PREFIX}/" not in path:
        return None
    parts = path.rsplit(f"{PREFIX}/", 1)[1].split("/")
    return target(*parts) if len(parts) == 3 else None


def token_matches(secret_key: str, found: WebhookTarget, given: str | None) -> bool:
    """Constant-time check of a URL's token against the one its job and attempt should carry."""
    if not given or not secret_key:
        return False
    expected = attempt_token(secret_key, found.job_id, found.attempt)
    return hmac.compare_digest(expected.encode(), given.encode(errors="replace"))
