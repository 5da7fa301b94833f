"""Operator commands: api, db upgrade, keys, tenants budget."""

from __future__ import annotations

from typing import Any

import click

from orchestrator.settings import Settings, get_settings


def _settings() -> Settings:
    from orchestrator.log import configure

    settings = get_settings()
    configure(json_logs=settings.log_json, level=settings.log_level, secrets=settings.secrets())
    return settings


@click.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the Alembic migrations."""
    from orchestrator.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url, revision)
    click.echo(f"database at revision {revision}")


@click.group("keys")
def keys_group() -> None:
    """API key management."""


@keys_group.command("create")
@click.option("--tenant", default="default", show_default=True)
@click.option("--role", type=click.Choice(["client", "admin"]), default="client", show_default=True)
@click.option("--name", default="")
def keys_create(tenant: str, role: str, name: str) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    prefix, token = new_key(_settings(), tenant, role=role, name=name)
    click.echo(token)
    click.echo(f"(key {prefix} for tenant {tenant!r}, role {role}; shown once, store it now)", err=True)


def new_key(settings: Settings, tenant: str, *, role: str, name: str) -> tuple[str, str]:
    """Create an API key in the configured database; returns (public prefix, token)."""
    from orchestrator import auth
    from orchestrator.db import make_engine, make_session_factory, session_scope

    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            key, token = auth.create_key(session, tenant, role=role, name=name)
            return key.prefix, token
    finally:
        engine.dispose()


@keys_group.command("revoke")
@click.argument("prefix")
def keys_revoke(prefix: str) -> None:
    """Revoke a key by the public part after `orch_`."""
    from orchestrator import auth
    from orchestrator.db import make_engine, make_session_factory, session_scope

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    with session_scope(make_session_factory(engine)) as session:
        count = auth.revoke(session, prefix)
    engine.dispose()
    click.echo(f"revoked {count} key(s)")


@keys_group.command("list")
@click.option("--tenant", default=None, help="only this tenant's keys")
@click.option("--all", "show_revoked", is_flag=True, help="include revoked keys")
def keys_list(tenant: str | None, show_revoked: bool) -> None:
    """List keys: prefix, tenant, role, name, created, last used (never a secret: only hashes are stored)."""
    import sqlalchemy as sa

    from orchestrator.db import iso, make_engine, make_session_factory, session_scope
    from orchestrator.models import ApiKey

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            q = sa.select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
            if tenant:
                q = q.where(ApiKey.tenant == tenant)
            if not show_revoked:
                q = q.where(ApiKey.revoked.is_(False))
            keys = list(session.scalars(q))
    finally:
        engine.dispose()
    if not keys:
        click.echo("no keys" + (f" for tenant {tenant!r}" if tenant else ""))
        return
    click.echo(f"{'PREFIX':<16}  {'TENANT':<16}  {'ROLE':<6}  {'CREATED':<32}  {'LAST USED':<32}  NAME")
    for k in keys:
        state = "  (revoked)" if k.revoked else ""
        click.echo(f"{k.prefix:<16}  {k.tenant:<16}  {k.role:<6}  {iso(k.created_at) or '':<32}  "
                   f"{iso(k.last_used_at) or '-':<32}  {k.name}{state}")


@click.group("tenants")
def tenants_group() -> None:
    """Tenant settings."""


@tenants_group.command("budget")
@click.argument("tenant")
@click.option("--daily", default=None, help="USD cap per calendar day ('none' removes it)")
@click.option("--monthly", default=None, help="USD cap per calendar month ('none' removes it)")
@click.option("--timezone", default=None, help="IANA timezone of the tenant's days and months (default UTC)")
def tenants_budget(tenant: str, daily: str | None, monthly: str | None, timezone: str | None) -> None:
    """Show or set TENANT's budget caps; held jobs are looked at again at once."""
    from orchestrator import budget, queue
    from orchestrator.db import make_engine, make_session_factory, session_scope
    from orchestrator.errors import DomainError

    settings = _settings()
    changes: dict[str, object] = {k: None if v.strip().lower() == "none" else v
                                  for k, v in (("daily_usd", daily), ("monthly_usd", monthly)) if v is not None}
    if timezone is not None:
        changes["timezone"] = timezone
    engine = make_engine(settings.resolved_database_url)
    try:
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            if changes:
                budget.set_budget(session, tenant, changes)
        if changes:
            with session_scope(factory) as session:
                released = budget.release_held(session, tenant=tenant)
            if released:
                _kick_dispatch(settings, queue.DISPATCH)
        with session_scope(factory) as session:
            view = budget.budget_json(session, tenant)
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    finally:
        engine.dispose()
    for key in ("tenant", "timezone", "daily_usd", "monthly_usd", "spent_today_usd", "spent_this_month_usd"):
        value = view[key]
        click.echo(f"{key + ':':<22}{'-' if value is None else value}")


def _kick_dispatch(settings: Settings, task: str) -> None:
    """Nudge dispatch now; if the broker is unreachable the sweep gets there within its interval."""
    from orchestrator.queue import Publisher

    publisher = Publisher(settings)
    if not publisher.send(task):
        click.echo("(broker unreachable: dispatch picks the jobs up on its next sweep)", err=True)
    publisher.close()


REQUEST_LINE_LIMIT = 8190  # gunicorn's maximum; /v1/openapi.json declares the 414 beyond it


def problem_documents_from_gunicorn() -> None:
    """gunicorn answers requests it cannot parse (request line or headers too long, bad syntax)
    itself, with an HTML page; make those answers problem documents like every other error."""
    import json

    from gunicorn import util

    from orchestrator.errors import PROBLEM_TYPES
    from orchestrator.redact import redact_text

    def write_error(sock: Any, status: int, reason: str, mesg: str) -> None:
        body = json.dumps({"type": PROBLEM_TYPES + reason.lower().replace(" ", "-"),
                           "title": reason, "status": status, "detail": redact_text(mesg)[:300]}).encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        util.write_nonblock(sock, head + body)

    util.write_error = write_error


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes")
@click.option("--threads", default=8, show_default=True, type=int)
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API (intake, webhooks, storage) with gunicorn."""
    from gunicorn.app.base import BaseApplication

    _settings()
    problem_documents_from_gunicorn()

    class App(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": f"{host}:{port}", "workers": workers, "threads": threads,
                               "worker_class": "gthread", "accesslog": None, "timeout": 60,
                               "limit_request_line": REQUEST_LINE_LIMIT,
                               # one shared ~/.gunicorn socket would clash between API processes on a host
                               "control_socket_disable": True}.items():
                self.cfg.set(key, value)

        def load(self) -> object:
            from orchestrator.api.wsgi import app

            return app

    App().run()


def register(main: click.Group) -> None:
    """Attach the operator commands to the main group."""
    main.add_command(db_group)
    main.add_command(keys_group)
    main.add_command(tenants_group)
    main.add_command(api)
