"""Dashboard sign-in, session, CSRF and security headers."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Flask, Request, Response, abort, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from orchestrator import auth
from orchestrator.api.context import db, services
from orchestrator.audit import Actor
from orchestrator.dashboard.blueprint import bp
from orchestrator.models import ApiKey
from orchestrator.settings import Settings

SESSION_HOURS = 12
F = TypeVar("F", bound=Callable[..., Any])


class _SessionInterface(SecureCookieSessionInterface):
    """Secure cookies whenever the request came over HTTPS (directly or via a proxy's scheme)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # Flask opens a session for every request; API calls and webhooks carry no dashboard
        # cookie, so skip building the cookie signer for them (configure() always sets the key).
        if app.secret_key and self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)


def configure(app: Flask, settings: Settings) -> None:
    """Session signing key and cookie flags (the API itself never reads this cookie)."""
    # A key of its own, derived from the secret key, so a session cookie can never be replayed
    # as any other signed value of the system.
    app.secret_key = hmac.new(settings.resolved_secret_key().encode(), b"dashboard-session",
                              hashlib.sha256).hexdigest()
    app.session_interface = _SessionInterface()
    app.config.update(SESSION_COOKIE_NAME="orch_admin", SESSION_COOKIE_PATH="/admin", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=settings.public_url.startswith("https:"),
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS))


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return str(token)


@bp.app_template_global("csrf_token")
def _csrf_global() -> str:
    return csrf_token()


@bp.before_request
def _check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(str(sent), str(expected)):
        abort(403, description="The form's CSRF token is missing or wrong: reload the page and try again.")


@bp.before_request
def _no_jit() -> None:
    # The dashboard's queries are short index scans whose planner cost can still cross
    # jit_above_cost at a million rows; compiling them costs more (~150 ms) than running them.
    if db().get_bind().dialect.name == "postgresql":
        db().execute(sa.text("SET LOCAL jit = off"))


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = content_security_policy()
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "same-origin"
    if not request.path.startswith("/admin/static/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


def content_security_policy() -> str:
    """No inline script or style; images from us and from the storage backend's signed links."""
    svc = services()
    cached = getattr(svc, "_dashboard_csp", None)
    if cached is None:
        origins = {"'self'", "data:"}
        for url in (svc.storage.presign_get("csp/probe.png", 60), svc.settings.public_url):
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") and parts.netloc:
                origins.add(f"{parts.scheme}://{parts.netloc}")
        cached = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src " + " ".join(sorted(origins))
                  + "; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        svc._dashboard_csp = cached  # type: ignore[attr-defined]
    return cached


def current_key() -> ApiKey | None:
    """The signed-in admin key, re-checked on every request (revoking a key ends its sessions)."""
    raw = session.get("key_id")
    if not raw:
        return None
    try:
        key = db().get(ApiKey, uuid.UUID(str(raw)))
    except ValueError:
        return None
    if key is None or key.revoked or key.role != "admin":
        return None
    return key


def require_admin(view: F) -> F:
    """Pages and fragments: redirect to sign-in (or 401 for fragments) without a live admin session."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = current_key()
        if key is None:
            session.pop("key_id", None)
            if request.headers.get("X-Fragment") or request.method != "GET":
                abort(401, description="Sign in again: the dashboard session has ended.")
            return redirect(url_for("dashboard.signin", next=request.full_path.rstrip("?")))
        g.admin = Actor(key.id, key.name or f"key {key.prefix}")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def actor() -> Actor:
    """Who is acting (set by require_admin)."""
    who: Actor = g.admin
    return who


@bp.get("/signin")
def signin() -> str:
    """The sign-in form."""
    csrf_token()
    return render_template("signin.html", error=None, next=_safe_next(request.args.get("next")))


@bp.post("/signin")
def signin_post() -> tuple[str, int] | Response:
    """Exchange an admin API key for a session; client keys and unknown keys are refused."""
    token = (request.form.get("api_key") or "").strip()
    nxt = _safe_next(request.form.get("next"))
    if not token:
        return render_template("signin.html", error="Enter an admin API key.", next=nxt), 400
    key = auth.authenticate(db(), token)
    if key is None:
        return render_template("signin.html", error="That API key is unknown or revoked.", next=nxt), 401
    if key.role != "admin":
        return render_template("signin.html", next=nxt, error=(
            "That is a client key: the dashboard needs an admin key (orchestrator keys create --role admin).")), 403
    db().commit()  # last_used_at
    session.clear()  # a fresh session (and CSRF token) on sign-in: no fixation
    session.permanent = True
    session["key_id"] = str(key.id)
    csrf_token()
    return redirect(nxt or url_for("dashboard.batches"))  # type: ignore[return-value]


@bp.post("/signout")
def signout() -> Response:
    """End the session."""
    session.clear()
    return redirect(url_for("dashboard.signin"))  # type: ignore[return-value]


def _safe_next(value: str | None) -> str | None:
    # Only local dashboard paths, so sign-in is never an open redirect.
    if value and value.startswith("/admin/") and not value.startswith("//") and "\\" not in value:
        return value
    return None
