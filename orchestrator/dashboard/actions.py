"""State-changing operator actions: each goes through the domain (state.py via batches, rerender),
queues its follow-up messages after commit exactly as the API does, and writes an audit entry
in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from orchestrator import audit, batches, queue, rerender
from orchestrator.api.context import services
from orchestrator.dashboard.security import actor
from orchestrator.models import FINAL_BATCH, Batch, BatchState, JobState

BULK_CAP = 200  # batches per bulk action: bigger selections are refused with the count


@dataclass(frozen=True)
class Outcome:
    """What an action did."""

    batches: int
    jobs: int
    created: list[str]


def cancel(session: Session, batch: Batch) -> int:
    """Cancel a batch's unfinished jobs; ask the provider to drop what it already has."""
    count, at_provider = batches.cancel(session, batch)
    for job_id in at_provider:
        services().publisher.after_commit(session, queue.CANCEL_AT_PROVIDER, str(job_id))
    return count


def retry(session: Session, batch: Batch) -> int:
    """Re-queue a batch's failed jobs."""
    count = batches.retry(session, batch)
    if count:
        services().publisher.after_commit(session, queue.DISPATCH)
    return count


def rerender_batch(session: Session, batch: Batch, selection: rerender.Selection, model: str | None,
                   new_seeds: bool) -> Batch:
    """Create the linked re-render batch and nudge dispatch."""
    child, _ = rerender.rerender(session, batch, selection, model=model or None, new_seeds=new_seeds,
                                 max_items=services().settings.max_items_per_batch)
    services().publisher.after_commit(session, queue.DISPATCH)
    return child


def affected(action: str, batch: Batch) -> int:
    """How many jobs `action` would touch in `batch` (the preview count)."""
    counts = batch.counts()
    if action == "cancel":
        return 0 if batch.state in FINAL_BATCH else sum(counts[s.value] for s in
                                                        (JobState.queued, JobState.submitting,
                                                         JobState.submitted))
    if action == "retry":
        return counts[JobState.failed.value]
    return batch.total


def apply_bulk(session: Session, action: str, targets: list[Batch], *, model: str | None, new_seeds: bool,
               scope: str) -> Outcome:
    """Run one action over many batches and audit it once (with every batch id)."""
    jobs, created = 0, []
    for batch in targets:
        if action == "cancel":
            jobs += cancel(session, batch) if batch.state not in FINAL_BATCH else 0
        elif action == "retry":
            jobs += retry(session, batch) if batch.state is not BatchState.cancelled else 0
        elif action == "rerender":
            child = rerender_batch(session, batch, rerender.Selection(), model, new_seeds)
            jobs += child.total
            created.append(str(child.id))
    audit.record(session, actor(), f"bulk_{action}", f"{len(targets)} batches ({scope})", jobs,
                 batch_ids=[str(b.id) for b in targets], created=created, model=model, new_seeds=new_seeds)
    return Outcome(len(targets), jobs, created)
