"""HTTP plumbing shared by the adapters: one guarded request call and body helpers."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import httpx

from orchestrator.providers.errors import SendFailure, TransientProviderError, parse_retry_after
from orchestrator.redact import redact_text

# Generous read timeout: fal's result GET and Runware's POST can be slow under load, while a
# dead host should fail fast so the caller's backoff takes over.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
USER_AGENT = "image-orchestrator/0.1"


def new_client(timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> httpx.Client:
    """Create the pooled client an adapter uses when none is passed in."""
    return httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT}, follow_redirects=False)


def send(
    client: httpx.Client,
    provider: str,
    method: str,
    url: str,
    *,
    secrets: tuple[str, ...],
    timeout: httpx.Timeout,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request; map timeouts and connection failures onto TransientProviderError.

    The code (a `SendFailure`) says whether the request may have reached the provider: `not_sent`
    (connecting failed, safe to resend) versus `timeout` / `connection_error` (it may have been
    received, so a submit must not be resent blindly: `ProviderError.outcome_unknown`).
    """
    try:
        return client.request(method, url, timeout=timeout, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        message = redact_text(f"{method} could not connect: {type(exc).__name__}", secrets)
        raise TransientProviderError(provider, message, code=SendFailure.NOT_SENT.value) from exc
    except httpx.TimeoutException as exc:
        message = f"{method} timed out ({type(exc).__name__})"
        raise TransientProviderError(provider, message, code=SendFailure.TIMEOUT.value) from exc
    except httpx.TransportError as exc:
        message = redact_text(f"{method} failed: {type(exc).__name__}: {exc}", secrets)
        raise TransientProviderError(provider, message, code=SendFailure.CONNECTION_ERROR.value) from exc


def json_body(response: httpx.Response) -> Any:
    """Return the decoded JSON body, or None when it is empty or not JSON."""
    try:
        # parse_int=int is the default: big seeds (> 2**63) stay exact Python ints.
        return json.loads(response.content) if response.content else None
    except ValueError:
        return None


def text_snippet(response: httpx.Response, secrets: tuple[str, ...], limit: int = 300) -> str:
    """A short, plain-text summary of a non-JSON body for an error message, secrets removed."""
    text = summarize(response.text[:20_000], limit) or response.reason_phrase or f"HTTP {response.status_code}"
    return redact_text(text, secrets)


_HTML = re.compile(r"(?is)<\s*(?:!doctype|html|head|body|title|h1|center|div|p)\b")
_TITLE = re.compile(r"(?is)<title[^>]*>(.*?)</title>")
_SCRIPT = re.compile(r"(?is)<(script|style)\b.*?</\1\s*>")
_TAG = re.compile(r"(?s)<[^>]*>")


def summarize(text: str, limit: int = 300) -> str:
    """Plain text for a job's timeline: an HTML error page (an nginx 503) becomes its title or its
    text without tags, whitespace collapsed and capped, so no markup is stored or shown verbatim."""
    if _HTML.search(text):
        title = _TITLE.search(text)
        body = title.group(1) if title else _TAG.sub(" ", _SCRIPT.sub(" ", text))
        text = f"{html.unescape(_TAG.sub(' ', body))} (HTML error page)"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the provider asks us to wait, from Retry-After."""
    return parse_retry_after(response.headers.get("retry-after"))


def as_int(value: Any) -> int | None:
    """Return `value` if it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
