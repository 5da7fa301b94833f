"""The results manifest is streamed: one page of jobs read at a time, the first line out before the rest.

A manifest built whole in memory would grow the API with the batch (bench/memory.py measures it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from orchestrator.api import results
from orchestrator.models import JobState
from orchestrator.settings import Settings
from orchestrator.storage.factory import storage_from_url
from tests.factories import make_batch


@pytest.fixture
def job_reads(engine: Engine) -> Iterator[list[int]]:
    """Rows returned by each SELECT of the jobs table, in order."""
    reads: list[int] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            reads.append(cursor.rowcount)

    sa.event.listen(engine, "after_cursor_execute", after)
    yield reads
    sa.event.remove(engine, "after_cursor_execute", after)


def test_manifest_reads_one_page_of_jobs_at_a_time(session: Session, settings: Settings, job_reads: list[int],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "PAGE", 2)
    batch, _ = make_batch(session, [JobState.succeeded] * 5)
    storage = storage_from_url(settings.storage_url, s3_endpoint_url=None, secret_key=settings.resolved_secret_key(),
                               public_url=settings.public_url)
    lines = results.manifest_lines(session, batch.id, storage)
    assert json.loads(next(lines))["position"] == 0
    assert job_reads == [2]  # the first line came out after one page, before the rest was read
    assert [json.loads(line)["position"] for line in lines] == [1, 2, 3, 4]
    assert job_reads == [2, 2, 1, 0]
