"""Small builders for rows the tests need."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from orchestrator.db import new_id, utcnow
from orchestrator.models import Batch, Job, JobState


def make_batch(session: Session, states: list[JobState], *, tenant: str = "acme", provider: str = "fal",
               model: str = "fal-ai/flux/schnell", **job_fields: Any) -> tuple[Batch, list[Job]]:
    """A batch with one job per given state and counters that match."""
    batch = Batch(id=new_id(), tenant=tenant, name="t", total=len(states))
    for s in JobState:
        setattr(batch, f"count_{s.value}", sum(1 for x in states if x is s))
    session.add(batch)
    session.flush()
    jobs = []
    for i, s in enumerate(states):
        job = Job(id=new_id(), batch_id=batch.id, tenant=tenant, position=i, custom_id=f"c{i}",
                  requested_model=model, provider=provider, model=model,
                  params={"prompt": f"prompt {i}", "width": 1024, "height": 768, "steps": 4, "num_images": 1,
                          "output_format": "jpeg"},
                  state=s, next_attempt_at=utcnow(), **job_fields)
        session.add(job)
        jobs.append(job)
    session.flush()
    return batch, jobs
