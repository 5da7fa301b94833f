"""Provider callback URLs: they name the job and attempt and carry an unguessable token.

Because the URL itself identifies the job, a callback that arrives before our submit call
has returned (fast providers) still finds its job.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class CallbackTarget:
    """What a callback URL names."""

    job_id: uuid.UUID
    attempt: int


def callback_url(public_url: str, provider: str, job_id: uuid.UUID, attempt: int, token: str) -> str:
    """The URL a provider calls back for one attempt of one job."""
    return f"{public_url.rstrip('/')}/webhooks/{provider}/{job_id}/{attempt}?token={quote(token, safe='')}"


def parse_target(job_id: str, attempt: str) -> CallbackTarget | None:
    """Parse the path parts of a callback URL; None if malformed."""
    try:
        return CallbackTarget(uuid.UUID(job_id), int(attempt))
    except ValueError:
        return None


def token_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time token comparison."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
