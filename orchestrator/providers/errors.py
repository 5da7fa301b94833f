"""Our own small error tree for provider calls, independent of fal's and Runware's wording.

    ProviderError                      any failure reported by or while talking to a provider
    ├── TransientProviderError         5xx, timeouts, connection errors: try again later
    │   └── RateLimited                429; `retry_after` from the Retry-After header
    └── PermanentProviderError         validation (400/422): the same request will fail again
        ├── AuthenticationFailed       401/403: the API key is wrong or not allowed
        ├── InsufficientCredits        402 / exhausted balance
        └── NotFound                   the task or its result is no longer available
            └── ResultExpired          fal result past its retention window

Three questions the caller asks of an error:
- `retry_call`: repeating the same HTTP call may succeed (Transient and its subclasses).
- `retry_job`: a fresh attempt of the job (a new provider request) may succeed. True for
  transient errors and for NotFound/ResultExpired: the work is lost, not invalid.
- `outcome_unknown`: the call failed on the wire after it may have reached the provider
  (`SendFailure.TIMEOUT`, `SendFailure.CONNECTION_ERROR`), so a submit must not be resent blindly.

Messages pass through `redact_text` so no API key, auth header or presigned signature leaks
into logs, job rows or API responses; adapters also hand their own secrets to `redact_text`.
"""

from __future__ import annotations

import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, ClassVar

from orchestrator.redact import redact_text

# Provider messages can be long HTML error pages; keep job rows and logs small.
MAX_MESSAGE_CHARS = 500


class SendFailure(StrEnum):
    """The `code` of a call that failed on the wire (`providers._http.send`), not at the provider."""

    NOT_SENT = "not_sent"  # connecting failed: the request never left, safe to resend
    TIMEOUT = "timeout"  # sent, no answer in time: the provider may have received it
    CONNECTION_ERROR = "connection_error"  # the connection broke mid-call: it may have been received

    @property
    def may_have_arrived(self) -> bool:
        """Whether the provider may have received the request (its outcome is unknown)."""
        return self is not SendFailure.NOT_SENT


# The codes whose call may have reached the provider: the submit's outcome is unknown.
UNKNOWN_OUTCOME = frozenset(f for f in SendFailure if f.may_have_arrived)


class ProviderError(Exception):
    """A provider call or job failed; see the module docstring for the tree."""

    retry_call: ClassVar[bool] = False
    retry_job: ClassVar[bool] = False

    def __init__(
        self,
        provider: str,
        message: str,
        status_code: int | None = None,
        code: str | None = None,
        *,
        parameter: str | None = None,
    ) -> None:
        self.provider = provider
        self.message = redact_text(message)[:MAX_MESSAGE_CHARS]
        self.status_code = status_code
        self.code = code
        self.parameter = parameter
        super().__init__(self.message)

    def __str__(self) -> str:
        details = [f"HTTP {self.status_code}" if self.status_code else "", self.code or ""]
        if self.parameter:
            details.append(f"parameter={self.parameter}")
        suffix = ", ".join(d for d in details if d)
        return f"{self.provider}: {self.message}" + (f" ({suffix})" if suffix else "")

    @property
    def outcome_unknown(self) -> bool:
        """Whether the call may have reached the provider although it failed (see SendFailure)."""
        return self.code in UNKNOWN_OUTCOME

    def _kwargs(self) -> dict[str, Any]:
        """Keyword arguments needed to rebuild this error."""
        return {"parameter": self.parameter}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword arguments are not part of Exception.args, so pickling needs help
        # (Celery's pickle serializer or multiprocessing may carry these errors).
        args = (self.provider, self.message, self.status_code, self.code)
        return (_rebuild, (type(self), args, self._kwargs()))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe summary for job rows and events."""
        return {
            "type": type(self).__name__,
            "provider": self.provider,
            "message": self.message,
            "status_code": self.status_code,
            "code": self.code,
            "parameter": self.parameter,
            "retry_job": self.retry_job,
        }


def _rebuild(cls: type[ProviderError], args: tuple[Any, ...], kwargs: dict[str, Any]) -> ProviderError:
    """Recreate a pickled ProviderError."""
    return cls(*args, **kwargs)


class TransientProviderError(ProviderError):
    """Server trouble, timeout or connection failure; `retry_after` in seconds when known."""

    retry_call = True
    retry_job = True

    def __init__(
        self,
        provider: str,
        message: str,
        status_code: int | None = None,
        code: str | None = None,
        *,
        parameter: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(provider, message, status_code, code, parameter=parameter)
        self.retry_after = retry_after

    def _kwargs(self) -> dict[str, Any]:
        """Keyword arguments needed to rebuild this error."""
        return {"parameter": self.parameter, "retry_after": self.retry_after}


class RateLimited(TransientProviderError):
    """HTTP 429: back off for `retry_after` seconds (or the caller's own backoff)."""


class PermanentProviderError(ProviderError):
    """The provider rejected the request itself; `parameter` names the offending field."""


class AuthenticationFailed(PermanentProviderError):
    """HTTP 401/403: missing, invalid or unauthorised API key."""


class InsufficientCredits(PermanentProviderError):
    """HTTP 402 or a locked account: top up before retrying."""


class NotFound(PermanentProviderError):
    """The provider no longer knows the task; the job may be retried as a new attempt."""

    retry_job = True


class ResultExpired(NotFound):
    """The request finished but its result is past the provider's retention window."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse a Retry-After header (delta seconds or HTTP-date) into seconds from `now`."""
    if not value or not value.strip():
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until_http_date(value, time.time() if now is None else now)
    if seconds is None:
        return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, seconds)


def _seconds_until_http_date(value: str, now: float) -> float | None:
    """Return seconds from `now` until an HTTP-date, or None if it does not parse."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" yields a naive datetime; HTTP dates are always UTC
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now


class WebhookRejected(Exception):
    """A callback failed the provider's own authenticity check (`verify_webhook`): answer 401.

    Not a ProviderError: nothing went wrong at the provider; someone sent us a delivery we
    must not trust. `reason` is safe to log and to store with the refused delivery.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
