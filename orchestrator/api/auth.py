"""Bearer API key authentication for the /v1 API."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from orchestrator import auth
from orchestrator.api.context import db
from orchestrator.errors import DomainError
from orchestrator.log import bind


class Unauthorized(DomainError, status=401, slug="unauthorized", title="Unauthorized"):
    """Missing or unknown API key."""


class Forbidden(DomainError, status=403, slug="forbidden", title="Forbidden"):
    """The key's role may not do this."""


F = TypeVar("F", bound=Callable[..., Any])


def require_key(role: str = "client") -> Callable[[F], F]:
    """Authenticate the request's bearer key and set g.tenant and g.role."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
            key = auth.authenticate(db(), token.strip())
            if key is None:
                raise Unauthorized("the API key is unknown or revoked")
            if role == "admin" and key.role != "admin":
                raise Forbidden("this action needs an admin key")
            db().commit()  # persists last_used_at
            g.tenant, g.role = key.tenant, key.role
            bind(tenant=key.tenant)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
