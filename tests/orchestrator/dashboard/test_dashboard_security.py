"""Dashboard sign-in, session cookie, CSRF and CSP, through the real app on the test database."""

from __future__ import annotations

import re

import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.models import ApiKey, AuditEntry
from tests.conftest import make_key

PAGES = ("/admin/batches", "/admin/providers", "/admin/schedules", "/admin/audit")


def csrf(client: FlaskClient, path: str = "/admin/signin") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def sign_in(client: FlaskClient, key: str) -> None:
    resp = client.post("/admin/signin", data={"api_key": key, "csrf_token": csrf(client)})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/admin/batches"), resp.text[:500]


def test_every_page_and_fragment_needs_a_session(client: FlaskClient) -> None:
    for path in PAGES:
        resp = client.get(path)
        assert resp.status_code == 302 and "/admin/signin?next=" in resp.headers["Location"]
    fragment = client.get("/admin/fragments/batches", headers={"X-Fragment": "1"})
    assert fragment.status_code == 401
    assert client.get("/admin/jobs/00000000-0000-0000-0000-000000000000").status_code == 302


def test_client_key_unknown_key_and_no_key_are_refused(client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    token = csrf(client)
    refused = client.post("/admin/signin", data={"api_key": make_key(sessions, "acme"), "csrf_token": token})
    assert refused.status_code == 403 and "client key" in refused.text and "admin key" in refused.text
    unknown = client.post("/admin/signin", data={"api_key": "orch_dead_beef", "csrf_token": token})
    assert unknown.status_code == 401 and "unknown or revoked" in unknown.text
    empty = client.post("/admin/signin", data={"api_key": "", "csrf_token": token})
    assert empty.status_code == 400 and "Enter an admin API key" in empty.text
    assert client.get("/admin/batches").status_code == 302  # still signed out


def test_admin_sign_in_sets_a_locked_down_cookie_and_sign_out_ends_it(
        client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    token = csrf(client)
    resp = client.post("/admin/signin", data={"api_key": make_key(sessions, "ops", "admin"), "csrf_token": token})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
    out = client.post("/admin/signout", data={"csrf_token": csrf(client, "/admin/batches")})
    assert out.status_code == 302
    assert client.get("/admin/batches").status_code == 302


def test_cookie_is_secure_over_https(client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    page = client.get("/admin/signin", base_url="https://localhost")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    resp = client.post("/admin/signin", base_url="https://localhost",
                       data={"api_key": make_key(sessions, "ops", "admin"), "csrf_token": token})
    assert resp.status_code == 302 and "Secure" in resp.headers["Set-Cookie"]


def test_posts_without_the_csrf_token_are_refused(client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    sign_in(client, make_key(sessions, "ops", "admin"))
    batch = "00000000-0000-0000-0000-000000000000"
    for path in (f"/admin/batches/{batch}/cancel", f"/admin/batches/{batch}/retry", "/admin/bulk/apply",
                 "/admin/signout"):
        for data in ({}, {"csrf_token": "forged"}):
            resp = client.post(path, data=data)
            assert resp.status_code == 403 and "CSRF" in resp.text, path
    with sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == 0
    assert client.get("/admin/batches").status_code == 200  # the refused sign-out changed nothing


def test_revoking_the_key_ends_its_sessions(client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    sign_in(client, make_key(sessions, "ops", "admin"))
    with sessions.begin() as s:
        s.execute(sa.update(ApiKey).values(revoked=True))
    assert client.get("/admin/batches").status_code == 302


def test_strict_csp_and_no_inline_script(client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    sign_in(client, make_key(sessions, "ops", "admin"))
    for path in ("/admin/signin", *PAGES):
        resp = client.get(path)
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        # Every <script> has a src and no body; no inline handlers or style attributes.
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", resp.text), path
        assert not re.search(r"\son[a-z]+=\"", resp.text) and " style=\"" not in resp.text, path


def test_bad_filters_answer_400_pages_not_500(client: FlaskClient, sessions: sessionmaker[Session]) -> None:
    sign_in(client, make_key(sessions, "ops", "admin"))
    for query in ("state=nope", "from=yesterday", "sort=bogus", "cursor=!!", "schedule=x"):
        resp = client.get(f"/admin/batches?{query}")
        assert resp.status_code == 400, (query, resp.status_code)
        assert "text/html" in resp.content_type
    assert client.get("/admin/batches/not-an-id").status_code == 404
