"""Prometheus metrics, computed from the database so every process and machine agrees.

Gauges (jobs and batches by state, in flight per provider) are counted on scrape; counters
(provider requests by outcome and status code, storage failures) live in the `counters` table.
Rare events are counted in the transaction that records them (`incr`); per-call counts on the
hot path are summed in memory (`Tally`) and flushed by each worker every second, so no provider
call waits on the one hot counter row.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.db import upsert_insert
from orchestrator.models import Batch, Counter, Job, JobState
from orchestrator.providers.registry import PROVIDERS
from orchestrator.schedule_models import Schedule, ScheduleRun
from orchestrator.settings import Settings

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300)
HELP = {
    "orchestrator_provider_requests_total": ("counter", "Provider HTTP calls by provider, call, outcome and code"),
    "orchestrator_storage_failures_total": ("counter", "Failed image copies by reason"),
    "orchestrator_images_stored_total": ("counter", "Stored images by provider and path (direct: the provider's "
                                                    "own upload, verified; fallback: that upload was absent or "
                                                    "invalid, so downloaded; download: no upload offered)"),
    "orchestrator_catalog_rows_total": ("counter", "Catalog rows by diff outcome (read, new, changed, unchanged, "
                                                   "removed)"),
    "orchestrator_schedule_runs_total": ("counter", "Schedule firings by outcome (created, failed)"),
    "orchestrator_unknown_outcome_resubmits_total": (
        "counter", "Resubmissions after an unknown submit outcome, by provider and allowing policy"),
}


def incr(session: Session, name: str, amount: int = 1, **labels: object) -> None:
    """Add to a counter in the caller's transaction."""
    add_all(session, {(name, label_text(labels)): amount})


def label_text(labels: Mapping[str, object]) -> str:
    """The stored (and exposed) form of a label set."""
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))


def add_all(session: Session, amounts: Mapping[tuple[str, str], int]) -> None:
    """Add to several counters, keyed by (name, label text), in a stable order."""
    table = cast(sa.Table, Counter.__table__)
    for (name, text), amount in sorted(amounts.items()):
        stmt = upsert_insert(session, table).values(name=name, labels=text, value=amount)
        session.execute(stmt.on_conflict_do_update(index_elements=["name", "labels"],
                                                   set_={"value": table.c.value + amount}))


