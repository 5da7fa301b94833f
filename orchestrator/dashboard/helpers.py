"""Template filters, error pages and request parsing shared by the dashboard views."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import render_template, request
from werkzeug.exceptions import HTTPException

from orchestrator.batch_lists import BatchFilter, InvalidQuery
from orchestrator.dashboard.blueprint import bp
from orchestrator.db import as_utc, utcnow
from orchestrator.errors import DomainError
from orchestrator.models import Batch, JobState
from orchestrator.storage.base import StorageError

STATE_ORDER = [s.value for s in JobState]
FILTER_KEYS = ("state", "provider", "model", "lane", "schedule", "tenant", "from", "to", "q", "sort", "parent")


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    return render_template("error.html", status=exc.code, title=exc.name, detail=exc.description), exc.code or 500


@bp.errorhandler(DomainError)
def _domain_error(exc: DomainError) -> tuple[str, int]:
    errors = exc.extra.get("errors") or []
    return render_template("error.html", status=exc.status, title=exc.title, detail=exc.detail,
                           errors=errors[:50]), exc.status


@bp.errorhandler(StorageError)
def _storage_error(exc: StorageError) -> tuple[str, int]:
    return render_template("error.html", status=502, title="Storage unavailable", detail=str(exc)), 502


@bp.app_template_filter("ago")
def ago(value: datetime | None) -> str:
    """'3m ago' style age."""
    if value is None:
        return "–"
    return duration(utcnow() - as_utc(value)) + " ago"


@bp.app_template_filter("duration")
def duration(value: timedelta | float | None) -> str:
    """A compact duration: 850ms, 12s, 4m 05s, 3h 02m, 2d 4h."""
    if value is None:
        return "–"
    secs = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if secs < 1:
        return f"{secs * 1000:.0f}ms"
    if secs < 60:
        return f"{secs:.1f}s" if secs < 10 else f"{secs:.0f}s"
    mins, s = divmod(int(secs), 60)
    if mins < 60:
        return f"{mins}m {s:02d}s"
    hours, m = divmod(mins, 60)
    if hours < 48:
        return f"{hours}h {m:02d}m"
    return f"{hours // 24}d {hours % 24}h"


@bp.app_template_filter("money")
def money(value: Decimal | float | None) -> str:
    """US dollars with enough digits for sub-cent image prices."""
    if value is None:
        return "–"
    v = float(value)
    return f"${v:,.4f}" if v < 10 else f"${v:,.2f}"


@bp.app_template_filter("utc")
def utc(value: datetime | None) -> str:
    """RFC 3339 UTC, to the second."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "–"


@bp.app_template_global("batch_duration")
def batch_duration(batch: Batch) -> str:
    """Run time so far (or in total once final)."""
    if batch.started_at is None:
        return "–"
    end = as_utc(batch.completed_at) if batch.completed_at else utcnow()
    return duration(end - as_utc(batch.started_at))


@bp.app_template_global("segments")
def segments(batch: Batch) -> list[tuple[str, int, float]]:
    """(state, count, percent) for the progress bar, in lifecycle order, zero counts left out."""
    counts = batch.counts()
    total = batch.total or 1
    return [(s, counts[s], 100.0 * counts[s] / total) for s in STATE_ORDER if counts[s]]


def parse_filter() -> tuple[list[str], BatchFilter, str]:
    """States, the filter and the sort from the query string (all bookmarkable)."""
    args = request.args
    states = [s for v in args.getlist("state") for s in v.split(",") if s]
    filt = BatchFilter(provider=args.get("provider") or None, model=args.get("model") or None,
                       lane=args.get("lane") or None, schedule_id=_uuid_arg("schedule"),
                       tenant=args.get("tenant") or None, created_from=_time_arg("from"),
                       created_to=_time_arg("to"), search=(args.get("q") or "").strip()[:200] or None,
                       parent_batch_id=_uuid_arg("parent"))
    return states, filt, args.get("sort") or "-created"


def filter_args() -> dict[str, Any]:
    """The current filter as query arguments (for links that keep it)."""
    return {k: v for k in FILTER_KEYS if (v := request.args.get(k))}


def _uuid_arg(name: str) -> uuid.UUID | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidQuery(f"{name}: {value[:60]!r} is not an id") from None


def _time_arg(name: str) -> datetime | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidQuery(f"{name}: {value[:60]!r} is not a date or time (use 2026-12-01 or 2026-12-01T09:30)")\
            from None
    return as_utc(parsed)


@bp.app_template_global("now_ts")
def now_ts() -> float:
    """Seconds since the epoch, for 'closes in' countdowns."""
    return utcnow().timestamp()
