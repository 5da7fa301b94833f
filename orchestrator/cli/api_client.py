"""Talking to a running API over HTTP: the `Api` caller, its readable errors, and --api-url/--api-key.

The client commands (submit, status, results, cancel, retry) talk to a running API (`--api-url`,
default $ORCH_API_URL) with a bearer key (`--api-key`, default $ORCH_API_KEY), never to the
database, so they work from any machine. Every failure (API problem documents, unreachable
hosts, bad files) is shown as a readable message with exit code 2; nothing escapes as a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
import httpx

DEFAULT_API_URL = "http://127.0.0.1:8000"
MAX_LISTED = 20


class CliError(click.ClickException):
    """A readable failure; exit code 2, like click's own usage errors."""

    exit_code = 2


class Transient(CliError):
    """The API could not be reached or failed on its side (5xx): worth another try while watching."""


@dataclass(frozen=True)
class Api:
    """Where the API is and how to authenticate; the key is only ever sent, never shown."""

    url: str
    key: str | None
    timeout: float = 30.0

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; problems and transport failures become CliError."""
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        with reachable(self.url), httpx.Client(timeout=self.timeout) as client:
            resp = client.request(method, self.url.rstrip("/") + path, headers=headers, **kwargs)
        if resp.status_code >= 400:
            raise (Transient if resp.status_code >= 500 else CliError)(describe_problem(resp))
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send one request and return its JSON object."""
        resp = self.call(method, path, **kwargs)
        try:
            body = resp.json()
        except ValueError:
            raise CliError(f"the API at {self.url} answered {path} with something that is not JSON") from None
        if not isinstance(body, dict):
            raise CliError(f"the API at {self.url} answered {path} with unexpected JSON")
        return body


@contextmanager
def reachable(url: str) -> Iterator[None]:
    """Turn httpx transport failures into one line naming the URL."""
    try:
        yield
    except httpx.TimeoutException:
        raise Transient(f"the API at {url} did not answer in time") from None
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        reason = str(exc) or type(exc).__name__
        raise Transient(f"could not reach the API at {url}: {reason} (check --api-url or ORCH_API_URL)") from None


def describe_problem(resp: httpx.Response) -> str:
    """A problem+json document (or any error response) as a few readable lines."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(resp.text.split())[:200]
        return f"the API answered HTTP {resp.status_code} {resp.reason_phrase}" + (f": {text}" if text else "")
    title = body.get("title") or resp.reason_phrase
    detail = body.get("detail")
    lines = [f"{title} (HTTP {resp.status_code})" + (f": {detail}" if detail else "")]
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    lines += [f"  - {item_problem(e)}" for e in errors[:MAX_LISTED]]
    count = body.get("error_count")
    total = count if isinstance(count, int) else len(errors)
    if total > MAX_LISTED:
        lines.append(f"  ... and {total - MAX_LISTED} more")
    if resp.status_code == 401:
        lines.append("  (pass --api-key or set ORCH_API_KEY)")
    return "\n".join(lines)


def item_problem(error: dict[str, Any]) -> str:
    """One invalid item as `position 3 (custom_id 'a'), field 'model': message`."""
    where = []
    if error.get("position") is not None:
        where.append(f"position {error['position']}")
    if error.get("custom_id"):
        where.append(f"(custom_id {error['custom_id']!r})")
    prefix = " ".join(where) or "batch"
    field, message = error.get("field"), error.get("message") or "invalid"
    return f"{prefix}, field {field!r}: {message}" if field else f"{prefix}: {message}"


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --api-url/--api-key and hand the command an `api: Api` instead."""

    @click.option("--api-url", envvar="ORCH_API_URL", default=DEFAULT_API_URL, show_default=True,
                  help="base URL of the API [env ORCH_API_URL]")
    @click.option("--api-key", envvar="ORCH_API_KEY", default=None, show_default=False,
                  help="API key [env ORCH_API_KEY]")
    @functools.wraps(command)
    def wrapper(api_url: str, api_key: str | None, **kwargs: Any) -> Any:
        return command(api=Api(api_url, api_key), **kwargs)

    return wrapper