class Tally:
    """Counter increments summed in memory until flushed (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._amounts: dict[tuple[str, str], int] = {}

    def add(self, name: str, amount: int = 1, **labels: object) -> None:
        """Count `amount` more of `name{labels}`."""
        key = (name, label_text(labels))
        with self._lock:
            self._amounts[key] = self._amounts.get(key, 0) + amount

    def drain(self) -> dict[tuple[str, str], int]:
        """Everything counted since the last drain (and forget it)."""
        with self._lock:
            amounts, self._amounts = self._amounts, {}
        return amounts

    def restore(self, amounts: Mapping[tuple[str, str], int]) -> None:
        """Put back what a failed flush drained."""
        with self._lock:
            for key, amount in amounts.items():
                self._amounts[key] = self._amounts.get(key, 0) + amount


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(session: Session, settings: Settings) -> str:
    """The whole exposition, text format 0.0.4."""
    lines: list[str] = []
    _gauge(lines, "orchestrator_jobs", "Jobs by state", session.execute(
        sa.select(Job.state, sa.func.count()).group_by(Job.state)).all(), "state", [s.value for s in JobState])
    _gauge(lines, "orchestrator_batches", "Batches by state", session.execute(
        sa.select(Batch.state, sa.func.count()).group_by(Batch.state)).all(), "state")
    flying = dict(session.execute(sa.select(Job.provider, sa.func.count()).where(
        Job.state.in_([JobState.submitting, JobState.submitted])).group_by(Job.provider)).all())
    lines += ["# HELP orchestrator_in_flight Requests at the provider", "# TYPE orchestrator_in_flight gauge",
              "# HELP orchestrator_in_flight_limit Configured in-flight cap",
              "# TYPE orchestrator_in_flight_limit gauge"]
    for provider in PROVIDERS:
        limit, _ = settings.provider_limits(provider)
        lines.append(f'orchestrator_in_flight{{provider="{provider}"}} {flying.get(provider, 0)}')
        lines.append(f'orchestrator_in_flight_limit{{provider="{provider}"}} {limit}')
    _spend(lines, session)
    _counters(lines, session)
    _last_runs(lines, session)
    _latency(lines, session)
    return "\n".join(lines) + "\n"


def _spend(lines: list[str], session: Session) -> None:
    """Recorded spend per provider, model and cost source (a sum over jobs, so it never drifts)."""
    name = "orchestrator_spend_usd"
    rows = session.execute(sa.select(Job.provider, Job.model, Job.cost_source, sa.func.sum(Job.cost))
                           .where(Job.cost.is_not(None)).group_by(Job.provider, Job.model, Job.cost_source)
                           .order_by(Job.provider, Job.model, Job.cost_source)).all()
    lines += [f"# HELP {name} USD spent: provider-reported or priced from the table",
              f"# TYPE {name} gauge"]
    for provider, model, source, total in rows:
        lines.append(f'{name}{{provider="{provider}",model="{_escape(model)}",source="{source or ""}"}} '
                     f"{float(total or 0):.6f}")


def _gauge(lines: list[str], name: str, help_: str, rows: Iterable[tuple[object, int]], label: str,
           always: Iterable[str] = ()) -> None:
    values = {cast(str, getattr(k, "value", k)): n for k, n in rows}
    lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
    for key in sorted(set(always) | set(values)):
        lines.append(f'{name}{{{label}="{key}"}} {values.get(key, 0)}')


def _counters(lines: list[str], session: Session) -> None:
    rows = session.execute(sa.select(Counter.name, Counter.labels, Counter.value).order_by(Counter.name,
                                                                                         Counter.labels)).all()
    for name, (kind, help_) in HELP.items():
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{labels}}} {value}" for n, labels, value in rows if n == name]


def _last_runs(lines: list[str], session: Session) -> None:
    """Each schedule's latest catalog run: rows by outcome, failed counted live from its batch."""
    name = "orchestrator_schedule_last_run_rows"
    latest = (sa.select(ScheduleRun.schedule_id, sa.func.max(ScheduleRun.created_at).label("at"))
              .group_by(ScheduleRun.schedule_id).subquery())
    rows = session.execute(
        sa.select(Schedule.tenant, Schedule.name, ScheduleRun.status, ScheduleRun.summary, Batch.count_failed)
        .join(latest, sa.and_(latest.c.schedule_id == ScheduleRun.schedule_id, latest.c.at == ScheduleRun.created_at))
        .join(Schedule, Schedule.id == ScheduleRun.schedule_id)
        .outerjoin(Batch, Batch.id == ScheduleRun.batch_id).order_by(Schedule.tenant, Schedule.name)).all()
    lines += [f"# HELP {name} Rows of each schedule's latest run by outcome", f"# TYPE {name} gauge"]
    errored = ["# HELP orchestrator_schedule_last_run_failed 1 if the latest firing could not create its batch",
               "# TYPE orchestrator_schedule_last_run_failed gauge"]
    for tenant, schedule, status, summary, failed in rows:
        counts = {k: (summary or {}).get(k, 0) for k in ("read", "new", "changed", "unchanged", "removed")}
        counts["failed"] = failed or 0
        label = f'{_escape(tenant)}",schedule="{_escape(schedule)}'

        lines += [f'{name}{{tenant="{label}",outcome="{k}"}} {v}' for k, v in counts.items()]
        errored.append(f'orchestrator_schedule_last_run_failed{{tenant="{label}"}} {int(status == "failed")}')
    lines += errored


def _latency(lines: list[str], session: Session) -> None:
    """Callback received -> all images stored, per succeeded job, as a cumulative histogram."""
    name = "orchestrator_callback_to_stored_seconds"
    secs: sa.ColumnElement[Any]
    if session.get_bind().dialect.name == "postgresql":
        secs = sa.extract("epoch", Job.completed_at - Job.callback_at)
    else:
        secs = (sa.func.julianday(Job.completed_at) - sa.func.julianday(Job.callback_at)) * 86400.0
    columns = [sa.func.coalesce(sa.func.sum(sa.case((secs <= b, 1), else_=0)), 0) for b in LATENCY_BUCKETS]
    row = session.execute(sa.select(*columns, sa.func.coalesce(sa.func.sum(secs), 0), sa.func.count()).where(
        Job.state == JobState.succeeded, Job.callback_at.is_not(None), Job.completed_at.is_not(None))).one()
    lines += [f"# HELP {name} Time from provider callback to the last image stored", f"# TYPE {name} histogram"]
    for bound, count in zip(LATENCY_BUCKETS, row[:-2], strict=True):
        lines.append(f'{name}_bucket{{le="{bound}"}} {count}')
    lines += [f'{name}_bucket{{le="+Inf"}} {row[-1]}', f"{name}_sum {round(float(row[-2]), 3)}",
              f"{name}_count {row[-1]}"]
