"""Submits whose outcome is unknown: earlier results adopted, Runware settled first, sweeps race-free.

Plain functions on real Postgres and Redis, with the Runware sandbox over loopback HTTP where a
provider answers. Races are forced deterministically: one transaction holds the job's row lock
while the sweeps start, and the test waits until Postgres shows them waiting on it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import binding, queue, state
from orchestrator.db import session_scope, utcnow
from orchestrator.models import Batch, Delivery, Job, JobEvent, JobState
from orchestrator.sandbox import FAL_DEV_KEY, RUNWARE_DEV_KEY, FalSandbox, Faults, RunwareSandbox
from orchestrator.settings import Settings
from tests.conftest import REDIS_URL
from tests.factories import make_batch
from workers import context as context_module
from workers.context import Context
from workers.deliveries import process
from workers.maintenance import _requeue_unsent, _settle_unknown

pytestmark = pytest.mark.committed  # the worker Context opens its own engine and sweeps race in threads


@pytest.fixture
def fal() -> Iterator[FalSandbox]:
    # Requests stay queued: fal knows them (under our key) for as long as a test needs.
    sandbox = FalSandbox(faults=Faults(latency_min=60.0, latency_max=60.0), concurrency=1)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def ctx(settings: Settings, fal: FalSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    # These tests look at each decision on its own: the follow-ups a worker would run inline
    # (refill the freed slot, store the adopted result) go to the broker instead, where nothing
    # consumes them, so a requeued job stays queued and an adopted one stays storing.
    monkeypatch.setattr(context_module, "_slot_handlers", [])
    monkeypatch.setattr(context_module, "_store_handlers", [])
    settings.callback_timeout_seconds = 20
    settings.unknown_outcome_window_seconds = 600
    settings.fal_queue_url, settings.fal_key = fal.url, SecretStr(FAL_DEV_KEY)
    c = Context(settings)
    yield c
    c.close()


@pytest.fixture
def runware() -> Iterator[RunwareSandbox]:
    sandbox = RunwareSandbox(faults=Faults(latency_min=30.0, latency_max=30.0))
    sandbox.start()
    yield sandbox
    sandbox.stop()


def _fal_ok(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                       "payload": {"images": [{"url": "http://127.0.0.1:9/a.jpg", "width": 1024, "height": 768,
                                               "content_type": "image/jpeg"}], "seed": 7}}).encode()


def _fal_request(fal: FalSandbox) -> str:
    """A request fal really has under our key (whose submit answer, in these tests, we never got)."""
    resp = httpx.post(f"{fal.url}/fal-ai/flux/schnell", json={"prompt": "p"},
                      headers={"Authorization": f"Key {FAL_DEV_KEY}"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["request_id"])


def _deliver(sessions: sessionmaker[Session], job_id: uuid.UUID, attempt: int, body: bytes) -> uuid.UUID:
    with session_scope(sessions) as s:
        d = Delivery(provider="fal", event_key=f"fal:{uuid.uuid4()}", job_id=job_id, attempt=attempt, verified=True,
                     headers={}, body=body)
        s.add(d)
        s.flush()
        return d.id


def _events(sessions: sessionmaker[Session], job_id: uuid.UUID) -> list[JobEvent]:
    with sessions() as s:
        return list(s.scalars(sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def _broker_messages(task: str) -> list[list[Any]]:
    """Args of every `task` message waiting in the test Redis (what the workers would receive)."""
    client = redis.Redis.from_url(REDIS_URL)
    out = []
    for raw in client.lrange(queue.QUEUES[task], 0, -1):
        msg = json.loads(raw)
        if msg["headers"]["task"] == task:
            out.append(json.loads(base64.b64decode(msg["body"]))[0])
    return out


def test_a_queued_retry_takes_the_earlier_attempts_result(ctx: Context, sessions: sessionmaker[Session],
                                                          fal: FalSandbox) -> None:
    # The submit answer was lost, the sweep re-queued the job, then attempt 1's webhook arrived:
    # that image is paid for, so the job takes it instead of paying again on attempt 2 (once fal
    # confirms the signed request id is a request of ours: orchestrator.binding).
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.queued], attempt=1, retries=1)
        job_id = job.id
    # A signed delivery about a request fal does not know under our key is never adopted.
    foreign = process(ctx, _deliver(sessions, job_id, 1, _fal_ok(str(uuid.uuid4()))))
    assert foreign.startswith("refused") and "not ours to adopt" in foreign
    req_1 = _fal_request(fal)
    assert process(ctx, _deliver(sessions, job_id, 1, _fal_ok(req_1))) == "adopted attempt 1"
    with sessions() as s:
        row = s.get(Job, job_id)
        batch = s.scalars(sa.select(Batch)).one()
        assert row is not None and row.state is JobState.storing and row.provider_request_id == req_1
        assert (batch.count_queued, batch.count_storing) == (0, 1)
    adopted = [e for e in _events(sessions, job_id) if e.kind == "earlier_result_adopted"]
    assert len(adopted) == 1 and adopted[0].from_state == "queued" and adopted[0].detail["attempt"] == 1


def test_an_earlier_result_cancels_the_later_attempt_at_fal(ctx: Context, sessions: sessionmaker[Session],
                                                            fal: FalSandbox) -> None:
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.submitted], attempt=2, provider_request_id="req-2",
                               provider_meta={"cancel_url": "http://127.0.0.1:9/x"})
        job_id = job.id
    redis.Redis.from_url(REDIS_URL).delete(queue.QUEUES[queue.CANCEL_AT_PROVIDER])
    req_1 = _fal_request(fal)
    assert process(ctx, _deliver(sessions, job_id, 1, _fal_ok(req_1))) == "adopted attempt 1"
    with sessions() as s:
        row = s.get(Job, job_id)
        assert row is not None and row.state is JobState.storing and row.provider_request_id == req_1
    # The superseded request (attempt 2, req-2) is what gets cancelled, never the adopted one.
    assert [str(job_id), "req-2", {"cancel_url": "http://127.0.0.1:9/x"}] in _broker_messages(queue.CANCEL_AT_PROVIDER)
    # A failed result of the earlier attempt is not adopted: the later attempt carries on.
    with session_scope(sessions) as s:
        _, (other,) = make_batch(s, [JobState.submitted], attempt=2, provider_request_id="req-3")
        other_id = other.id
    failed = json.dumps({"request_id": _fal_request(fal), "status": "ERROR", "error": "boom", "payload": {}}).encode()
    assert process(ctx, _deliver(sessions, other_id, 1, failed)).startswith("ignored")


def _runware_job(sessions: sessionmaker[Session], intent_age: float, task: str) -> uuid.UUID:
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.submitting], provider="runware", model="runware:100@1", attempt=1,
                               task_id=task, submit_started_at=utcnow() - timedelta(seconds=intent_age))
        return job.id


def test_runware_unknown_attempts_are_settled_by_getresponse_first(
        ctx: Context, sessions: sessionmaker[Session], runware: RunwareSandbox) -> None:
    ctx.settings.runware_api_url = f"{runware.url}/v1"
    ctx.settings.runware_api_key = SecretStr(RUNWARE_DEV_KEY)
    ctx.settings.claim_stale_seconds = 5
    known = str(uuid.uuid4())
    # Runware accepted this task but our submit never got the answer: getResponse says "processing".
    task = {"taskType": "imageInference", "taskUUID": known, "model": "runware:100@1", "positivePrompt": "a fox",
            "width": 1024, "height": 768, "deliveryMethod": "async"}
    assert httpx.post(f"{runware.url}/v1", json=[task], headers={"Authorization": f"Bearer {RUNWARE_DEV_KEY}"},
                      timeout=10).is_success
    processing = _runware_job(sessions, 60, known)
    never_arrived = _runware_job(sessions, 60, str(uuid.uuid4()))
    maybe_in_flight = _runware_job(sessions, 10, str(uuid.uuid4()))
    _settle_unknown(ctx, utcnow())
    with sessions() as s:
        states = {j: s.get(Job, j).state for j in (processing, never_arrived, maybe_in_flight)}  # type: ignore[union-attr]
        settled = s.get(Job, processing)
        assert settled is not None and settled.provider_request_id == known
    assert states == {processing: JobState.submitted, never_arrived: JobState.queued,
                      maybe_in_flight: JobState.submitting}
    assert [e.kind for e in _events(sessions, processing)][-1] == "submit_settled"
    requeued = [e for e in _events(sessions, never_arrived) if e.kind == "retry_scheduled"]
    assert len(requeued) == 1 and "never arrived" in requeued[0].detail["reason"]
    # Nothing was resubmitted: the sandbox saw exactly the one task it accepted.
    assert [sub["task_uuid"] for sub in runware.ledger.submissions] == [known]


def _wait_for_lock_waiters(sessions: sessionmaker[Session], n: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sessions() as s:
            waiting = s.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND wait_event_type = 'Lock'"))
        if waiting and waiting >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} sweeps never queued on the job's row lock")


def _while_locked(sessions: sessionmaker[Session], job_id: uuid.UUID, change: Callable[[Session, Job], None],
                  sweeps: list[Callable[[], object]]) -> None:
    """Hold the job's row lock with `change` applied, start the sweeps, let them queue, then commit."""
    threads = [threading.Thread(target=sweep) for sweep in sweeps]
    with session_scope(sessions) as s:
        job = s.execute(sa.select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
        change(s, job)
        s.flush()
        for t in threads:
            t.start()
        _wait_for_lock_waiters(sessions, len(sweeps))
    for t in threads:
        t.join(60)


def test_requeue_unsent_never_requeues_a_submit_that_just_recorded_its_intent(
        ctx: Context, sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.submitting], attempt=1)
        job.updated_at = utcnow() - timedelta(minutes=5)
        job_id = job.id

    def record_intent(s: Session, job: Job) -> None:  # what submit() does, under the same lock
        job.submit_started_at = utcnow()

    later = utcnow() + timedelta(seconds=1)
    _while_locked(sessions, job_id, record_intent, [lambda: _requeue_unsent(ctx, later)] * 2)
    with sessions() as s:
        row = s.get(Job, job_id)
        assert row is not None and row.state is JobState.submitting and row.submit_started_at is not None
    assert not [e for e in _events(sessions, job_id) if e.kind == "retry_scheduled"]


