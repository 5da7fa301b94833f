"""API keys: created once, stored as a hash, looked up by hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.db import as_utc, utcnow
from orchestrator.models import ApiKey

PREFIX = "orch_"


def hash_secret(token: str) -> str:
    """SHA-256 of the whole token; keys are random enough that no slow hash is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(session: Session, tenant: str, *, role: str = "client", name: str = "") -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored."""
    if role not in ("client", "admin"):
        raise ValueError("role must be client or admin")
    if not tenant or len(tenant) > 64:
        raise ValueError("tenant must be 1 to 64 characters")
    public = secrets.token_hex(4)
    token = f"{PREFIX}{public}_{secrets.token_urlsafe(32)}"
    key = ApiKey(tenant=tenant, role=role, name=name, prefix=public, secret_hash=hash_secret(token))
    session.add(key)
    session.flush()
    return key, token


def authenticate(session: Session, token: str) -> ApiKey | None:
    """The live key matching `token`, or None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    # The lookup is by hash of the full token, so no timing channel reveals a partial match.
    key = session.execute(
        sa.select(ApiKey).where(ApiKey.secret_hash == hash_secret(token), ApiKey.revoked.is_(False))
    ).scalar_one_or_none()
    now = utcnow()
    if key is not None and (key.last_used_at is None or as_utc(key.last_used_at) < now - LAST_USED_RESOLUTION):
        # "Last used" to the minute: a client polling several times a second would otherwise
        # write its key's row on every request.
        key.last_used_at = now
    return key


LAST_USED_RESOLUTION = timedelta(minutes=1)


def revoke(session: Session, prefix: str) -> int:
    """Revoke keys by their public prefix; returns how many."""
    result = session.execute(sa.update(ApiKey).where(ApiKey.prefix == prefix).values(revoked=True))
    return result.rowcount  # type: ignore[attr-defined]
