"""Bind a provider callback to the attempt it was sent to.

A valid signature (fal, checked by the adapter's `verify_webhook`) or URL token proves who sent
a delivery, not which of our requests it is about: any fal customer can obtain signed deliveries
for their own requests, and a delivery for job A posted to job B's URL must not finish B. So a
delivery names a provider request (the adapter's `claimed_request_id`: fal's signed request id,
Runware's `taskUUID`) and it is applied only if that is the request of the attempt its URL names:

- `match`: the attempt's request id is known and equal;
- `refused`: it is known and different, or the delivery names none (or several);
- `held`: not known yet (the callback beat our submit call's answer). The delivery is stored
  but not applied; it is examined again when the submit answer records the id
  (`workers.dispatch.submit_succeeded`), or when the submit outcome is unknown and the provider
  confirms the request is ours (`workers.deliveries`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.models import Delivery, Job, JobEvent
from orchestrator.providers import registry

# Timeline events that record which provider request an attempt made.
ID_EVENTS = ("submitted",)
# The outcome of a stored delivery that waits for its attempt's request id.
HELD = "held: request id of the attempt not known yet"
Decision = Literal["match", "held", "refused"]


class JobRef(Protocol):
    """What binding reads of a job: a Job, or the receiver's one-row select of these columns."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def attempt(self) -> int: ...
    @property
    def provider(self) -> str: ...
    @property
    def provider_request_id(self) -> str | None: ...
    @property
    def task_id(self) -> str | None: ...


@dataclass(frozen=True)
class Verdict:
    """What to do with one delivery, and why."""

    decision: Decision
    claimed: str | None
    reason: str = ""


def attempt_request_id(session: Session, job: JobRef, attempt: int, provider: str) -> tuple[str | None, str]:
    """The provider request id of one attempt when known, else None; ("", why) if it cannot be this provider's."""
    if attempt == job.attempt:
        if provider != job.provider:
            return "", f"attempt {attempt} was sent to {job.provider}"
        # A provider that knows our task id (Runware's taskUUID) has it before any answer comes.
        return (job.task_id if registry.capabilities(provider).knows_our_task_id else job.provider_request_id), ""
    # An earlier attempt: its request id is on the timeline (the job row holds the current one).
    rows = session.execute(sa.select(JobEvent.detail).where(
        JobEvent.job_id == job.id, JobEvent.attempt == attempt, JobEvent.kind.in_(ID_EVENTS))
        .order_by(JobEvent.id)).scalars().all()
    for detail in rows:
        rid = (detail or {}).get("request_id")
        if isinstance(rid, str) and rid:
            sent_to = (detail or {}).get("provider")
            if sent_to and sent_to != provider:
                return "", f"attempt {attempt} was sent to {sent_to}"
            return rid, ""
    return None, ""


def judge(session: Session, job: JobRef, attempt: int, provider: str, raw: bytes, headers: dict[str, str]) -> Verdict:
    """Decide whether a delivery belongs to `attempt` of `job` (see the module docstring)."""
    claimed, why = registry.adapter_class(provider).claimed_request_id(headers, raw)
    if claimed is None:
        return Verdict("refused", None, why)
    expected, why = attempt_request_id(session, job, attempt, provider)
    if expected == "":
        return Verdict("refused", claimed, why)
    if expected is None:
        return Verdict("held", claimed, f"request id of attempt {attempt} not known yet")
    if expected != claimed:
        return Verdict("refused", claimed, f"request {claimed[:80]} is not attempt {attempt}'s request")
    return Verdict("match", claimed)


def claimed_by_another(session: Session, job: Job, attempt: int, request_id: str) -> bool:
    """Whether a request id is already recorded for another job, or another attempt of this one."""
    other_job = session.scalar(sa.select(Job.id).where(
        Job.provider == job.provider, Job.provider_request_id == request_id, Job.id != job.id).limit(1))
    if other_job is not None:
        return True
    other_attempt = session.scalar(sa.select(JobEvent.id).where(
        JobEvent.job_id == job.id, JobEvent.kind.in_(ID_EVENTS), JobEvent.attempt != attempt,
        JobEvent.detail["request_id"].as_string() == request_id).limit(1))
    return other_attempt is not None


def held_deliveries(session: Session, job_id: uuid.UUID, attempt: int) -> list[uuid.UUID]:
    """Stored, verified deliveries of one attempt still waiting to be examined."""
    return list(session.scalars(sa.select(Delivery.id).where(
        Delivery.processed_at.is_(None), Delivery.job_id == job_id, Delivery.attempt == attempt,
        Delivery.verified.is_(True))))