def test_two_sweeps_and_a_late_submit_answer_move_a_fal_job_once(ctx: Context, sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        batch, (job,) = make_batch(s, [JobState.submitting], attempt=1,
                                   submit_started_at=utcnow() - timedelta(minutes=30))
        batch.unknown_outcome = "resubmit"
        job_id = job.id

    def late_answer(s: Session, job: Job) -> None:  # what submit_succeeded() does, under the same lock
        moved = state.transition(s, job.id, JobState.submitted, kind="submitted", expect=[JobState.submitting],
                                 values={"provider_request_id": "req-late", "submitted_at": utcnow()})
        assert moved.applied

    _while_locked(sessions, job_id, late_answer, [lambda: _settle_unknown(ctx, utcnow())] * 2)
    with sessions() as s:
        row = s.get(Job, job_id)
        assert row is not None and row.state is JobState.submitted and row.provider_request_id == "req-late"
    assert [e.kind for e in _events(sessions, job_id)] == ["submitted"]  # no resubmission after the answer

    # Without a late answer, two concurrent sweeps resubmit once, recorded with its policy and counted.
    with session_scope(sessions) as s:
        batch, (job,) = make_batch(s, [JobState.submitting], attempt=1,
                                   submit_started_at=utcnow() - timedelta(minutes=30))
        batch.unknown_outcome = "resubmit"
        other = job.id
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=lambda: (barrier.wait(), _settle_unknown(ctx, utcnow()))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    resubmits = [e for e in _events(sessions, other) if e.kind == "unknown_outcome_resubmit"]
    assert len(resubmits) == 1 and resubmits[0].detail["policy"] == "resubmit"
    with sessions() as s:
        metrics = s.scalar(sa.text("SELECT value FROM counters WHERE name = :n"),
                           {"n": "orchestrator_unknown_outcome_resubmits_total"})
    assert metrics == 1


def test_wait_policy_holds_a_fal_job_for_the_webhook_window(ctx: Context, sessions: sessionmaker[Session]) -> None:
    # Past the callback timeout but inside fal's webhook retry window: "wait" (the default) waits.
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.submitting], attempt=1, submit_started_at=utcnow() - timedelta(minutes=2))
        job_id = job.id
    _settle_unknown(ctx, utcnow())
    with sessions() as s:
        assert s.get(Job, job_id).state is JobState.submitting  # type: ignore[union-attr]
    _settle_unknown(ctx, utcnow() + timedelta(seconds=ctx.settings.unknown_outcome_window_seconds))
    with sessions() as s:
        assert s.get(Job, job_id).state is JobState.queued  # type: ignore[union-attr]
    (event,) = [e for e in _events(sessions, job_id) if e.kind == "unknown_outcome_resubmit"]
    assert event.detail["policy"] == "wait" and event.detail["waited_seconds"] == 600


