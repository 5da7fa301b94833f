"""The sweep reads at most one page of rows per step, however large the batches it looks at.

This is what keeps a worker's memory flat from 1,000- to 100,000-job batches (bench/memory.py):
a step that loaded every matching row would hold a whole batch at once.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import session_scope, utcnow
from orchestrator.models import Delivery, JobState
from orchestrator.settings import Settings
from tests.factories import make_batch
from workers import maintenance
from workers.context import Context

pytestmark = pytest.mark.committed  # the worker Context reads through its own engine


def test_each_sweep_step_takes_at_most_a_page(sessions: sessionmaker[Session], settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "PAGE", 3)
    old = utcnow() - timedelta(minutes=5)
    with session_scope(sessions) as s:
        _, jobs = make_batch(s, [JobState.submitted] * 7)
        s.add_all(Delivery(provider="fal", event_key=f"k{i}", job_id=job.id, attempt=job.attempt, verified=True,
                           headers={}, body=b"{}", received_at=old) for i, job in enumerate(jobs))
        for _ in range(5):
            batch, _ = make_batch(s, [])
            batch.completion_round = 1  # finished, its callback not sent yet
    c = Context(settings)
    try:
        counts = maintenance.run_sweep(c)
    finally:
        c.close()
    assert counts["replayed_deliveries"] == 3  # of 7 waiting: the next sweeps take the rest
    assert counts["notified"] == 3  # of 5
