"""fal wire details: key auth, error bodies, ingress-style failures and header/query parsing."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.sandbox.common.faults import Dice, Faults
from orchestrator.sandbox.common.ids import new_uuid
from orchestrator.sandbox.common.server import retry_after

NO_USER = "No user found for Key ID and Secret"
MALFORMED_KEY = "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'."
_NGINX_TITLES = {
    500: "500 Internal Server Error",
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
}
_SERVER_ERRORS = {
    500: ("Internal server error", "internal_error"),
    502: ("Runner returned an incomplete response", "runner_incomplete_response"),
    503: ("Runner scheduling failure", "runner_scheduling_failure"),
    504: ("Request timed out", "request_timeout"),
}
_LOGS = {"1": True, "true": True, "0": False, "false": False, "": False}


def detail(status: int, message: str, **extra: Any) -> web.Response:
    """A `{"detail": message}` JSON error."""
    headers = {"X-Fal-Error-Type": extra["error_type"]} if "error_type" in extra else None
    return web.json_response({"detail": message, **extra}, status=status, headers=headers)


def authenticate(request: web.Request, keys: tuple[str, ...]) -> str | web.Response:
    """Return the caller's key, or the 401 fal answers."""
    scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "key" or not credential:
        return detail(401, NO_USER)
    if ":" not in credential:
        return detail(401, MALFORMED_KEY)
    if credential not in keys:
        return detail(401, NO_USER)
    return credential


def injected_error(status: int, faults: Faults, dice: Dice) -> web.Response:
    """A submit rejection: 429 rate limit, or a 5xx from fal itself or from its ingress."""
    if status == 429:
        body = {
            "detail": "Concurrent requests limit exceeded, please retry later",
            "error_type": "concurrent_requests_limit",
        }
        headers = {"Retry-After": retry_after(faults), "X-Fal-Needs-Retry": "1"}
        return web.json_response(body, status=429, headers=headers)
    if dice.chance(faults.submit_5xx_request_id_rate):
        return server_error(status, faults)
    return ingress_error(status, faults)


def server_error(status: int, faults: Faults | None = None) -> web.Response:
    """A 5xx produced by fal's servers: JSON body and x-fal-request-id."""
    message, error_type = _SERVER_ERRORS.get(status, _SERVER_ERRORS[500])
    headers = {"x-fal-request-id": new_uuid(), "X-Fal-Error-Type": error_type}
    if status == 503 and faults is not None:
        headers["Retry-After"] = retry_after(faults)
    return web.json_response({"detail": message, "error_type": error_type}, status=status, headers=headers)


def ingress_error(status: int, faults: Faults | None = None) -> web.Response:
    """A 5xx from the ingress proxy: an nginx HTML page and no x-fal-request-id (clients retry these)."""
    title = _NGINX_TITLES.get(status, f"{status} Error")
    page = f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
    page += "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    headers = {"Retry-After": retry_after(faults)} if status == 503 and faults is not None else None
    return web.Response(status=status, text=page, content_type="text/html", headers=headers)


def json_invalid() -> dict[str, Any]:
    """The 422 detail item for a body that is not JSON."""
    return {"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}


def parse_logs(raw: str | None) -> bool | None:
    """`logs` query value in any encoding clients use (1/0/true/false); None if unrecognised."""
    if raw is None:
        return False
    return _LOGS.get(raw.strip().lower())


def start_timeout(request: web.Request) -> float | None:
    """X-Fal-Request-Timeout in seconds, if sent and valid."""
    raw = request.headers.get("X-Fal-Request-Timeout")
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value and value > 0 else None