def test_a_callback_whose_message_was_lost_stops_the_resubmit_and_is_adopted(
        ctx: Context, sessions: sessionmaker[Session], fal: FalSandbox) -> None:
    # Attempt 1's submit answer was lost long ago (past the "resubmit" wait, twice over). Its
    # callback then came (held by the receiver: the attempt's request id is unknown), but the
    # worker that took its message was killed before checking it with fal. That callback says fal
    # accepted the request: resubmitting would pay twice. (The hold used to end 2 x the wait
    # after the submit, so a callback arriving later was resubmitted past.)
    with session_scope(sessions) as s:
        batch, (job,) = make_batch(s, [JobState.submitting], attempt=1,
                                   submit_started_at=utcnow() - timedelta(minutes=30))
        batch.unknown_outcome = "resubmit"
        job_id = job.id
    delivery_id = _deliver(sessions, job_id, 1, _fal_ok(_fal_request(fal)))
    with session_scope(sessions) as s:
        s.execute(sa.update(Delivery).where(Delivery.id == delivery_id)
                  .values(received_at=utcnow() - timedelta(seconds=10), outcome=binding.HELD))
    redis.Redis.from_url(REDIS_URL).delete(queue.QUEUES[queue.PROCESS_DELIVERY])
    _settle_unknown(ctx, utcnow())
    with sessions() as s:
        assert s.get(Job, job_id).state is JobState.submitting  # type: ignore[union-attr]
    assert not [e for e in _events(sessions, job_id) if e.kind == "unknown_outcome_resubmit"]
    # The sweep has the held delivery checked again now, not at the 30 s replay.
    assert [str(delivery_id)] in _broker_messages(queue.PROCESS_DELIVERY)
    assert process(ctx, delivery_id) == "storing"
    with sessions() as s:
        assert s.get(Job, job_id).state is JobState.storing  # type: ignore[union-attr]


def test_a_held_callback_of_a_finished_job_is_closed_not_kept_forever(
        ctx: Context, sessions: sessionmaker[Session], fal: FalSandbox) -> None:
    # Attempt 1's answer was lost, the job was resubmitted and finished on attempt 2; then attempt
    # 1's (delayed) callback came. Its request id was never learnt, so binding holds it; but a
    # finished job never moves again: the delivery is closed and the late result recorded.
    with session_scope(sessions) as s:
        _, (job,) = make_batch(s, [JobState.succeeded], attempt=2, provider_request_id="req-2")
        job_id = job.id
    delivery_id = _deliver(sessions, job_id, 1, _fal_ok(_fal_request(fal)))
    assert process(ctx, delivery_id) == "ignored: job is succeeded"
    with sessions() as s:
        row = s.get(Delivery, delivery_id)
        assert row is not None and row.processed_at is not None
        assert s.get(Job, job_id).state is JobState.succeeded  # type: ignore[union-attr]
    (late,) = [e for e in _events(sessions, job_id) if e.kind == "late_result_ignored"]
    assert late.attempt == 1 and late.detail["why"] == "job is succeeded"
